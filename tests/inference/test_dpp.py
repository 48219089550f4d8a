"""DPPs against exact enumeration: on 6 items the frequencies of all 64 subsets (DPP)
and of the 20 subsets of size 3 (k-DPP) from 20,000 batched exact draws match
det-probabilities by chi-square (p > 1e-3); inclusion probabilities det(K_A) on 8
items equal sums of subset probabilities; kernel conversions invert each other; the
DPP mini-batch estimate of a data sum is unbiased and, on clustered data, less
variable than uniform mini-batches (measured)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from scipy import stats

from bayesdl.errors import BayesdlError
from bayesdl.inference.dpp import (
    DPPMiniBatchSampler,
    MiniBatch,
    UniformMiniBatchSampler,
    inclusion_probability,
    k_dpp_inclusion_probabilities,
    l_ensemble,
    log_probability,
    marginal_kernel,
    sample_dpp,
    scale_observed,
    subsample_data,
)

D = torch.float64
S = 20_000


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def random_l(n: int, seed: int, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    b = torch.randn(n, n + 2, generator=g, dtype=D)
    return scale * b @ b.T / n


def subsets(n: int, size: int | None = None):
    sizes = range(n + 1) if size is None else [size]
    for k in sizes:
        yield from itertools.combinations(range(n), k)


def _chi_square(masks: torch.Tensor, probs: dict) -> float:
    keys = list(probs)
    index = {key: i for i, key in enumerate(keys)}
    counts = np.zeros(len(keys))
    for row in masks.numpy():
        counts[index[tuple(np.flatnonzero(row))]] += 1
    expected = np.array([probs[key] for key in keys]) * masks.shape[0]
    rare = expected < 5
    if rare.any():
        counts = np.append(counts[~rare], counts[rare].sum())
        expected = np.append(expected[~rare], expected[rare].sum())
    return stats.chisquare(counts, expected).pvalue


def test_conversions_round_trip_and_match_definitions():
    L = random_l(6, 0)
    K = marginal_kernel(L)
    eye = torch.eye(6, dtype=D)
    torch.testing.assert_close(K, L @ torch.linalg.inv(L + eye))
    torch.testing.assert_close(l_ensemble(K), L)
    with pytest.raises(BayesdlError, match="eigenvalue"):
        l_ensemble(eye)
    with pytest.raises(BayesdlError, match="symmetric"):
        marginal_kernel(torch.triu(L))
    with pytest.raises(BayesdlError, match="semi-definite"):
        marginal_kernel(-L)


def test_subset_probabilities_sum_to_one_and_inclusion_is_det_k():
    n = 8
    L = random_l(n, 1)
    K = marginal_kernel(L)
    probs = {a: float(log_probability(L, list(a)).exp()) for a in subsets(n)}
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-10)
    for a in [(), (0,), (3,), (1, 5), (0, 2, 7), (1, 2, 3, 6)]:
        by_enumeration = sum(p for y, p in probs.items() if set(a) <= set(y))
        assert float(inclusion_probability(K, list(a))) == pytest.approx(by_enumeration, abs=1e-10)


def test_dpp_sample_frequencies_match_enumeration():
    n = 6
    L = random_l(n, 2)
    probs = {a: float(log_probability(L, list(a)).exp()) for a in subsets(n)}
    masks = sample_dpp(L, S, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (S, n)
    assert _chi_square(masks, probs) > 1e-3
    # the expected size is trace(K)
    size = masks.sum(1).double()
    k_trace = float(torch.trace(marginal_kernel(L)))
    assert abs(float(size.mean()) - k_trace) < 4 * float(size.std()) / math.sqrt(S)


def test_k_dpp_sample_frequencies_match_enumeration():
    n, k = 6, 3
    L = random_l(n, 3)
    weights = {a: float(torch.linalg.det(L[list(a)][:, list(a)])) for a in subsets(n, k)}
    total = sum(weights.values())
    probs = {a: w / total for a, w in weights.items()}
    masks = sample_dpp(L, S, k=k, generator=torch.Generator().manual_seed(1))
    assert (masks.sum(1) == k).all()
    assert _chi_square(masks, probs) > 1e-3


def test_k_dpp_inclusion_probabilities_match_enumeration():
    n, k = 8, 3
    L = random_l(n, 4)
    weights = {a: float(torch.linalg.det(L[list(a)][:, list(a)])) for a in subsets(n, k)}
    total = sum(weights.values())
    exact = np.zeros(n)
    for a, w in weights.items():
        exact[list(a)] += w / total
    values, vectors = torch.linalg.eigh(L)
    got = k_dpp_inclusion_probabilities(values, vectors, k).numpy()
    np.testing.assert_allclose(got, exact, atol=1e-10)
    assert got.sum() == pytest.approx(k)


def test_sampling_errors():
    L = random_l(4, 5)
    with pytest.raises(BayesdlError, match="k must be"):
        sample_dpp(L, 2, k=5)
    low_rank = torch.ones(4, 4, dtype=D)
    with pytest.raises(BayesdlError, match="rank"):
        sample_dpp(low_rank, 2, k=2)
    with pytest.raises(BayesdlError, match="batch_size"):
        DPPMiniBatchSampler(torch.zeros(5, 2, dtype=D), 6)
    with pytest.raises(BayesdlError, match="kernel"):
        DPPMiniBatchSampler(torch.randn(5, 2, dtype=D), 2, kernel="cosine")


def clustered_data(n_per: tuple[int, ...] = (120, 60, 15, 5), seed: int = 0):
    """Features in tight clusters of unequal sizes; per-point values that depend on the cluster."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0], [6.0, 6.0]], dtype=D)
    level = torch.tensor([1.0, -3.0, 8.0, 20.0], dtype=D)
    features, values = [], []
    for c, count in enumerate(n_per):
        features.append(centres[c] + 0.3 * torch.randn(count, 2, generator=g, dtype=D))
        values.append(level[c] + 0.3 * torch.randn(count, generator=g, dtype=D))
    return torch.cat(features), torch.cat(values)


