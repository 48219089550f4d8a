"""Plots for the deep generative and sequence models: VAE image grids, forecasts with bands.

``image_grid_png`` saves 8x8 digit images (reconstructions next to originals, or
samples from the prior); ``iwae_png`` plots a VAE's IWAE bound against k; ``forecast_png``
saves a series, its history and the forecast median with central predictive bands.
Matplotlib only; the CLI's ``bayesdl plot`` calls these for runs of the built-ins ``vae``
and ``sequence_regression``.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from bayesdl.errors import BayesdlError  # noqa: E402


def _numpy(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _save(fig, ax, title: str | None, path: str | Path) -> Path:
    """Title the axes (if a title is given), write the figure to ``path`` and close it."""
    if title:
        ax.set_title(title)
    path = Path(path)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def image_grid_png(images, path: str | Path, columns: int = 10, side: int = 8,
                   title: str | None = None) -> Path:
    """Save ``images [n, side*side]`` (values in [0, 1]) as one grey-scale grid PNG."""
    images = _numpy(images)
    if images.ndim != 2 or images.shape[1] != side * side:
        raise BayesdlError(f"image grid: need images [n, {side * side}], got {images.shape}")
    n = images.shape[0]
    rows = -(-n // columns)
    canvas = np.ones((rows * (side + 1) + 1, columns * (side + 1) + 1))
    for i, img in enumerate(images):
        r, c = divmod(i, columns)
        canvas[1 + r * (side + 1):1 + r * (side + 1) + side,
               1 + c * (side + 1):1 + c * (side + 1) + side] = img.reshape(side, side)
    fig, ax = plt.subplots(figsize=(columns * 0.6, rows * 0.6 + (0.4 if title else 0)))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.axis("off")
    return _save(fig, ax, title, path)


def vae_pngs(net, x, out_dir: str | Path, num: int = 20) -> list[Path]:
    """``reconstructions.png`` (originals above their reconstructions) and ``samples.png``
    (means of p(x|z), z ~ p(z)) of a fitted :class:`bayesdl.models.vae.VAE`."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    x = x[:num]
    pairs = torch.cat([x, net.reconstruct(x)])
    torch.manual_seed(0)
    return [image_grid_png(pairs, out_dir / "reconstructions.png", columns=len(x),
                           title="data (top), reconstructions (bottom)"),
            image_grid_png(net.generate(2 * num), out_dir / "samples.png", columns=num,
                           title="samples from p(z) through the decoder")]


def iwae_png(ks, bounds, errors, path: str | Path, title: str | None = None,
             error_label: str = "+-1 SE") -> Path:
    """Save the IWAE bound (nats per data point) against k on a log axis, with error bars."""
    ks, bounds, errors = _numpy(ks), _numpy(bounds), _numpy(errors)
    if not (ks.ndim == 1 and ks.shape == bounds.shape == errors.shape and len(ks) > 0):
        raise BayesdlError(f"iwae plot: ks, bounds and errors must be equal-length vectors, got "
                           f"{ks.shape}, {bounds.shape}, {errors.shape}")
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.errorbar(ks, bounds, yerr=errors, marker="o", capsize=3, label=error_label)
    ax.set_xscale("log")
    ax.set_xlabel("k (importance samples)")
    ax.set_ylabel("IWAE bound, nats per data point")
    ax.legend(loc="lower right")
    return _save(fig, ax, title, path)


def forecast_png(history, paths, path: str | Path, truth=None, levels: tuple[float, ...] = (0.5, 0.9),
                 title: str | None = None) -> Path:
    """Save a forecast plot: ``history [T]``, the median of ``paths [S, H]`` and central
    bands at ``levels``, and (if given) the realised ``truth [H]``."""
    history, paths = _numpy(history), _numpy(paths)
    if paths.ndim != 2:
        raise BayesdlError(f"forecast plot: paths must be [draws, horizon], got {paths.shape}")
    T, H = len(history), paths.shape[1]
    t_future = np.arange(T, T + H)
    fig, ax = plt.subplots(figsize=(8, 3.5))
    ax.plot(np.arange(T), history, color="black", lw=1, label="history")
    for level in sorted(levels, reverse=True):
        lo, hi = np.quantile(paths, [(1 - level) / 2, (1 + level) / 2], axis=0)
        ax.fill_between(t_future, lo, hi, color="C0", alpha=0.2 + 0.2 * (level < 0.8),
                        label=f"{int(level * 100)}% band")
    ax.plot(t_future, np.median(paths, 0), color="C0", lw=1.5, label="median forecast")
    if truth is not None:
        ax.plot(t_future, _numpy(truth), color="C3", lw=1, ls="--", label="held out")
    ax.legend(loc="upper left", fontsize=8)
    return _save(fig, ax, title, path)
