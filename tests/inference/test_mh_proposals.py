"""Metropolis-Hastings beyond the diagonal random walk: Haario's full-covariance adaptation,
the independence sampler, user proposals with the Hastings correction, their seeding
contract and their pyro.infer.MCMC adapters.

References are closed forms: Gaussian targets from ``torch.distributions`` and the
conjugate linear regression of ``test_random_walk``. Tolerances are Monte Carlo standard
errors from ArviZ (|z| <= 4, see ``assert_moments_match``).
"""

from __future__ import annotations

import arviz as az
import numpy as np
import pyro
import pytest
import torch
from posteriordb_check import check_kernel_against_reference
from pyro.infer import MCMC
from test_random_walk import (
    NOISE,
    Y5,
    assert_moments_match,
    conjugate_posterior,
    flat_draws,
    normal_mean_model,
    normal_mean_posterior,
)

import bayesdl
from bayesdl.device import run_context
from bayesdl.errors import BayesdlError
from bayesdl.inference import RandomWalkMH
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.driver import run_kernel
from bayesdl.inference.independence import IndependenceKernel, IndependenceMH
from bayesdl.inference.metropolis import PROPOSAL_STREAM
from bayesdl.inference.random_walk import RandomWalkKernel
from bayesdl.inference.settings import chain_seed
from bayesdl.inference.user_proposal import Proposal, ProposalKernel, ProposalMH
from bayesdl.models.regression import linear_regression, linear_regression_data

pytestmark = pytest.mark.filterwarnings("ignore:More chains:UserWarning")


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def rotated_gaussian(eigenvalues: list[float], seed: int = 0) -> torch.distributions.MultivariateNormal:
    """A Gaussian whose axes are a random rotation: correlated, with very unequal scales."""
    generator = torch.Generator().manual_seed(seed)
    dim = len(eigenvalues)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator, dtype=torch.float64))
    cov = rotation @ torch.diag(torch.tensor(eigenvalues, dtype=torch.float64)) @ rotation.T
    return torch.distributions.MultivariateNormal(torch.arange(dim, dtype=torch.float64), cov)


def run_on(target, kernel, chains: int, warmup: int, draws: int, seed: int = 0):
    """``run_kernel`` from N(mean, I) starts; draws ``[C, N, D]`` as numpy and the stats."""
    dim = target.mean.shape[0]
    generator = torch.Generator().manual_seed(seed)
    start = target.mean + torch.randn(chains, dim, generator=generator, dtype=torch.float64)
    rng = ChainRNG([chain_seed(seed, c) for c in range(chains)])
    draws_, stats, _ = run_kernel(kernel, rng, start, target.log_prob(start), warmup, draws,
                                  progress=False)
    return draws_.numpy(), stats


def assert_gaussian(draws: np.ndarray, target) -> None:
    assert_moments_match(draws, target.mean.numpy(), target.covariance_matrix.diagonal().sqrt().numpy())


# ----------------------------------------------------------------- Haario (adapt=full)
def test_full_adaptation_beats_diagonal_on_a_rotated_gaussian():
    """Condition number 10^4 along rotated axes: marginal scales cannot fix it, the full
    covariance can. Full adaptation must give at least 2.5x the worst coordinate's ESS of
    diagonal adaptation (it gives ~5x), and the right moments."""
    target = rotated_gaussian([100.0, 10.0, 1.0, 0.1, 0.01])
    ess = {}
    for adapt in ("diag", "full"):
        draws, stats = run_on(target, RandomWalkKernel(target.log_prob, adapt=adapt), 200, 1000, 500)
        ess[adapt] = min(float(az.ess(draws[..., i])) for i in range(draws.shape[-1]))
        if adapt == "full":
            assert_gaussian(draws, target)
            rate = float(stats["acceptance_rate"].mean())
            assert abs(rate - 0.234) < 0.03, rate
    assert ess["full"] > 2.5 * ess["diag"], ess


def test_full_adaptation_learns_the_covariance():
    # the Cholesky factor in the state is that of the chain's covariance estimate
    target = rotated_gaussian([4.0, 1.0, 0.25])
    kernel = RandomWalkKernel(target.log_prob, adapt="full")
    generator = torch.Generator().manual_seed(1)
    start = target.mean + torch.randn(50, 3, generator=generator, dtype=torch.float64)
    _, _, state = run_kernel(kernel, ChainRNG(list(range(50))), start, target.log_prob(start),
                             2000, 1, progress=False)
    estimates = state.scale @ state.scale.transpose(-1, -2)
    # every chain's estimate within 50% (Frobenius) of the truth; their average within 10%
    truth = target.covariance_matrix
    relative = torch.linalg.matrix_norm(estimates - truth) / torch.linalg.matrix_norm(truth)
    assert relative.max() < 0.5, relative.max()
    assert torch.linalg.matrix_norm(estimates.mean(0) - truth) < 0.1 * torch.linalg.matrix_norm(truth)


