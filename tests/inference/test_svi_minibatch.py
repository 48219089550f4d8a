"""Mini-batch SVI (``--opt minibatch=uniform|dpp``) on conjugate linear regression
(built-in ``linear_regression``, ``noise=0.5``, N = 100), whose posterior is Gaussian in
closed form.

Unbiasedness is checked exactly where it is claimed: with the guide's noise held fixed
(same Pyro seed), the mini-batch gradient of the negative ELBO averaged over 256
batches equals the full-data gradient within 4 standard errors per coordinate, for both
samplers; with the Horvitz-Thompson weights dropped the same check fails by far
(|z| > 10), so it has power.

The fits: a mini-batch of 50 and the default windowed stopping rule. The gradient noise
keeps Adam's iterates wandering and the stopping rule sees noisier window means, so the
fit is looser than the full-batch one (test_svi.py: KL 0.005-0.016 nats, means within
0.05 sd). Measured over seeds 0-1 for both samplers: means within 0.12 posterior sd,
geometric-mean sd ratio within 1.00-1.10 (alpha's sd, the slowest to settle, up to
1.27), KL(q || p) 0.03-0.11 nats. Bounds: means within 0.3 sd, |log| of the geometric-
mean sd ratio < 0.2 and KL < 0.3 nats. A fit that forgot the weights (likelihood scaled by
B / N = 1/2) has every sd sqrt(2) too large (log ratio 0.35, KL about 0.6 nats plus the mean
error) and fails.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from pyro.infer.autoguide import AutoMultivariateNormal
from test_svi import CPU, MEAN, SD, gaussian_kl, regression_spec

from bayesdl.device import run_context
from bayesdl.errors import BayesdlError
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.svi import SVIOptions, fit_svi, make_minibatching

KINDS = ["uniform", "dpp"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def flat_gradient(model, guide, data: dict, params: list[torch.Tensor]) -> torch.Tensor:
    """Gradient of the negative ELBO with the guide's noise fixed (same seed each call)."""
    pyro.set_rng_seed(123)
    loss = Trace_ELBO().differentiable_loss(model, guide, **data)
    return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])


@pytest.mark.parametrize("kind", KINDS)
def test_minibatch_gradient_is_unbiased_for_the_full_data_gradient(kind):
    with run_context(CPU, torch.float64):
        spec = regression_spec()
        batching = make_minibatching(spec, SVIOptions(guide="mvn", minibatch=kind, batch_size=10),
                                     seed=0)
        pyro.clear_param_store()
        pyro.set_rng_seed(0)
        guide = AutoMultivariateNormal(spec.model, init_scale=0.3)
        guide(**spec.data)  # creates the parameters (loc = a prior draw's neighbourhood)
        params = [p for _, p in sorted(pyro.get_param_store().named_parameters())]
        full = flat_gradient(spec.model, guide, spec.data, params)
        weighted, unweighted = [], []
        for step in range(256):
            data = batching.batch(step)
            weighted.append(flat_gradient(batching.model, guide, data, params))
            batching.weights = torch.ones_like(batching.weights)
            unweighted.append(flat_gradient(batching.model, guide, data, params))
    weighted, unweighted = torch.stack(weighted), torch.stack(unweighted)
    moving = weighted.std(0) > 0  # scale_tril's upper triangle has no gradient at all
    assert moving.sum() >= 8
    assert torch.equal(weighted[:, ~moving], full[~moving].expand(256, -1))

    def z(draws: torch.Tensor) -> torch.Tensor:
        return ((draws.mean(0) - full) / (draws.std(0) / math.sqrt(len(draws))))[moving]

    assert z(weighted).abs().max() < 4
    assert z(unweighted).abs().max() > 10


@pytest.mark.parametrize("kind", KINDS)
def test_minibatch_fit_reaches_the_closed_form_posterior(kind):
    options = SVIOptions(guide="mvn", minibatch=kind, batch_size=50, lr=0.03, window=100,
                         patience=2, max_steps=3000)
    with run_context(CPU, torch.float64):
        fit = fit_svi(regression_spec(), options, seed=0, progress=False)
    posterior = fit.guide.get_posterior()
    mean = posterior.loc.detach().numpy()
    cov = posterior.covariance_matrix.detach().numpy()
    assert fit.converged
    assert np.abs(mean - MEAN).max() < 0.3 * SD.min()
    assert abs(np.log(np.sqrt(np.diag(cov)) / SD).mean()) < 0.2
    assert gaussian_kl(mean, cov) < 0.3


def test_batches_repeat_for_a_seed_and_subsample_every_n_row_array():
    with run_context(CPU, torch.float64):
        spec = regression_spec()
        options = SVIOptions(minibatch="dpp", batch_size=7)
        first, again = make_minibatching(spec, options, 3), make_minibatching(spec, options, 3)
        other = make_minibatching(spec, options, 4)
        a, b, c = first.batch(300), again.batch(300), other.batch(300)
    assert torch.equal(a["X"], b["X"]) and not torch.equal(a["X"], c["X"])
    assert a["X"].shape == (7, 3) and a["y"].shape == (7,)
    rows = [int((spec.data["y"] == value).nonzero()) for value in a["y"]]
    assert torch.equal(a["X"], spec.data["X"][rows])  # X and y subsampled alike
    assert first.weights.shape == (7,) and (first.weights > 1).all()


@pytest.mark.parametrize(("options", "message"), [
    (SVIOptions(minibatch="random", batch_size=5), "unknown minibatch 'random'"),
    (SVIOptions(minibatch="uniform"), "needs --opt batch_size"),
    (SVIOptions(minibatch="uniform", batch_size=101), "batch_size=101 exceeds the 100 data points"),
    (SVIOptions(minibatch="dpp", batch_size=5, minibatch_features="Z"), "minibatch_features='Z'"),
])
def test_bad_minibatch_options_are_one_line_errors(options, message):
    with run_context(CPU, torch.float64), pytest.raises(BayesdlError, match=message):
        fit_svi(regression_spec(), options, progress=False)


def fixed_plate_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("obs", 20):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def summed_observation_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    pyro.sample("total", dist.Normal(20 * mu, math.sqrt(20)), obs=y.sum())


def local_latent_model(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("obs", y.shape[0]):
        z = pyro.sample("z", dist.Normal(mu, 1.0))
        pyro.sample("y", dist.Normal(z, 1.0), obs=y)


@pytest.mark.parametrize(("model", "message"), [
    (fixed_plate_model, "size its plates from the data"),
    (summed_observation_model, "observed site is a data array"),
    (local_latent_model, "change the shape of latent site"),
])
def test_models_that_cannot_be_minibatched_are_one_line_errors(model, message):
    spec = ModelSpec(model, {"y": torch.linspace(-1, 1, 20, dtype=torch.float64)})
    with pytest.raises(BayesdlError, match=message):
        make_minibatching(spec, SVIOptions(minibatch="uniform", batch_size=5), seed=0)
