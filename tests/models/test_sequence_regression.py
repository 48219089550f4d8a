"""Probabilistic sequence prediction (models/sequence_regression.py).

- On a linear-Gaussian series (AR(1) plus observation noise) the exact one-step
  predictive is the Kalman filter's (models/kalman.py, itself checked against
  statsmodels). Fitted by SVI on 2000 points (cell=linear, window 10), the predictive
  on 1000 held-out points has means within 0.15 Kalman sd (RMS) of the Kalman means,
  sds within 5 % of the Kalman sds, and its 90 % intervals cover within 4 binomial
  standard errors (+0.01 for the finite training set) of 0.90.
- Forecasts with fixed draws of an AR(1) (window 1, w = phi, b = 0): the h-step mean
  and variance equal phi^h y_T and sigma^2 sum_{j<h} phi^(2j) within 5 MCSE.
- Slow: an LSTM on the noisy sine wave gives 90 % intervals with coverage within
  Monte Carlo error on held-out data.
"""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.svi import SVIOptions, draw_from_guide, fit_svi
from bayesdl.models.sequence_regression import (
    ARSeries,
    SequenceFeatures,
    forecast,
    get_features,
    load_series,
    make_windows,
    predictive_draws,
    sequence_data,
    sequence_regression,
)

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Small tensors: one torch thread."""


def _fit_and_predict(values: torch.Tensor, n_train: int, window: int, cell: str, hidden: int,
                     steps: int, lr: float):
    x, y = make_windows(values[:n_train], window)
    spec = ModelSpec(sequence_regression, {"x": x, "y": y, "cell": cell, "hidden": hidden})
    fit = fit_svi(spec, SVIOptions(lr=lr, max_steps=steps, window=100), seed=0, progress=False)
    draws = draw_from_guide(spec, fit.guide, 2000)
    net = get_features(x, cell, hidden)
    xt, yt = make_windows(values, window)
    xt, yt = xt[n_train - window:], yt[n_train - window:]
    return predictive_draws(net, xt, draws, torch.Generator().manual_seed(0)), yt


def _coverage(y_draws: torch.Tensor, y: torch.Tensor, level: float = 0.9) -> float:
    lo, hi = y_draws.quantile((1 - level) / 2, 0), y_draws.quantile((1 + level) / 2, 0)
    return float(((y >= lo) & (y <= hi)).double().mean())


def test_linear_gaussian_series_matches_kalman_predictive():
    ar = ARSeries()
    values = torch.tensor(ar.simulate(3000, seed=1), dtype=F64)
    y_draws, y = _fit_and_predict(values, 2000, 10, "linear", 8, steps=800, lr=0.05)
    mean_k, sd_k = ar.kalman_predictive(values)
    mean_k, sd_k = mean_k[2000:], sd_k[2000:]
    rms = float(((y_draws.mean(0) - mean_k) ** 2).mean().sqrt() / sd_k.mean())
    assert rms < 0.15, rms
    assert abs(float((y_draws.std(0) / sd_k).mean()) - 1) < 0.05
    n = y.shape[0]
    assert abs(_coverage(y_draws, y) - 0.9) < 4 * np.sqrt(0.09 / n) + 0.01


def test_forecast_of_ar1_closed_form():
    phi, sigma, horizon, S = 0.8, 0.5, 5, 40000
    net = SequenceFeatures("linear", 1, 1).double()
    draws = {"w": torch.full((S, 1), phi, dtype=F64), "b": torch.zeros(S, dtype=F64),
             "sigma": torch.full((S,), sigma, dtype=F64)}
    history = torch.tensor([0.3, 2.0], dtype=F64)
    paths = forecast(net, history, horizon, draws, torch.Generator().manual_seed(0))
    assert paths.shape == (S, horizon)
    h = torch.arange(1, horizon + 1, dtype=F64)
    mean = 2.0 * phi ** h
    var = sigma ** 2 * (1 - phi ** (2 * h)) / (1 - phi ** 2)
    assert ((paths.mean(0) - mean).abs() < 5 * (var / S).sqrt()).all()
    # sd of the sample variance of a normal: var * sqrt(2 / (S - 1))
    assert ((paths.var(0) - var).abs() < 5 * var * np.sqrt(2 / (S - 1))).all()


def test_windows_and_data():
    x, y = make_windows(np.arange(6.0), 2)
    np.testing.assert_array_equal(x, [[0, 1], [1, 2], [2, 3], [3, 4]])
    np.testing.assert_array_equal(y, [2, 3, 4, 5])
    xt, yt = make_windows(torch.arange(6.0), 2)
    np.testing.assert_array_equal(xt.numpy(), x)
    for series in ("sine", "ar", "nile", "sunspots"):
        d = sequence_data(series, window=5)
        assert d["x"].shape[1] == 5 and d["x"].shape[0] == d["y"].shape[0]
        assert abs(d["y"].mean()) < 0.2
    assert load_series("nile").shape == (100,) and load_series("sunspots").shape == (309,)


def test_bad_input():
    with pytest.raises(BayesdlError, match="window"):
        make_windows(np.arange(3.0), 5)
    with pytest.raises(BayesdlError, match="unknown series"):
        load_series("tides")
    pyro.clear_param_store()
    with pytest.raises(BayesdlError, match="unknown cell"):
        sequence_regression(torch.zeros(4, 3), torch.zeros(4), cell="transformer")
    with pytest.raises(BayesdlError, match="need x"):
        sequence_regression(torch.zeros(4, 3), torch.zeros(5))


@pytest.mark.slow
def test_lstm_sine_interval_coverage():
    """~1-2 min: an LSTM on the noisy sine wave, 90 % intervals on 500 held-out points."""
    values = torch.tensor(load_series("sine", 1500, noise=0.1, seed=3), dtype=F64)
    y_draws, y = _fit_and_predict(values, 1000, 20, "lstm", 16, steps=1500, lr=0.02)
    n = y.shape[0]
    assert abs(_coverage(y_draws, y) - 0.9) < 4 * np.sqrt(0.09 / n) + 0.02