def test_dpp_minibatch_estimate_is_unbiased_and_less_variable_than_uniform():
    features, values = clustered_data()
    n, batch = features.shape[0], 8
    dpp = DPPMiniBatchSampler(features, batch, lengthscale=1.0)
    draws = dpp.sample_many(4000, generator=torch.Generator().manual_seed(6))
    assert draws.indices.shape == (4000, batch)
    assert all(len(set(row)) == batch for row in draws.indices[:200].tolist())
    estimates = (draws.weights * values[draws.indices]).sum(1)
    exact = float(values.sum())
    z = (float(estimates.mean()) - exact) / (float(estimates.std()) / math.sqrt(4000))
    assert abs(z) < 4, z
    uniform = UniformMiniBatchSampler(n, batch)
    g = torch.Generator().manual_seed(7)
    uni = torch.stack([(lambda b: (b.weights * values[b.indices]).sum())(uniform.sample(g))
                       for _ in range(5000)])
    assert abs(float(uni.mean()) - exact) < 4 * float(uni.std()) / math.sqrt(5000)
    # diversity pays on clustered data: every cluster is represented far more often
    assert float(estimates.var()) < 0.5 * float(uni.var()), (float(estimates.var()), float(uni.var()))


def test_minibatch_helpers_give_an_unbiased_log_likelihood_in_pyro():
    features, values = clustered_data()
    n = features.shape[0]

    def model(x, y):
        w = pyro.sample("w", dist.Normal(torch.zeros(2, dtype=D), 1.0).to_event(1))
        with pyro.plate("data", x.shape[0]):
            pyro.sample("y", dist.Normal(x @ w, 1.0), obs=y)

    data = {"x": features, "y": values}
    w = torch.tensor([0.5, -0.2], dtype=D)
    full = poutine.trace(poutine.condition(model, {"w": w})).get_trace(**data)
    full.compute_log_prob()
    exact = float(full.nodes["y"]["log_prob_sum"])
    prior = float(full.nodes["w"]["log_prob_sum"])
    sampler = DPPMiniBatchSampler(features, 10, lengthscale=1.0)
    g = torch.Generator().manual_seed(8)
    estimates = []
    def guide(x, y):  # SVI runs the model replayed against the guide's draw of w
        pyro.sample("w", dist.Delta(w).to_event(1))

    for _ in range(300):
        batch: MiniBatch = sampler.sample(g)
        kwargs = subsample_data(data, batch, n)
        guide_trace = poutine.trace(guide).get_trace(**kwargs)
        scaled = scale_observed(poutine.replay(model, trace=guide_trace), batch.weights)
        trace = poutine.trace(scaled).get_trace(**kwargs)
        trace.compute_log_prob()
        assert float(trace.nodes["w"]["log_prob_sum"]) == pytest.approx(prior)  # priors unscaled
        estimates.append(float(trace.nodes["y"]["log_prob_sum"]))
    estimates = np.array(estimates)
    assert abs(estimates.mean() - exact) < 4 * estimates.std(ddof=1) / math.sqrt(len(estimates))
