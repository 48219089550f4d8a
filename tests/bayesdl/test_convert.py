"""The one converter: `Samples` -> `arviz.InferenceData`, with named dims, exact
log-likelihoods and deterministic sites, posterior predictive draws from the right
distribution, and a run directory that `bayesdl.load` reads back unchanged.
"""

from __future__ import annotations

import math
import warnings

import arviz as az
import numpy as np
import pytest
import torch
from scipy import stats

import bayesdl
from bayesdl.convert import to_inference_data
from bayesdl.device import run_context
from bayesdl.errors import BayesdlError
from bayesdl.inference.samples import Samples
from bayesdl.model_source import load_model_spec
from bayesdl.models.eight_schools import SCHOOLS, eight_schools_data

CPU = torch.device("cpu")
DATA = eight_schools_data()
Y, SIGMA = np.array(DATA["y"]), np.array(DATA["sigma"])


def eight_schools_samples(chains: int, draws: int, seed: int = 0) -> Samples:
    """Made-up draws of the non-centred model's latent sites (any values will do)."""
    g = torch.Generator().manual_seed(seed)
    return Samples(
        draws={"mu": 5 + 3 * torch.randn(chains, draws, generator=g, dtype=torch.float64),
               "tau": torch.rand(chains, draws, generator=g, dtype=torch.float64) * 10,
               "theta_trans": torch.randn(chains, draws, 8, generator=g, dtype=torch.float64)},
        stats={"lp": torch.zeros(chains, draws, dtype=torch.float64),
               "diverging": torch.zeros(chains, draws, dtype=torch.bool)},
        info={"method": "test", "seed": seed, "flag": True, "ignored": {"a": 1}},
    )


def convert(samples: Samples, predictive: bool = False, args: dict | None = None):
    with run_context(CPU, torch.float64):
        spec = load_model_spec("eight_schools", None, args or {}, CPU, torch.float64)
        return to_inference_data(samples, spec, predictive=predictive)


@pytest.fixture(scope="module")
def converted():
    samples = eight_schools_samples(chains=2, draws=50)
    return samples, convert(samples)


def test_groups(converted):
    _, idata = converted
    assert set(idata.groups()) == {"posterior", "sample_stats", "observed_data",
                                   "log_likelihood"}
    assert set(idata.posterior.data_vars) == {"mu", "tau", "theta_trans", "theta"}
    assert set(idata.sample_stats.data_vars) == {"lp", "diverging"}
    assert idata.sample_stats["diverging"].dtype == bool
    assert list(idata.log_likelihood.data_vars) == ["y"]
    assert list(idata.observed_data.data_vars) == ["y"]


def test_named_dims_and_coords(converted):
    _, idata = converted
    for group, name in [("posterior", "theta"), ("posterior", "theta_trans"),
                        ("log_likelihood", "y")]:
        assert idata[group][name].dims == ("chain", "draw", "school")
    assert idata.observed_data["y"].dims == ("school",)
    assert list(idata.posterior["theta"].coords["school"].values) == SCHOOLS
    assert idata.posterior["mu"].dims == ("chain", "draw")
    assert idata.posterior.sizes == {"chain": 2, "draw": 50, "school": 8}
    # a school can be picked by name
    choate = idata.posterior["theta"].sel(school="Choate").values
    np.testing.assert_array_equal(choate, idata.posterior["theta"].values[..., 0])


def test_observed_data_equals_the_data(converted):
    _, idata = converted
    np.testing.assert_array_equal(idata.observed_data["y"].values, Y)


def test_latent_draws_are_carried_unchanged(converted):
    samples, idata = converted
    for name in ("mu", "tau", "theta_trans"):
        np.testing.assert_array_equal(idata.posterior[name].values, samples.draws[name].numpy())


def test_deterministic_site_is_recomputed_at_each_draw(converted):
    _, idata = converted
    post = idata.posterior
    expected = post["mu"].values[..., None] + post["tau"].values[..., None] * post["theta_trans"].values
    np.testing.assert_allclose(post["theta"].values, expected, rtol=1e-12, atol=1e-12)


def test_log_likelihood_is_pointwise_normal_log_density(converted):
    _, idata = converted
    theta = idata.posterior["theta"].values
    expected = stats.norm.logpdf(Y, loc=theta, scale=SIGMA)
    np.testing.assert_allclose(idata.log_likelihood["y"].values, expected, rtol=1e-10)


@pytest.mark.parametrize("vmappable", [True, False])
def test_replay_in_chunks_writes_every_draw_where_it_belongs(monkeypatch, vmappable):
    """Draws replayed in chunks of 7 (a partial last one; also one draw at a time, for
    models vmap declines) give the same deterministic sites and log-likelihoods as one
    chunk, each at its own chain and draw."""
    import bayesdl.inference.replay as replay_module

    samples = eight_schools_samples(chains=3, draws=10, seed=4)
    whole = convert(samples)
    monkeypatch.setattr(replay_module, "CHUNK", 7)
    if not vmappable:
        def no_vmap(function):
            def refuse(chunk):
                raise RuntimeError("vmap declined")
            return refuse
        monkeypatch.setattr(replay_module, "vmap", no_vmap)
    chunked = convert(samples)
    np.testing.assert_array_equal(chunked.posterior["theta"].values, whole.posterior["theta"].values)
    np.testing.assert_array_equal(chunked.log_likelihood["y"].values, whole.log_likelihood["y"].values)
    theta = chunked.posterior["theta"].values
    np.testing.assert_allclose(chunked.log_likelihood["y"].values,
                               stats.norm.logpdf(Y, loc=theta, scale=SIGMA), rtol=1e-10)