# ----------------------------------------------------------------- independence sampler
def test_independence_sampler_on_a_correlated_gaussian():
    target = rotated_gaussian([9.0, 1.0, 0.2], seed=2)
    draws, stats = run_on(target, IndependenceKernel(target.log_prob), 200, 600, 300)
    assert_gaussian(draws, target)
    # a fitted Gaussian widened 1.2x accepts most proposals of a Gaussian target; the
    # acceptance of a random walk is 0.234, so this fails when the fit is not used
    rate = float(stats["acceptance_rate"].mean())
    assert rate > 0.6, rate


# ----------------------------------------------------------------- user proposals, Hastings
DRIFT = 0.8


def _drift_sample(rng, step, x):
    return x + DRIFT + 0.7 * rng.normal(step, PROPOSAL_STREAM, x.shape[1:], x.dtype)


def _drift_log_prob(to, from_):
    return -0.5 * (((to - from_ - DRIFT) / 0.7) ** 2).sum(-1)


drift = Proposal(_drift_sample, _drift_log_prob)  # module level: loaded by the CLI test too


def test_hastings_correction_makes_an_asymmetric_proposal_exact():
    """A drifting proposal N(x + 0.8, 0.7^2): with log q the chain samples the target;
    declared symmetric (no correction) its means are pulled far in the drift direction."""
    target = rotated_gaussian([2.0, 0.5], seed=3)
    corrected, _ = run_on(target, ProposalKernel(target.log_prob, drift), 400, 200, 400)
    assert_gaussian(corrected, target)
    uncorrected, _ = run_on(target, ProposalKernel(target.log_prob, Proposal(_drift_sample)),
                            400, 200, 400)
    means = uncorrected.reshape(-1, 2).mean(0)
    mcse = np.array([float(az.mcse(uncorrected[..., i], method="mean")) for i in range(2)])
    z = (means - target.mean.numpy()) / mcse
    assert np.all(z > 10), z  # detectably wrong, and in the direction of the drift


def test_user_proposal_from_a_file_through_the_cli_options(tmp_path):
    """``--opt proposal=file.py:name``: a drifting proposal on the 1-d normal-mean model."""
    source = tmp_path / "my_proposal.py"
    source.write_text(
        "from bayesdl.inference.metropolis import PROPOSAL_STREAM\n"
        "from bayesdl.inference.user_proposal import Proposal\n\n"
        "def sample(rng, step, x):\n"
        "    return x + 0.3 + 0.6 * rng.normal(step, PROPOSAL_STREAM, x.shape[1:], x.dtype)\n\n"
        "def log_prob(to, from_):\n"
        "    return -0.5 * (((to - from_ - 0.3) / 0.6) ** 2).sum(-1)\n\n"
        "drift = Proposal(sample, log_prob)\n"
    )
    data = {"y": torch.tensor(Y5)}
    idata = bayesdl.infer(normal_mean_model, data, method="mh", chains=400, warmup=100, draws=200,
                          seed=2, progress=False, proposal=f"{source}:drift")
    mean, sd = normal_mean_posterior(Y5)
    assert_moments_match(idata.posterior["mu"].values[..., None], [mean], [sd])
    assert set(idata.sample_stats.data_vars) == {"acceptance_rate", "lp"}
    for bad in ("nonsense", f"{tmp_path / 'missing.py'}:drift", f"{source}:sample"):
        with pytest.raises(BayesdlError):
            bayesdl.infer(normal_mean_model, data, method="mh", chains=2, warmup=5, draws=5,
                          progress=False, proposal=bad)


# ----------------------------------------------------------------- CLI options, seeding
SHORT = dict(method="mh", warmup=300, draws=100, args={"noise": NOISE}, progress=False)


@pytest.mark.parametrize("options", [{"adapt": "full"}, {"proposal": "independence"}],
                         ids=["full", "independence"])
