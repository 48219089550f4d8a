"""Probabilistic sequence prediction: a recurrent network with a Bayesian output layer, by SVI.

    h_t = RNN(y_{t-L}, ..., y_{t-1})  (LSTM, GRU, or ``cell=linear``: h_t = the window itself)
    w ~ N(0, prior_scale^2 I),  b ~ N(0, prior_scale^2),  sigma ~ HalfNormal(1)
    y_t | h_t ~ N(h_t . w + b, sigma^2)

The recurrent weights are ``pyro.module`` parameters (point estimates); w, b and sigma
are latent, so ``--method svi`` fits a mean-field Gaussian guide (AutoNormal) to them
and the predictive distribution integrates over their posterior. Many-step forecasts
(:func:`forecast`) feed each draw's sampled values back into the window, so the bands
widen with the horizon.

Series (``series=``): ``sine`` (the PyTorch examples' sine wave, period 20 steps, with
Gaussian noise), ``ar`` (a linear-Gaussian state-space series, AR(1) plus observation
noise, whose exact one-step predictive is the Kalman filter's; used by the checks),
``nile`` and ``sunspots`` (bundled from statsmodels). Windows are built from the series
standardised by its own mean and sd (:func:`load_series` returns both).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from bayesdl.data_schema import DataField
from bayesdl.errors import BayesdlError
from bayesdl.models.registry import bundled_path, register

SERIES = ("sine", "ar", "nile", "sunspots")
CELLS = ("lstm", "gru", "linear")


# ------------------------------------------------------------------ data
@dataclass(frozen=True)
class ARSeries:
    """x_t = phi x_{t-1} + N(0, q^2),  y_t = x_t + N(0, r^2),  x_1 from the stationary law."""

    phi: float = 0.9
    q: float = 0.5
    r: float = 0.5

    def simulate(self, num_points: int, seed: int = 0) -> np.ndarray:
        """A series ``[num_points]``."""
        rng = np.random.default_rng(seed)
        x = np.empty(num_points)
        x[0] = rng.normal(0, self.q / np.sqrt(1 - self.phi ** 2))
        noise = rng.normal(0, self.q, num_points)
        for t in range(1, num_points):
            x[t] = self.phi * x[t - 1] + noise[t]
        return x + rng.normal(0, self.r, num_points)

    def kalman_predictive(self, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact one-step predictive mean and sd of y_t given y_1..y_{t-1}, ``[T]`` each,
        from :func:`bayesdl.models.kalman.kalman_filter`."""
        from bayesdl.models.kalman import kalman_filter

        one = torch.ones(1, 1, dtype=y.dtype)
        res = kalman_filter(y[:, None], self.phi * one, one, self.q ** 2 * one, self.r ** 2 * one,
                            torch.zeros(1, dtype=y.dtype), self.q ** 2 / (1 - self.phi ** 2) * one)
        mean = res.predicted_mean[:, 0]
        sd = (res.predicted_cov[:, 0, 0] + self.r ** 2).sqrt()
        return mean, sd


def load_series(series: str = "sine", num_points: int = 1000, noise: float = 0.1,
                seed: int = 0) -> np.ndarray:
    """The raw series (``num_points`` and ``noise`` apply to the generated ones)."""
    if series == "sine":
        t = np.arange(num_points)
        return np.sin(2 * np.pi * t / 20) + noise * np.random.default_rng(seed).normal(size=num_points)
    if series == "ar":
        return ARSeries().simulate(num_points, seed)
    if series in ("nile", "sunspots"):
        with bundled_path(f"{series}.csv") as path:
            return np.loadtxt(path, delimiter=",", skiprows=1)[:, 1]
    raise BayesdlError(f"unknown series {series!r}; choose one of {', '.join(SERIES)}")


def make_windows(values: np.ndarray | torch.Tensor, window: int):
    """(``x [T - window, window]``, ``y [T - window]``): each value with the ``window`` before it."""
    if window < 1 or len(values) <= window:
        raise BayesdlError(f"sequence: window must be in [1, {len(values) - 1}], got {window}")
    if isinstance(values, torch.Tensor):
        return values.unfold(0, window + 1, 1)[:, :window], values[window:]
    idx = np.arange(len(values) - window)[:, None] + np.arange(window)
    return values[idx], values[window:]


