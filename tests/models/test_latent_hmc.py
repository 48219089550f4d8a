"""HMC on latent priors (models/latent_hmc.py), checked against exact ancestral draws and closed forms.

- On a 2-D Gaussian mixture with two well-separated but reachable components (weights
  0.3 / 0.7, 5 sd apart) and on a 2-D truncated stick-breaking DP mixture, chains started
  from N(0, I) (not from p(z)) give, after warm-up, per-coordinate means and second
  moments equal to the closed forms, mean responsibilities equal to the weights
  (E_p[p(k | z)] = w_k), and component occupation frequencies (argmax responsibility)
  equal to those of exact ancestral draws, all within 4 MCSE (ArviZ ESS; the ancestral
  draws' own SE added in quadrature). HMC and NUTS both.
- Chain 0 of a batched run equals a one-chain run (per-chain random numbers and warm-up).
- The chains persist: a second call continues from the first, without re-warming, and
  follows the prior's parameters when they change.
"""

from __future__ import annotations

import math

import arviz as az
import numpy as np
import pytest
import torch

from bayesdl.errors import BayesdlError
from bayesdl.models.latent_hmc import LatentHMC
from bayesdl.models.latent_priors import DirichletProcessPrior, GaussianMixturePrior

F64 = torch.float64
pytestmark = pytest.mark.filterwarnings("ignore:More chains")  # ArviZ: many short chains, as meant


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Small tensors: one torch thread."""


def two_component_gmm() -> GaussianMixturePrior:
    """Components at (-2, 0.5) and (2, -0.5), sd 0.8, weights 0.3 / 0.7: the density at the
    midpoint is ~4% of the smaller peak, so HMC crosses a few times per 100 transitions."""
    prior = GaussianMixturePrior(2, 2).double()
    with torch.no_grad():
        prior.loc.copy_(torch.tensor([[-2.0, 0.5], [2.0, -0.5]], dtype=F64))
        prior.log_scale.fill_(math.log(0.8))
        prior.logits.copy_(torch.tensor([0.0, math.log(7 / 3)], dtype=F64))
    return prior


def dp_prior() -> DirichletProcessPrior:
    """Six sticks (weights 1/2, 1/4, ..., 1/32, 1/32), atoms spread over ~6 units, sd 0.7."""
    prior = DirichletProcessPrior(2, alpha=1.0, truncation=6, seed=0).double()
    with torch.no_grad():
        prior.log_scale.fill_(math.log(0.7))
    return prior


def _statistics(prior, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(z, z^2, responsibilities)`` stacked ``[..., 2 dim + K]`` and the occupation
    indicators (argmax responsibility) ``[..., K]``."""
    resp = prior.responsibilities(z).detach()
    occupied = torch.nn.functional.one_hot(resp.argmax(-1), resp.shape[-1]).to(z.dtype)
    return torch.cat([z, z**2, resp], -1), occupied


def _mcse(draws: np.ndarray) -> np.ndarray:
    """MCSE of the mean of each column of ``draws [chain, draw, n]`` from ArviZ's ESS."""
    ess = az.ess(az.convert_to_dataset({"x": draws}), method="mean")["x"].values
    return draws.std((0, 1)) / np.sqrt(ess)


@pytest.mark.parametrize(("make_prior", "kernel"), [(two_component_gmm, "hmc"), (dp_prior, "hmc"),
                                                     (two_component_gmm, "nuts"), (dp_prior, "nuts")],
                         ids=["gmm-hmc", "dp-hmc", "gmm-nuts", "dp-nuts"])
def test_hmc_draws_match_exact_draws(make_prior, kernel):
    prior = make_prior()
    chains, draws = (200 if kernel == "hmc" else 100), 100  # a NUTS transition costs ~3x more
    sampler = LatentHMC(prior, chains, num_warmup=100, kernel=kernel, init="normal", seed=1)
    z = torch.stack([sampler.sample() for _ in range(draws)], 1)  # [chain, draw, dim]
    stats, occupied = _statistics(prior, z)
    # closed forms: E z = sum_k w_k mu_k, E z^2 = sum_k w_k (mu_k^2 + sd_k^2), E p(k|z) = w_k
    w, mu, sd = prior.weights().detach(), prior.loc.detach(), prior.log_scale.exp().detach()
    truth = torch.cat([w @ mu, w @ (mu**2 + sd**2), w]).numpy()
    estimate, mcse = stats.mean((0, 1)).numpy(), _mcse(stats.numpy())
    assert (np.abs(estimate - truth) < 4 * mcse).all(), ((estimate - truth) / mcse, truth)
    # occupation frequencies against exact ancestral draws (MixtureSameFamily.sample)
    torch.manual_seed(0)
    exact = _statistics(prior, prior.sample((20_000,)))[1]
    keep = exact.mean(0) > 0.01  # components that are ever the most responsible
    exact_freq, exact_se = exact.mean(0)[keep].numpy(), exact.std(0)[keep].numpy() / math.sqrt(20_000)
    freq, freq_mcse = occupied.mean((0, 1))[keep].numpy(), _mcse(occupied[..., keep].numpy())
    combined = np.sqrt(freq_mcse**2 + exact_se**2)
    assert (np.abs(freq - exact_freq) < 4 * combined).all(), ((freq - exact_freq) / combined,
                                                              exact_freq)
    assert float(sampler.last_info.acceptance_rate.mean()) > 0.6


def test_chain_zero_of_a_batch_equals_a_one_chain_run():
    prior = two_component_gmm()
    batched = LatentHMC(prior, 6, num_warmup=30, init="normal", seed=3).sample(5)
    alone = LatentHMC(prior, 1, num_warmup=30, init="normal", seed=3).sample(5)
    assert torch.allclose(batched[:1], alone, atol=1e-10)


def test_chains_persist_and_follow_the_prior_parameters():
    prior = two_component_gmm()
    torch.manual_seed(0)  # init="prior": ancestral draws from torch's generator
    sampler = LatentHMC(prior, 50, num_warmup=40, steps_per_call=2, seed=0)
    first = sampler.sample()
    assert sampler.warmed_up and sampler.step_index == 42
    step_size = sampler.state.warmup.step_size.clone()
    second = sampler.sample()
    assert sampler.step_index == 44 and not torch.equal(first, second)
    assert torch.equal(sampler.state.warmup.step_size, step_size)  # no re-warming
    with torch.no_grad():  # move both components far to the right: the chains follow
        prior.loc.add_(torch.tensor([12.0, 0.0], dtype=F64))
    moved = sampler.sample(30)
    assert float(moved[:, 0].mean()) > 8.0
    assert torch.allclose(sampler.state.point.log_density, prior.log_prob(moved).detach())


def test_bad_input_is_a_bayesdl_error():
    prior = two_component_gmm()
    with pytest.raises(BayesdlError, match="kernel"):
        LatentHMC(prior, 4, kernel="mala")
    with pytest.raises(BayesdlError, match="init"):
        LatentHMC(prior, 4, init="uniform")
    with pytest.raises(BayesdlError, match="init"):
        LatentHMC(prior, 4, init=torch.zeros(3, 2))
    with pytest.raises(BayesdlError, match="num_chains"):
        LatentHMC(prior, 0)