def test_options_sample_the_conjugate_posterior(options):
    idata = bayesdl.infer("linear_regression", chains=300, seed=5,
                          **{**SHORT, "draws": 300}, **options)
    mean, cov = conjugate_posterior()
    assert_moments_match(flat_draws(idata), mean, np.sqrt(np.diag(cov)))


@pytest.mark.parametrize("options", [{"adapt": "full"}, {"proposal": "independence"}],
                         ids=["full", "independence"])
def test_chain_c_equals_a_one_chain_run(options):
    """As in test_random_walk: equal to rounding (batched matrix products sum in another
    order), with the same accept decisions."""
    batch = flat_draws(bayesdl.infer("linear_regression", chains=3, seed=11, **SHORT, **options))
    for chain in (0, 2):
        alone = flat_draws(bayesdl.infer("linear_regression", chains=1, seed=chain_seed(11, chain),
                                         **SHORT, **options))[0]
        np.testing.assert_allclose(batch[chain], alone, rtol=0, atol=1e-9)
        moved = np.any(np.diff(batch[chain], axis=0) != 0, axis=-1)
        assert moved.sum() >= 5
    assert not np.allclose(batch[0], batch[2])


def test_bad_options_are_one_line_errors():
    for options in ({"adapt": "dense"}, {"proposal": "independence", "independence_scale": -1.0},
                    {"proposal": "independence", "adapt_scale": False}):
        with pytest.raises(BayesdlError):
            bayesdl.infer("linear_regression", chains=2, **{**SHORT, "warmup": 5, "draws": 5},
                          **options)


# ----------------------------------------------------------------- inside pyro.infer.MCMC
def _pyro_run(kernel, samples: int, warmup: int, kwargs) -> tuple[np.ndarray, MCMC]:
    pyro.set_rng_seed(0)
    mcmc = MCMC(kernel, num_samples=samples, warmup_steps=warmup, disable_progbar=True)
    mcmc.run(**kwargs)
    draws = mcmc.get_samples(group_by_chain=True)
    return torch.cat([draws["alpha"][..., None], draws["beta"]], dim=-1).numpy(), mcmc


def test_kernels_inside_pyro_mcmc():
    """The independence sampler (ESS ~ half its draws) gets the conjugate posterior's means
    within 4 MCSE in one Pyro chain; the full-covariance walk and a user proposal run."""
    mean, cov = conjugate_posterior()
    data = linear_regression_data()
    with run_context(torch.device("cpu"), torch.float64):
        kwargs = {"X": torch.tensor(data["X"]), "y": torch.tensor(data["y"]), "noise": NOISE}
        draws, mcmc = _pyro_run(IndependenceMH(linear_regression), 1000, 400, kwargs)
        assert draws.shape == (1, 1000, 4)
        for i in range(4):
            mcse = float(az.mcse(draws[..., i], method="mean"))
            assert abs(draws[..., i].mean() - mean[i]) < 4 * mcse, i
        assert mcmc.diagnostics()["acceptance rate"]["chain 0"] > 0.5
        walk = RandomWalkMH(linear_regression, adapt="full")
        user = ProposalMH(linear_regression, Proposal(
            lambda rng, step, x: x + 0.05 * rng.normal(step, PROPOSAL_STREAM, x.shape[1:], x.dtype)))
        for kernel in (walk, user):
            draws, mcmc = _pyro_run(kernel, 100, 200, kwargs)
            assert draws.shape == (1, 100, 4) and np.isfinite(draws).all()
            assert np.any(draws[0, 1:] != draws[0, :-1])
            assert 0 < mcmc.diagnostics()["acceptance rate"]["chain 0"] <= 1
            again, _ = _pyro_run(kernel, 100, 200, kwargs)
            np.testing.assert_array_equal(draws, again)  # pyro.set_rng_seed repeats it


@pytest.mark.slow
@pytest.mark.parametrize("model, reference, chains, warmup, draws, options", [
    # corr(beta[1], beta[2]) = -0.99: what full adaptation is for
    ("kidiq", "kidiq-kidscore_momiq", 64, 2000, 2000, {"adapt": "full"}),
    ("kidiq", "kidiq-kidscore_momiq", 64, 2000, 1000, {"proposal": "independence"}),
    ("eight_schools", "eight_schools-eight_schools_noncentered", 64, 2000, 2000, {"adapt": "full"}),
], ids=["kidiq-full", "kidiq-independence", "eight_schools-full"])
def test_mh_options_match_posteriordb_reference(model, reference, chains, warmup, draws, options):
    check_kernel_against_reference(model, reference, "mh", chains, warmup, draws, **options)