def sequence_data(series: str = "sine", window: int = 20, num_points: int = 1000, noise: float = 0.1,
                  seed: int = 0) -> dict[str, np.ndarray]:
    """``{"x": windows [n, window], "y": next values [n]}`` of the standardised series."""
    values = load_series(series, num_points, noise, seed)
    scaled = (values - values.mean()) / values.std()
    x, y = make_windows(scaled, window)
    return {"x": x, "y": y}


# ------------------------------------------------------------------ the network
class SequenceFeatures(nn.Module):
    """Windows ``[n, L]`` -> features ``[n, H]``: the last hidden state of an LSTM/GRU, or the window."""

    def __init__(self, cell: str, window: int, hidden: int):
        super().__init__()
        if cell not in CELLS:
            raise BayesdlError(f"sequence_regression: unknown cell {cell!r}; "
                               f"choose one of {', '.join(CELLS)}")
        self.cell, self.window = cell, window
        self.size = window if cell == "linear" else hidden
        if cell != "linear":
            self.rnn = (nn.LSTM if cell == "lstm" else nn.GRU)(1, hidden, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.cell == "linear":
            return x
        out, _ = self.rnn(x.unsqueeze(-1))
        return out[:, -1]


_CACHE: dict[tuple, SequenceFeatures] = {}


def get_features(x: torch.Tensor, cell: str = "lstm", hidden: int = 16) -> SequenceFeatures:
    """The feature network of the built-in for windows like ``x`` (one per configuration,
    rebuilt with seed 0 after ``pyro.clear_param_store()``, as in :func:`bayesdl.models.vae.get_vae`)."""
    key = (cell, x.shape[-1], hidden, x.dtype, str(x.device))
    net = _CACHE.get(key)
    if net is None or not any(n.startswith("seq_features$$$") for n in pyro.get_param_store().keys()):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = SequenceFeatures(cell, x.shape[-1], hidden)
        net = net.to(dtype=x.dtype, device=x.device)
        _CACHE[key] = net
    return net


@register(
    "sequence_regression",
    "LSTM/GRU one-step predictor with a Bayesian output layer (--method svi; series sine|ar|nile|sunspots)",
    data=sequence_data,
    schema={"x": DataField(("obs", "lag")), "y": DataField(("obs",))},
    dims={"y": ["obs"], "w": ["feature"]},
)
def sequence_regression(x, y=None, cell: str = "lstm", hidden: int = 16, prior_scale: float = 1.0):
    if x.ndim != 2 or (y is not None and y.shape != x.shape[:1]):
        raise BayesdlError(f"sequence_regression: need x [n, window] and y [n], got {tuple(x.shape)}, "
                           f"{None if y is None else tuple(y.shape)}")
    net = get_features(x, cell, hidden)
    if cell != "linear":
        pyro.module("seq_features", net)
    h = net(x)
    w = pyro.sample("w", dist.Normal(x.new_zeros(net.size), prior_scale).to_event(1))
    b = pyro.sample("b", dist.Normal(x.new_zeros(()), prior_scale))
    sigma = pyro.sample("sigma", dist.HalfNormal(x.new_ones(())))
    with pyro.plate("obs", x.shape[0]):
        pyro.sample("y", dist.Normal((h * w.unsqueeze(-2)).sum(-1) + b, sigma), obs=y)


# ------------------------------------------------------------------ prediction
@torch.no_grad()
def predictive_draws(net: SequenceFeatures, x: torch.Tensor, draws: dict[str, torch.Tensor],
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Draws of y for each window of ``x``: ``[S, n]`` from ``S`` posterior draws of w, b, sigma."""
    h = net(x)
    mean = draws["w"] @ h.T + draws["b"][:, None]
    eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
    return mean + draws["sigma"][:, None] * eps


@torch.no_grad()
def forecast(net: SequenceFeatures, history: torch.Tensor, horizon: int, draws: dict[str, torch.Tensor],
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Sample paths ``[S, horizon]`` continuing ``history`` (standardised, at least a window long):
    each draw feeds its own sampled values back into its window."""
    if history.ndim != 1 or history.shape[0] < net.window:
        raise BayesdlError(f"forecast: history must be a series of at least {net.window} values")
    num = draws["w"].shape[0]
    recent = history[-net.window:].expand(num, -1).clone()
    out = []
    for _ in range(horizon):
        h = net(recent)
        mean = (draws["w"] * h).sum(-1) + draws["b"]
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device=mean.device)
        value = mean + draws["sigma"] * eps
        out.append(value)
        recent = torch.cat([recent[:, 1:], value[:, None]], -1)
    return torch.stack(out, -1)
