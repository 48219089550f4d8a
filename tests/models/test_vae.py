"""The VAE (models/vae.py), checked against closed forms of the linear-Gaussian case.

- Both ELBO forms (``mc``: E_q[log p(x,z) - log q]; ``kl``: E_q[log p(x|z)] - KL in
  closed form) are unbiased for the ELBO: on a linear-Gaussian VAE their Monte Carlo
  means equal the ELBO computed in closed form (Gaussian expectations) within 5 MCSE;
  on the non-linear Bernoulli VAE of the digits they agree with each other within 5
  MCSE of the difference, and the KL form has the smaller variance.
- IWAE (k = 1 .. 5000) on a linear-Gaussian VAE with a deliberately wrong encoder: the
  bound's mean increases with k (each step > -4 MCSE, overall by many MCSE), never
  exceeds the exact log p(x) (Gaussian marginal) by more than 4 MCSE, and at k = 5000 is
  within 4 MCSE + 0.02 nats/point of it.
- ``ppca_max_log_likelihood`` (Tipping & Bishop's closed form) equals the Gaussian
  log-likelihood (scipy) at their ML estimate of W and sigma, and is above it anywhere else.
- Slow: SVI on the linear VAE (probabilistic PCA) reaches the closed-form maximum
  log-likelihood and the ELBO at the optimum equals the exact log marginal likelihood.
- The built-in runs with each prior; bad options raise BayesdlError; the bundled digits
  equal scikit-learn's.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO
from scipy import stats

from bayesdl.errors import BayesdlError
from bayesdl.models.vae import (
    VAE,
    digits_data,
    linear_vae_log_marginal,
    load_bundled_digits,
    ppca_max_log_likelihood,
    vae,
    vae_guide,
)

F64 = torch.float64


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Small tensors: one torch thread."""


