"""scikit-learn's bundled 8x8 handwritten digits (Alpaydin & Kaynak 1998, UCI), as tensors.

Read from the copy bundled in ``models/data/digits.csv`` (exported from
``sklearn.datasets.load_digits``, same order), so users need no scikit-learn; pixel
values 0..16 scaled to [0, 1], split into train and test by a fixed seeded permutation
so every model in bayesdl sees the same split.
"""

from __future__ import annotations

import numpy as np
import torch

from bayesdl.errors import BayesdlError
from bayesdl.models.registry import bundled_path

NUM_TEST = 297  # 1797 digits: 1500 train, 297 test


def digits(split: str = "train", binarise: bool = False, dtype: torch.dtype = torch.float64
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images [N, 64] in [0, 1], labels [N])`` of the ``train`` or ``test`` split;
    ``binarise`` thresholds the pixels at 0.5."""
    if split not in ("train", "test", "all"):
        raise BayesdlError(f"digits split must be train, test or all, got {split!r}")
    pixels, labels = load_bundled_digits()
    x = torch.as_tensor(pixels, dtype=dtype) / 16.0
    y = torch.as_tensor(labels, dtype=torch.int64)
    order = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(20240601), device="cpu")
    x, y = x[order], y[order]
    if binarise:
        x = (x > 0.5).to(dtype)
    if split == "train":
        return x[:-NUM_TEST], y[:-NUM_TEST]
    if split == "test":
        return x[-NUM_TEST:], y[-NUM_TEST:]
    return x, y


def load_bundled_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 bundled 8x8 digits: pixels ``[1797, 64]`` (0..16) and labels ``[1797]``."""
    with bundled_path("digits.csv") as path:
        table = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64)
    return table[:, :64], table[:, 64]
