"""Bayesian GAN: the batched networks against torch.nn, a short semi-supervised run, a few
iterations with z drawn by HMC / NUTS chains on p(z) (API and CLI), and the GMM / DP latent
priors recovering clusters on synthetic data. (That the HMC draws of z follow p(z) is checked
in test_latent_hmc.py.)"""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bayesdl.cli import main
from bayesdl.errors import BayesdlError
from bayesdl.models.bayesian_gan import BatchedMLP, GANSettings, choose_labelled, train_gan
from bayesdl.models.digits import digits
from bayesdl.models.latent_priors import DirichletProcessPrior, GaussianMixturePrior


def test_batched_mlp_equals_torch_sequential_for_every_sample():
    net = BatchedMLP([5, 7, 3])
    params = net.init(4, torch.Generator().manual_seed(0), torch.float64)
    x = torch.randn(4, 6, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    out = net(params, x)
    for j in range(4):
        seq = nn.Sequential(nn.Linear(5, 7), nn.LeakyReLU(0.2), nn.Linear(7, 3)).double()
        w1, b1, w2, b2 = torch.split(params[j], [35, 7, 21, 3])
        with torch.no_grad():
            seq[0].weight.copy_(w1.reshape(5, 7).T)
            seq[0].bias.copy_(b1)
            seq[2].weight.copy_(w2.reshape(7, 3).T)
            seq[2].bias.copy_(b2)
        assert torch.allclose(out[j], seq(x[j]), atol=1e-12)


def test_semi_supervised_bayesian_gan_learns_digits_from_100_labels():
    """150 SGHMC iterations with 100 labels: well above chance (10%) on held-out digits, and the
    generator samples stay distinct (a posterior, not a point)."""
    x, y = digits("train", dtype=torch.float32)
    xt, yt = digits("test", dtype=torch.float32)
    result = train_gan(x, GANSettings(num_classes=10, iterations=150), y, choose_labelled(y, 100, 10))
    assert result.accuracy(xt, yt) > 0.6
    assert not torch.allclose(result.generator[0], result.generator[1])
    images = result.sample(8)
    assert images.shape == (2, 8, 64) and bool(((images >= 0) & (images <= 1)).all())


@pytest.mark.parametrize("kind", ["gmm", "dp"])
def test_unsupervised_gan_runs_with_mixture_latent_priors(kind):
    x, _ = digits("train", dtype=torch.float32)
    result = train_gan(x[:200], GANSettings(latent_prior=kind, iterations=20))
    assert result.generator.shape[0] == 2 and bool(torch.isfinite(result.generator).all())


@pytest.fixture
def single_thread():
    """Tiny networks and 16 z chains: one torch thread (two are ~30x slower on a busy 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(("kind", "sampler"), [("gmm", "hmc"), ("dp", "nuts")])
def test_gan_runs_with_latent_draws_by_hmc(kind, sampler, single_thread):
    """z from persistent HMC / NUTS chains on p(z): the run is finite, the chains are warmed up
    (mean acceptance well above 0.5 in every record) and the z's differ from the exact run's."""
    x, _ = digits("train", dtype=torch.float32)
    settings = dict(latent_prior=kind, iterations=4, hidden=16, num_z=16)
    hmc = train_gan(x[:200], GANSettings(latent_sampler=sampler, latent_hmc_warmup=30,
                                         latent_hmc_steps=2, **settings))
    exact = train_gan(x[:200], GANSettings(**settings))
    assert bool(torch.isfinite(hmc.generator).all() & torch.isfinite(hmc.discriminator).all())
    assert all(record["latent_accept"] > 0.5 for record in hmc.history)
    assert "latent_accept" not in exact.history[0]
    assert not torch.allclose(hmc.generator, exact.generator)


def test_cli_trains_with_hmc_latent_sampler(tmp_path, single_thread):
    out = tmp_path / "gan"
    assert main(["train", "bayesian_gan", "--arg", "latent_prior=gmm", "--arg", "latent_sampler=hmc",
                 "--arg", "latent_hmc_warmup=20", "--arg", "iterations=3", "--arg", "hidden=8",
                 "--arg", "num_z=4", "--arg", "num_images=2", "--out", str(out)]) == 0
    record = json.loads((out / "settings.json").read_text())["settings"]
    assert record["latent_sampler"] == "hmc" and record["latent_hmc_warmup"] == 20
    assert "latent_accept" in json.loads((out / "metrics.json").read_text())["history"][0]


def three_clusters() -> tuple[torch.Tensor, torch.Tensor]:
    centres = torch.tensor([[-4.0, 0.0], [4.0, 0.0], [0.0, 5.0]])
    g = torch.Generator().manual_seed(0)
    which = torch.randint(0, 3, (600,), generator=g)
    return centres[which] + 0.5 * torch.randn(600, 2, generator=g), centres


def _matched_error(loc: torch.Tensor, weights: torch.Tensor, centres: torch.Tensor) -> float:
    """Largest distance from a true centre to the nearest component with weight > 10%, and
    from such a component to the nearest true centre."""
    distances = torch.cdist(centres, loc[weights > 0.1])
    return float(max(distances.min(-1).values.max(), distances.min(0).values.max()))


def distinct_clusters(loc: torch.Tensor, weights: torch.Tensor, radius: float = 1.0) -> int:
    """Components with weight > 5%, those closer than ``radius`` counted once (a mixture's
    likelihood is flat along splitting one cluster between two equal components)."""
    used = loc[weights > 0.05]
    close = torch.cdist(used, used) < radius
    count, seen = 0, torch.zeros(len(used), dtype=torch.bool)
    for i in range(len(used)):
        if not seen[i]:
            count += 1
            seen |= close[i]
    return count


def test_gmm_prior_recovers_three_clusters():
    points, centres = three_clusters()
    prior = GaussianMixturePrior(2, num_components=3, init_spread=3.0, seed=1)
    prior.fit(points, steps=400, lr=0.05)
    weights = prior.weights().detach()
    assert distinct_clusters(prior.loc.detach(), weights) == 3
    assert _matched_error(prior.loc.detach(), weights, centres) < 0.3


def test_dp_prior_recovers_the_number_and_place_of_clusters():
    """Truncation 10, alpha 0.5, seeds 0-2: the components with weight > 5% sit at three distinct
    places, those with weight > 10% each within 0.3 of a true centre, and the smallest 5
    components carry < 15% in all."""
    points, centres = three_clusters()
    for seed in range(3):
        prior = DirichletProcessPrior(2, alpha=0.5, truncation=10, seed=seed)
        prior.fit(points, steps=1000, lr=0.05)
        weights = prior.weights().detach()
        assert distinct_clusters(prior.loc.detach(), weights) == 3
        assert float(weights.sort(descending=True).values[5:].sum()) < 0.15
        assert _matched_error(prior.loc.detach(), weights, centres) < 0.3


def test_bad_input_is_a_bayesdl_error():
    with pytest.raises(BayesdlError, match="labels"):
        train_gan(torch.rand(20, 64), GANSettings(num_classes=10, iterations=1))
    with pytest.raises(BayesdlError, match="finite"):
        train_gan(torch.full((20, 64), float("nan")), GANSettings(iterations=1))
    with pytest.raises(BayesdlError, match="latent_sampler"):
        train_gan(torch.rand(20, 64), GANSettings(iterations=1, latent_sampler="gibbs"))