def test_run_info_is_kept_as_attributes(converted):
    _, idata = converted
    attrs = idata.posterior.attrs
    assert attrs["method"] == "test" and attrs["seed"] == 0 and attrs["model"] == "eight_schools"
    assert attrs["flag"] == 1  # bools become ints (NetCDF has no bool attribute)
    assert "ignored" not in attrs  # values NetCDF cannot store are dropped


def test_posterior_predictive_has_the_observed_shape_and_distribution():
    samples = eight_schools_samples(chains=2, draws=2000, seed=1)
    idata = convert(samples, predictive=True)
    assert "posterior_predictive" in idata.groups()
    y_rep = idata.posterior_predictive["y"]
    assert y_rep.dims == ("chain", "draw", "school")
    assert y_rep.shape == (2, 2000, 8)
    assert list(y_rep.coords["school"].values) == SCHOOLS
    # y_rep | theta ~ N(theta, sigma): standardised residuals are iid N(0, 1)
    z = ((y_rep.values - idata.posterior["theta"].values) / SIGMA).ravel()
    n = z.size
    assert abs(z.mean()) < 4 / math.sqrt(n)
    assert abs(z.std() - 1) < 4 / math.sqrt(2 * n)
    assert stats.kstest(z, "norm").pvalue > 1e-3
    # and they are fresh draws, not the observed values
    assert not np.any(np.all(y_rep.values == Y, axis=-1))


def test_centred_model_and_other_sizes():
    # centred: theta is a latent site with the same named dim
    g = torch.Generator().manual_seed(2)
    samples = Samples({"mu": torch.randn(1, 5, generator=g, dtype=torch.float64),
                       "tau": torch.rand(1, 5, generator=g, dtype=torch.float64),
                       "theta": torch.randn(1, 5, 8, generator=g, dtype=torch.float64)})
    idata = convert(samples, args={"centered": True})
    assert set(idata.posterior.data_vars) == {"mu", "tau", "theta"}
    assert list(idata.posterior["theta"].coords["school"].values) == SCHOOLS
    assert "sample_stats" not in idata.groups()  # no statistics, no empty group


def test_more_chains_than_draws_is_not_mistaken_for_a_transposed_array():
    """ArviZ warns that [1024, 100] arrays may be [draw, chain]; ours never are."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = convert(eight_schools_samples(chains=64, draws=5))
    assert idata.posterior.sizes["chain"] == 64 and idata.posterior.sizes["draw"] == 5
    assert not [w for w in caught if "More chains" in str(w.message)]


def test_data_with_other_sizes_gets_numbered_coords():
    idata = bayesdl.infer("eight_schools", {"J": 3, "y": [1.0, 2.0, 3.0], "sigma": [1.0, 1.0, 2.0]},
                          method="mh", chains=2, warmup=20, draws=10, progress=False)
    assert list(idata.posterior["theta"].coords["school"].values) == [0, 1, 2]
    assert idata.log_likelihood["y"].shape == (2, 10, 3)


# ----------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def saved_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "eight-mh"
    idata = bayesdl.infer("eight_schools", method="mh", chains=4, warmup=300, draws=300,
                          progress=False, predictive=True, out=run)
    return run, idata


def test_run_directory_holds_the_four_files_and_the_sampler_state(saved_run):
    run, _ = saved_run
    assert sorted(p.name for p in run.iterdir()) == ["kernel_state.pt", "posterior.nc",
                                                     "settings.json", "summary.csv", "trace.png"]
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".")]  # no temp dirs


def test_load_round_trips_what_infer_wrote(saved_run):
    run, idata = saved_run
    for loaded in (bayesdl.load(run), bayesdl.load(run / "posterior.nc"), bayesdl.load(str(run))):
        assert set(loaded.groups()) == set(idata.groups())
        for group in idata.groups():
            original, back = idata[group], loaded[group]
            assert set(back.data_vars) == set(original.data_vars), group
            for name in original.data_vars:
                assert back[name].dims == original[name].dims
                np.testing.assert_array_equal(back[name].values, original[name].values)
        assert list(loaded.posterior["theta"].coords["school"].values) == SCHOOLS
        assert loaded.posterior.attrs["method"] == "mh"
        assert loaded.posterior.attrs["model"] == "eight_schools"


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto:UserWarning")
def test_loo_and_waic_work(saved_run):
    _, idata = saved_run
    loo = az.loo(idata, pointwise=True)
    assert np.isfinite(loo.elpd_loo) and loo.loo_i.shape == (8,)
    # elpd_loo <= lppd (leaving a point out cannot fit it better) and 0 < p_loo < 8
    log_lik = idata.log_likelihood["y"].values.reshape(-1, 8)
    lppd = float(np.sum(np.log(np.mean(np.exp(log_lik), axis=0))))
    assert loo.elpd_loo <= lppd
    assert loo.p_loo == pytest.approx(lppd - loo.elpd_loo)
    assert 0 < loo.p_loo < 8
    # the published value for eight schools is elpd_loo = -30.7 (SE 1.3; ArviZ, posteriordb)
    assert -33 < loo.elpd_loo < -29
    waic = az.waic(idata)
    assert np.isfinite(waic.elpd_waic)


def test_load_errors(tmp_path):
    with pytest.raises(BayesdlError, match="no run at"):
        bayesdl.load(tmp_path / "missing")
    bad = tmp_path / "bad.nc"
    bad.write_text("not netcdf")
    with pytest.raises(BayesdlError, match="not a readable NetCDF posterior"):
        bayesdl.load(bad)