def _ppca_data(n: int = 300, d: int = 5, q: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(d, q, generator=g, dtype=F64) * torch.tensor([2.0, 1.0], dtype=F64)
    return (torch.randn(n, q, generator=g, dtype=F64) @ W.T + 0.5 * torch.randn(n, d, generator=g, dtype=F64)
            + 1.0)


def _linear_vae(d: int = 5, q: int = 2, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    return VAE(d, q, 8, "normal", "normal", linear=True).double()


def _closed_form_elbo(net: VAE, x: torch.Tensor) -> float:
    """E_q[log N(x | W z + b, s^2 I)] - KL(q || N(0, I)) for Gaussian q, in closed form."""
    W, b = net.decoder.net.weight, net.decoder.net.bias
    s2 = net.decoder.log_sigma.exp() ** 2
    loc, scale = net.encoder(x)
    d = x.shape[-1]
    expected_ll = (-0.5 * ((x - loc @ W.T - b) ** 2).sum(-1) / s2 - 0.5 * d * torch.log(2 * math.pi * s2)
                   - 0.5 * (W.pow(2) * scale.pow(2)[:, None, :]).sum((-1, -2)) / s2)
    kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum(-1)
    return float((expected_ll - kl).sum().detach())


def _elbo_draws(net: VAE, x: torch.Tensor, elbo: str, reps: int, particles: int) -> np.ndarray:
    loss = Trace_ELBO(num_particles=particles)
    return np.array([-loss.loss(net.model, net.guide, x, elbo) for _ in range(reps)])


def test_both_elbo_forms_equal_closed_form_elbo_linear():
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net, x = _linear_vae(), _ppca_data(40)
    exact = _closed_form_elbo(net, x)
    for elbo in ("mc", "kl"):
        draws = _elbo_draws(net, x, elbo, reps=30, particles=10)
        mcse = draws.std(ddof=1) / np.sqrt(len(draws))
        assert abs(draws.mean() - exact) < 5 * mcse, (elbo, draws.mean(), exact, mcse)


def test_elbo_forms_agree_on_digits_vae():
    pyro.clear_param_store()
    pyro.set_rng_seed(1)
    x = torch.tensor(digits_data()["x"][:64], dtype=torch.float32)
    torch.manual_seed(0)
    net = VAE(64, 2, 32, "bernoulli", "normal")
    mc = _elbo_draws(net, x, "mc", reps=40, particles=4)
    kl = _elbo_draws(net, x, "kl", reps=40, particles=4)
    se = np.sqrt(mc.var(ddof=1) / len(mc) + kl.var(ddof=1) / len(kl))
    assert abs(mc.mean() - kl.mean()) < 5 * se, (mc.mean(), kl.mean(), se)
    assert kl.std() < mc.std()


def test_iwae_increases_to_exact_log_likelihood():
    torch.manual_seed(2)
    net, x = _linear_vae(seed=2), _ppca_data(30, seed=5)
    with torch.no_grad():  # a decoder near the data, an encoder that is off: a gap at k = 1
        net.decoder.net.bias.copy_(x.mean(0))
        net.decoder.log_sigma.fill_(math.log(0.8))
        net.encoder.raw_scale.fill_(0.5)
    exact = float(linear_vae_log_marginal(net, x).sum())
    ks, reps = [1, 10, 100, 1000, 5000], 16
    values = np.array([[float(net.iwae(x, k).sum()) for _ in range(reps)] for k in ks])
    means, se = values.mean(1), values.std(1, ddof=1) / np.sqrt(reps)
    step_se = np.sqrt(se[1:] ** 2 + se[:-1] ** 2)
    assert (np.diff(means) > -4 * step_se).all(), (means, se)
    assert means[-1] - means[0] > 10 * step_se.max()
    assert (means < exact + 4 * se).all()
    assert exact - means[-1] < 4 * se[-1] + 0.02 * x.shape[0], (means[-1], exact)
    assert exact - means[0] > 1.0  # the k = 1 bound (the ELBO) is loose here


def test_ppca_closed_form_maximum():
    x = _ppca_data(200)
    n, d = x.shape
    q = 2
    value = float(ppca_max_log_likelihood(x, q))
    S = np.cov(x.numpy().T, bias=True)
    eig, vec = np.linalg.eigh(S)
    eig, vec = eig[::-1], vec[:, ::-1]
    sigma2 = eig[q:].mean()
    W = vec[:, :q] * np.sqrt(eig[:q] - sigma2)
    mle = stats.multivariate_normal(x.numpy().mean(0), W @ W.T + sigma2 * np.eye(d)).logpdf(x.numpy()).sum()
    assert value == pytest.approx(mle, rel=1e-10)
    other = stats.multivariate_normal(x.numpy().mean(0), 1.1 * W @ W.T + sigma2 * np.eye(d))
    assert other.logpdf(x.numpy()).sum() < value


@pytest.mark.slow
def test_svi_on_linear_vae_reaches_ppca_maximum():
    """~30-60 s: the ELBO optimum of the linear VAE is the PPCA maximum likelihood."""
    x = _ppca_data(300)
    n = x.shape[0]
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    net = _linear_vae()
    svi = SVI(net.model, net.guide, pyro.optim.ClippedAdam({"lr": 0.05, "lrd": 0.998}),
              Trace_ELBO(num_particles=32, vectorize_particles=True))
    for _ in range(1500):
        svi.step(x, "kl")
    best = float(ppca_max_log_likelihood(x, 2))
    learned = float(linear_vae_log_marginal(net, x).sum().detach())
    assert learned <= best + 1e-6  # the closed form is a maximum
    assert best - learned < 0.005 * n, (learned, best)
    with torch.no_grad():
        elbo = _closed_form_elbo(net, x)
    assert elbo <= learned + 1e-6
    assert learned - elbo < 0.005 * n, (elbo, learned)


@pytest.mark.parametrize("prior", ["normal", "gmm", "dp"])
def test_builtin_trains_with_each_prior(prior):
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    x = torch.tensor(digits_data()["x"][:100], dtype=torch.float32)
    kw = {"prior": prior, "latent_dim": 2, "hidden": 16, "batch_size": 50}
    svi = SVI(lambda x: vae(x, **kw), lambda x: vae_guide(x, **kw), pyro.optim.Adam({"lr": 0.01}),
              Trace_ELBO())
    losses = [svi.step(x) for _ in range(60)]
    assert all(math.isfinite(v) for v in losses)
    assert np.mean(losses[-10:]) < np.mean(losses[:10])


def test_bad_options():
    x = torch.tensor(digits_data()["x"][:10], dtype=torch.float32)
    with pytest.raises(BayesdlError, match="elbo=kl"):
        vae(x, prior="gmm", elbo="kl")
    with pytest.raises(BayesdlError, match="unknown elbo"):
        vae(x, elbo="exact")
    with pytest.raises(BayesdlError, match="likelihood"):
        vae(x, likelihood="poisson")
    with pytest.raises(BayesdlError, match="0/1"):
        vae(x * 0.5)


def test_bundled_digits_equal_sklearn():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    pixels, labels = load_bundled_digits()
    ref = sklearn_datasets.load_digits()
    np.testing.assert_array_equal(pixels, ref.data.astype(np.int64))
    np.testing.assert_array_equal(labels, ref.target)
    assert digits_data()["x"].shape == (1438, 64) and digits_data("test")["x"].shape == (359, 64)
