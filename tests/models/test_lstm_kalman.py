"""The LSTM-Kalman filter (models/lstm_kalman.py).

- ``LSTMStep`` equals torch's ``nn.LSTMCell`` with the same weights, and its Jacobian
  dh'/du equals torch.func's (reverse-mode autograd).
- With the LSTM outputs switched off (f(x) = x, constant Q and R) the LSTM-KF is the
  random-walk Kalman filter with a diffuse first position, and equals
  ``kalman_filter`` (checked against statsmodels in test_kalman.py) to 1e-10:
  filtered means, covariances and log-likelihood.
- The built-in model's log density is the filter's log-likelihood plus the priors.
- Slow: trained end to end on coordinated-turn tracks, it beats the raw observations
  and the constant-velocity Kalman filter fitted by maximum likelihood on held-out
  tracks (RMSE), next to a bootstrap particle filter that knows the true dynamics.
"""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from bayesdl.errors import BayesdlError
from bayesdl.models import REGISTRY
from bayesdl.models.kalman import kalman_filter
from bayesdl.models.lstm_kalman import (
    LSTMKalmanFilter,
    LSTMStep,
    _network,
    compare_filters,
    coordinated_turn_tracks,
    lstm_kalman,
    lstm_kalman_data,
)

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Small tensors: one torch thread (see tests/conftest.py)."""


def test_lstm_step_equals_torch_lstm_cell_and_its_jacobian_equals_autograd():
    torch.manual_seed(0)
    step, cell = LSTMStep(3, 8).double(), torch.nn.LSTMCell(3, 8).double()
    with torch.no_grad():
        step.input.weight.copy_(cell.weight_ih)
        step.input.bias.copy_(cell.bias_ih + cell.bias_hh)
        step.recurrent.weight.copy_(cell.weight_hh)
    u, h, c = torch.randn(5, 3, dtype=F64), torch.randn(5, 8, dtype=F64), torch.randn(5, 8, dtype=F64)
    h_new, c_new, jacobian = step(u, (h, c), jacobian=True)
    h_ref, c_ref = cell(u, (h, c))
    torch.testing.assert_close(h_new, h_ref, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(c_new, c_ref, rtol=1e-12, atol=1e-14)
    reference = torch.func.vmap(torch.func.jacrev(lambda u, h, c: step(u, (h, c))[0]))(u, h, c)
    torch.testing.assert_close(jacobian, reference, rtol=1e-10, atol=1e-14)


def test_with_constant_outputs_it_is_the_random_walk_kalman_filter():
    net = LSTMKalmanFilter(dim=2, hidden=8).double()
    with torch.no_grad():  # f(x) = x, Q = softplus(-1) + 1e-4, R = softplus(0.5) + 1e-4
        for layer, bias in ((net.f_out, 0.0), (net.q_out, -1.0), (net.r_out, 0.5)):
            layer.weight.zero_()
            layer.bias.fill_(bias)
    _, z = coordinated_turn_tracks(4, 20, seed=3)
    out = net(z)
    q = torch.nn.functional.softplus(torch.tensor(-1.0, dtype=F64)) + 1e-4
    r = torch.nn.functional.softplus(torch.tensor(0.5, dtype=F64)) + 1e-4
    eye = torch.eye(2, dtype=F64)
    exact = kalman_filter(z[:, 1:], eye, eye, q * eye, r * eye, z[:, 0], (q + r) * eye)
    torch.testing.assert_close(out.filtered_mean[:, 1:], exact.filtered_mean, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.filtered_cov[:, 1:], exact.filtered_cov, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.log_likelihood, exact.log_likelihood, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(out.filtered_mean[:, 0], z[:, 0])


def test_builtin_log_density_is_filter_likelihood_plus_priors():
    assert "lstm_kalman" in REGISTRY
    z = torch.as_tensor(lstm_kalman_data(num_sequences=3, num_steps=8)["z"])
    values = {"log_q_scale": torch.tensor(0.3, dtype=F64), "log_r_scale": torch.tensor(-0.2, dtype=F64)}
    trace = poutine.trace(poutine.condition(lstm_kalman, data=values)).get_trace(z=z, hidden=16)
    net = trace.nodes["lstm_kalman$$$f_out.weight"]["value"]  # registered with Pyro
    assert net.shape == (2, 16)
    expected = _network(2, 16, F64, z.device)(z, values["log_q_scale"].exp(), values["log_r_scale"].exp())
    prior = dist.Normal(0.0, 1.0).log_prob(torch.tensor([0.3, -0.2], dtype=F64)).sum()
    assert trace.log_prob_sum().item() == pytest.approx(
        expected.log_likelihood.sum().item() + prior.item(), rel=1e-10)
    with pytest.raises(BayesdlError, match="z must be"):
        LSTMKalmanFilter()(z[0])


@pytest.mark.slow
def test_trained_lstm_kalman_beats_observations_and_constant_velocity_kalman():
    # 5000 particles: with 2000 the bootstrap filter loses one hard test track (deterministic
    # position dynamics) in about half of the seeds, with the RMSE then above the observations'
    result = compare_filters(num_train=128, num_test=64, num_steps=40, train_steps=200, hidden=32,
                             particles=5000, seed=0)
    rmse = result.rmse
    assert rmse["lstm_kalman"] < 0.85 * rmse["observations"], rmse
    assert rmse["lstm_kalman"] < rmse["kalman_cv"], rmse
    assert rmse["particle_filter"] < rmse["observations"], rmse
