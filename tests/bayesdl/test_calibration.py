"""Simulation-based calibration (bayesdl.check / ``bayesdl check``).

- The statistics on their own: exact conjugate posterior draws give uniform ranks; a
  shifted or too narrow "posterior" and autocorrelated draws do not, and thinning to the
  ESS repairs the latter (NumPy, closed form).
- The prior simulation matches the model's prior (Kolmogorov-Smirnov against SciPy).
- SBC of every sampling method on two models with a closed-form posterior
  (``gaussian_mle``: normal mean and variance, conjugate NIG prior; ``linear_regression``
  with known noise); cheap ones run here, the rest are ``slow``.
- A deliberately miscalibrated method (importance sampling with its draws shifted by one
  posterior sd, or squeezed to half their spread) is flagged.

Each SBC is one test of a uniformity hypothesis at family-wise level 0.01, so about
one in a hundred correct (method, model) pairs would fail by chance; the seeds are
fixed, so a failure that appears after a change is a change in behaviour.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

import bayesdl
from bayesdl.calibration import (
    bin_counts,
    binomial_band,
    default_bins,
    fractional_ranks,
    simulate,
    thin_draws,
    uniformity_test,
)
from bayesdl.cli import main
from bayesdl.errors import BayesdlError
from bayesdl.inference.importance import ISOptions, run_importance
from bayesdl.inference.methods import METHODS, Method
from bayesdl.inference.samples import Samples
from bayesdl.models.mle_examples import gaussian_mle

GM = ("gaussian_mle", {"num_points": 10})
LR = ("linear_regression", {"noise": 1.0, "num_points": 8, "num_features": 2, "prior_scale": 1.0})
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


# ----------------------------------------------------------------- the statistics
def conjugate_replications(n: int, draws: int, rng, shift: float = 0.0, scale: float = 1.0):
    """theta ~ N(0, 1), y_1..5 ~ N(theta, 1); L exact posterior draws, optionally distorted."""
    theta = rng.normal(size=n)
    y = theta[:, None] + rng.normal(size=(n, 5))
    precision = 1 + 5
    mean, sd = y.sum(1) / precision, precision ** -0.5
    post = mean[:, None] + sd * rng.normal(size=(n, draws))
    post = mean[:, None] + scale * (post - mean[:, None]) + shift * sd
    return theta, post


def sbc_p_value(theta, post, rng, bins: int = 20) -> float:
    fractions = np.array([fractional_ranks(theta[i:i + 1], post[i][:, None], rng)[1]
                          for i in range(len(theta))])
    return float(uniformity_test(fractions, bins)[1][0])


def test_exact_posterior_ranks_are_uniform_and_distorted_ones_are_not():
    rng = np.random.default_rng(0)
    assert sbc_p_value(*conjugate_replications(2000, 99, rng), rng) > 0.01
    assert sbc_p_value(*conjugate_replications(2000, 99, rng, shift=0.3), rng) < 1e-6
    assert sbc_p_value(*conjugate_replications(2000, 99, rng, scale=0.8), rng) < 1e-6
    assert sbc_p_value(*conjugate_replications(2000, 99, rng, scale=1.25), rng) < 1e-6


def test_fractional_ranks_are_uniform_whatever_the_number_of_draws():
    rng = np.random.default_rng(1)
    fractions = []
    for i in range(3000):  # L from 1 to 30: each rank uniform on {0..L}
        theta, post = conjugate_replications(1, 1 + i % 30, rng)
        fractions.append(fractional_ranks(theta, post[0][:, None], rng)[1])
    fractions = np.array(fractions)
    assert stats.kstest(fractions[:, 0], "uniform").pvalue > 0.01
    # ties (a discrete posterior) are broken at random, so ranks stay uniform
    ranks = [fractional_ranks(np.array([1.0]), np.array([[0.0], [1.0], [1.0], [2.0]]), rng)[0][0]
             for _ in range(4000)]
    counts = np.bincount(ranks, minlength=5)
    assert counts[0] == counts[4] == 0 and stats.chisquare(counts[1:4]).pvalue > 0.01


def test_autocorrelated_draws_fake_a_u_and_thinning_to_the_ess_removes_it():
    """An exact but sticky sampler: an AR(1) chain (rho 0.99) started at stationarity."""
    rng = np.random.default_rng(2)
    n, chains, length, rho = 1000, 2, 400, 0.99
    theta = rng.normal(size=n)
    mean, sd = (theta[:, None] + rng.normal(size=(n, 5))).sum(1) / 6, 6 ** -0.5
    z = np.empty((n, chains, length))
    z[:, :, 0] = rng.normal(size=(n, chains))
    for t in range(1, length):
        z[:, :, t] = rho * z[:, :, t - 1] + np.sqrt(1 - rho**2) * rng.normal(size=(n, chains))
    chain_draws = mean[:, None, None] + sd * z  # every draw is an exact posterior draw
    raw, thinned, ratios, kept = [], [], [], []
    for i in range(n):
        draws = chain_draws[i][:, :, None]
        raw.append(fractional_ranks(theta[i:i + 1], draws.reshape(-1, 1), rng)[1])
        kept_draws, ratio = thin_draws(draws, 0)
        thinned.append(fractional_ranks(theta[i:i + 1], kept_draws, rng)[1])
        ratios.append(ratio[0])
        kept.append(len(kept_draws))
    assert uniformity_test(np.array(raw), 20)[1][0] < 1e-6  # the sticky chain looks miscalibrated
    assert uniformity_test(np.array(thinned), 20)[1][0] > 0.01  # thinned, it does not
    assert 0.5 < np.median(ratios) < 2.0 and np.median(kept) <= 16  # ESS ~ 800 * 0.01 / 1.99 = 4


def test_bins_and_band():
    assert default_bins(10) == 2 and default_bins(60) == 12 and default_bins(10_000) == 20
    low, high = binomial_band(100, 10)
    assert (low, high) == (stats.binom.ppf(0.005, 100, 0.1), stats.binom.ppf(0.995, 100, 0.1))
    counts = bin_counts(np.array([[0.0, 0.99], [0.5, 0.999999], [0.25, 0.5]]), 4)
    assert counts[:, 0].tolist() == [1, 1, 1, 0] and counts[:, 1].tolist() == [0, 0, 1, 2]


def test_simulation_draws_from_the_prior_and_the_likelihood():
    """gaussian_mle: sigma2 ~ InvGamma(2, 2), mu | sigma2 ~ N(0, sigma2), y | mu, sigma2."""
    import pyro

    pyro.set_rng_seed(3)
    y = torch.zeros(4, dtype=torch.float64)
    params, observed, sites = simulate(gaussian_mle, {"y": y}, 1500)
    assert sites.latent == ["sigma2", "mu"] and sites.observed == {"y": "y"}
    sigma2, mu, sim_y = params["sigma2"].numpy(), params["mu"].numpy(), observed["y"].numpy()
    assert sim_y.shape == (1500, 4) and sigma2.shape == (1500,)
    assert stats.kstest(sigma2, stats.invgamma(2.0, scale=2.0).cdf).pvalue > 0.001
    assert stats.kstest(mu / np.sqrt(sigma2), "norm").pvalue > 0.001
    assert stats.kstest(((sim_y - mu[:, None]) / np.sqrt(sigma2)[:, None]).ravel(),
                        "norm").pvalue > 0.001


def test_simulation_keeps_deterministic_sites_consistent():
    """eight_schools: theta = mu + tau * theta_trans is recomputed, not re-"sampled"."""
    import pyro

    from bayesdl.models.eight_schools import eight_schools

    pyro.set_rng_seed(4)
    data = {"J": 8, "y": torch.zeros(8, dtype=torch.float64), "sigma": torch.ones(8, dtype=torch.float64)}
    params, observed, sites = simulate(eight_schools, data, 50)
    assert sites.deterministic == ["theta"] and observed["y"].shape == (50, 8)
    expected = params["mu"][:, None] + params["tau"][:, None] * params["theta_trans"]
    torch.testing.assert_close(params["theta"], expected)


# ----------------------------------------------------------------- SBC of the methods
# per method: settings of each replication (kept short) and options; per model where needed
RUNS = {
    "nuts": dict(chains=4, warmup=80, draws=40),
    "hmc": dict(chains=4, warmup=100, draws=50, num_steps=8),
    "chees": dict(chains=32, warmup=100, draws=10),
    "mh": dict(chains=8, warmup=150, draws=50),
    "mala": dict(chains=8, warmup=150, draws=50),
    "slice": dict(chains=2, warmup=40, draws=40),
    "svi": dict(chains=1, warmup=0, draws=100, lr=0.1, max_steps=400, window=25),
    "is": dict(chains=1, warmup=0, draws=2000),
    "smc": dict(chains=1, warmup=0, draws=500),
}
PER_MODEL = {("svi", "linear_regression"): dict(guide="mvn"),  # the posterior is correlated
             ("is", "linear_regression"): dict(draws=1000)}
FAST = {("is", "gaussian_mle"), ("smc", "gaussian_mle")}
CASES = [pytest.param(method, model, id=f"{method}-{model[0]}",
                      marks=() if (method, model[0]) in FAST else pytest.mark.slow)
         for method in RUNS for model in (GM, LR)]


def run_sbc(method: str, model, replications: int = 50, **extra) -> bayesdl.calibration.SBCResult:
    name, args = model
    settings = {**RUNS.get(method, RUNS["is"]), **PER_MODEL.get((method, name), {}), **extra}
    return bayesdl.check(name, method=method, sbc=replications, seed=11, args=args,
                         progress=False, **settings)


@pytest.mark.parametrize("method, model", CASES)
def test_sbc_ranks_are_uniform(method, model):
    result = run_sbc(method, model)
    expected = {"gaussian_mle": ["sigma2", "mu"],
                "linear_regression": ["alpha", "beta[0]", "beta[1]"]}[model[0]]
    assert result.names == expected
    assert result.ranks.shape == (50, len(expected)) and result.bins == 10
    assert result.passed, f"{result.verdict()}\n{result.table()}"
    assert (result.kept >= 10).all()  # enough draws survive the thinning to rank against


# ----------------------------------------------------------------- a miscalibrated method
def distorted_is(shift: float, scale: float):
    """Importance sampling whose draws are moved by ``shift`` posterior sds and squeezed
    by ``scale`` about their mean: a wrong posterior SBC must catch."""

    def run(spec, options, settings) -> Samples:
        samples = run_importance(spec, options, settings)
        for name, value in samples.draws.items():
            mean, sd = value.mean((0, 1)), value.std((0, 1))
            samples.draws[name] = mean + scale * (value - mean) + shift * sd
        return samples

    return Method("distorted", "importance sampling, made wrong on purpose", ISOptions, run)


@pytest.mark.parametrize("shift, scale, replications", [(1.0, 1.0, 40), (0.0, 0.5, 60)],
                         ids=["shifted by 1 sd", "half as wide"])
def test_a_miscalibrated_method_is_flagged(monkeypatch, shift, scale, replications):
    monkeypatch.setitem(METHODS, "distorted", distorted_is(shift, scale))
    result = run_sbc("distorted", GM, replications)
    assert not result.passed
    assert set(result.flagged) >= ({"mu"} if shift else {"mu", "sigma2"}), result.table()
    assert np.min(result.p_values) < 1e-4
    counts = result.counts()
    if shift:  # draws too high -> the truth ranks low (P(u < 1/2) = Phi(1) = 0.84)
        assert counts[: result.bins // 2].sum(0).min() > 0.7 * replications
    else:  # too narrow -> the truth falls outside: a U (outer 2 of 12 bins: 0.49, not 1/6)
        assert (counts[[0, -1]].sum(0) > 0.35 * replications).all()


# ----------------------------------------------------------------- the CLI and output
def test_cli_check_writes_ranks_json_and_png(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code = main(["check", "gaussian_mle", "--method", "is", "--sbc", "20", "--chains", "1",
                 "--draws", "500", "--arg", "num_points=10", "--seed", "5", "--out", "OUT", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    record = json.loads(out)
    assert record["passed"] and record["replications"] == 20 and record["bins"] == 4
    assert set(record["parameters"]) == {"mu", "sigma2"}
    assert sum(record["parameters"]["mu"]["counts"]) == 20
    assert sorted(p.name for p in (tmp_path / "OUT").iterdir()) == ["ranks.csv", "ranks.png",
                                                                    "sbc.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT"]  # no temp directory left
    assert (tmp_path / "OUT" / "ranks.png").read_bytes()[:8] == PNG_MAGIC
    rows = (tmp_path / "OUT" / "ranks.csv").read_text().splitlines()
    assert rows[0] == "replication,kept_draws,rank:sigma2,rank:mu,prior:sigma2,prior:mu"
    assert len(rows) == 21
    ranks = np.array([[int(v) for v in row.split(",")[2:4]] for row in rows[1:]])
    assert ranks.min() >= 0 and ranks.max() <= 500
    assert json.loads((tmp_path / "OUT" / "sbc.json").read_text())["passed"] is True


def test_cli_check_exits_1_when_calibration_fails(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(METHODS, "distorted", distorted_is(1.0, 1.0))
    monkeypatch.chdir(tmp_path)
    code = main(["check", "gaussian_mle", "--method", "distorted", "--sbc", "40", "--chains", "1",
                 "--draws", "500", "--arg", "num_points=10", "--seed", "11"])
    out, err = capsys.readouterr()
    assert code == 1, err
    assert "NOT calibrated: " in out and "FAIL" in out
    assert (tmp_path / "runs" / "gaussian_mle-sbc-distorted" / "ranks.png").is_file()


BAD_CHECKS = [
    (dict(sbc=1), "sbc must be an integer >= 2"),
    (dict(sbc=10, bins=11), "bins must be an integer from 2"),
    (dict(sbc=10, thin=-1), "thin must be an integer >= 0"),
    (dict(sbc=10, alpha=1.5), "alpha must be in (0, 1)"),
    (dict(sbc=10, method="nope"), "unknown method 'nope'"),
    (dict(sbc=10, method="nuts", nope=1), "has no option 'nope'"),
    (dict(sbc=10, args={"flat_priors": True}), "SBC needs a proper prior; site 'sigma2'"),
]


@pytest.mark.parametrize("kwargs, message", BAD_CHECKS, ids=[m for _, m in BAD_CHECKS])
def test_bad_check_arguments(tmp_path, kwargs, message):
    kwargs = {"method": "is", "args": {"num_points": 5}, **kwargs}
    with pytest.raises(BayesdlError, match=message.replace("(", r"\(").replace(")", r"\)")):
        bayesdl.check("gaussian_mle", progress=False, out=tmp_path / "OUT", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_check_refuses_an_existing_out_and_a_model_without_data(tmp_path, capsys):
    (tmp_path / "OUT").mkdir()
    (tmp_path / "OUT" / "earlier.txt").write_text("kept")
    code = main(["check", "gaussian_mle", "--method", "is", "--sbc", "5", "--out",
                 str(tmp_path / "OUT")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "already exists" in err
    assert [p.name for p in (tmp_path / "OUT").iterdir()] == ["earlier.txt"]
    model = tmp_path / "prior_only.py"
    model.write_text("import pyro, pyro.distributions as dist\n\n\n"
                     "def model():\n    pyro.sample('mu', dist.Normal(0.0, 1.0))\n")
    code = main(["check", f"{model}:model", "--method", "is", "--sbc", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "no observed site" in err and err.count("\n") == 1
    model.write_text("import pyro, torch, pyro.distributions as dist\n\n\n"
                     "def model():\n    mu = pyro.sample('mu', dist.Normal(0.0, 1.0))\n"
                     "    pyro.factor('likelihood', -mu ** 2)\n")
    code = main(["check", f"{model}:model", "--method", "is", "--sbc", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "pyro.factor site 'likelihood'" in err and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["OUT", "prior_only.py"]


def test_check_runs_a_model_file(tmp_path):
    """A user's model file: obs= taken from a data argument with another name."""
    model = tmp_path / "m.py"
    model.write_text(
        "import pyro, pyro.distributions as dist\n\n\n"
        "def model(values, scale=1.0):\n"
        "    mu = pyro.sample('mu', dist.Normal(0.0, 2.0))\n"
        "    with pyro.plate('n', values.shape[0]):\n"
        "        pyro.sample('obs', dist.Normal(mu, scale), obs=values)\n")
    result = bayesdl.check(f"{model}:model", {"values": [0.0] * 6}, method="is", sbc=20,
                           chains=1, draws=400, args={"scale": 2.0}, progress=False,
                           out=Path(tmp_path / "OUT"))
    assert result.names == ["mu"] and result.num_replications == 20
    assert (tmp_path / "OUT" / "sbc.json").is_file()
