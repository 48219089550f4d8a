"""A run on CUDA makes CUDA torch's default device (``bayesdl.device.run_context``), and
a CPU generator cannot fill a CUDA tensor: every random factory given a generator must
also name its device. Checked on the CPU by watching the factory calls of short runs
(this broke the first GPU run, on an H200)."""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

import bayesdl

RANDOM_FACTORIES = {torch.rand, torch.randn, torch.randint, torch.randperm}


class GeneratorWithoutDevice(TorchFunctionMode):
    """Records where a random factory is given a generator but no device."""

    def __init__(self) -> None:
        super().__init__()
        self.places: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RANDOM_FACTORIES and kwargs.get("generator") is not None and "device" not in kwargs:
            ours = [f for f in traceback.extract_stack()[:-1]
                    if "/inference/" in f.filename or "/bayesdl/" in f.filename
                    or "/models/" in f.filename]
            self.places.add(f"{ours[-1].filename}:{ours[-1].lineno}" if ours else "?")
        return func(*args, **kwargs)


@pytest.mark.parametrize("method", ["nuts", "chees", "hmc"])
def test_sampling_names_the_device_of_generated_noise(method):
    mode = GeneratorWithoutDevice()
    with mode:
        bayesdl.infer("eight_schools", method=method, chains=2, warmup=20, draws=10, seed=1,
                      progress=False)
    assert not mode.places, f"a generator without a device at {sorted(mode.places)}"


def test_the_check_sees_a_generator_without_a_device():
    mode = GeneratorWithoutDevice()
    with mode:
        torch.randn(3, generator=torch.Generator().manual_seed(0))
        torch.randn(3, generator=torch.Generator().manual_seed(0), device="cpu")
    assert len(mode.places) == 1
