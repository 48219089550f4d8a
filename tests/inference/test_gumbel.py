"""Gumbel tricks against exact answers: Gumbel-max frequencies against softmax
(chi-square), the Concrete relaxation against torch.distributions'
RelaxedOneHotCategorical (two-sample KS per coordinate), Gumbel-top-k ordered-tuple
frequencies and inclusion probabilities against exact sequential sampling without
replacement, enumerated; gradients by gradcheck in float64. Fixed seeds; chi-square
and KS reject below p = 1e-3, frequencies use |z| <= 4 binomial standard errors."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayesdl.errors import BayesdlError
from bayesdl.inference.gumbel import (
    gumbel_max,
    gumbel_noise,
    gumbel_softmax,
    gumbel_top_k,
    log_inclusion_probability,
    truncated_gumbel,
)

P_MIN = 1e-3
LOGITS = torch.tensor([1.0, -0.5, 0.3, 2.0, -1.5], dtype=torch.float64)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def exact_ordered_probabilities(p: np.ndarray, k: int) -> dict[tuple[int, ...], float]:
    """P(first k draws without replacement are the tuple), sequential sampling."""
    out = {}
    for tup in itertools.permutations(range(len(p)), k):
        prob, left = 1.0, 1.0
        for i in tup:
            prob *= p[i] / left
            left -= p[i]
        out[tup] = prob
    return out


def test_gumbel_noise_is_standard_gumbel():
    g = gumbel_noise((20_000,), _gen(0)).numpy()
    assert stats.kstest(g, stats.gumbel_r().cdf).pvalue > P_MIN


def test_gumbel_max_frequencies_match_softmax():
    n = 40_000
    draws = gumbel_max(LOGITS.expand(n, -1), generator=_gen(1))
    counts = np.bincount(draws.numpy(), minlength=5)
    expected = torch.softmax(LOGITS, 0).numpy() * n
    assert stats.chisquare(counts, expected).pvalue > P_MIN


def test_gumbel_softmax_matches_relaxed_one_hot_categorical():
    n, tau = 20_000, 0.7
    ours = gumbel_softmax(LOGITS.expand(n, -1), tau, generator=_gen(2)).numpy()
    torch.manual_seed(3)
    ref = torch.distributions.RelaxedOneHotCategorical(torch.tensor(tau, dtype=torch.float64),
                                                       logits=LOGITS).sample((n,)).numpy()
    np.testing.assert_allclose(ours.sum(-1), 1.0, atol=1e-12)
    for i in range(5):
        assert stats.ks_2samp(ours[:, i], ref[:, i]).pvalue > P_MIN, i
    # as tau -> 0 the relaxed sample approaches the one-hot Gumbel-max sample
    g = gumbel_noise((200, 5), _gen(4))
    cold = gumbel_softmax(LOGITS.expand(200, -1), 1e-3, gumbel=g)
    assert torch.equal(cold.argmax(-1), gumbel_max(LOGITS.expand(200, -1), gumbel=g))
    assert (cold.max(-1).values > 0.999).all()


def test_straight_through_is_one_hot_forward_and_relaxed_backward():
    logits = LOGITS.clone().requires_grad_(True)
    g = gumbel_noise((5,), _gen(5))
    hard = gumbel_softmax(logits, 0.5, hard=True, gumbel=g)
    soft = gumbel_softmax(logits, 0.5, hard=False, gumbel=g)
    assert hard.detach().sum() == 1 and set(hard.detach().unique().tolist()) == {0.0, 1.0}
    weights = torch.arange(5, dtype=torch.float64)
    (g_hard,) = torch.autograd.grad((hard * weights).sum(), logits)
    logits2 = LOGITS.clone().requires_grad_(True)
    (g_soft,) = torch.autograd.grad((gumbel_softmax(logits2, 0.5, gumbel=g) * weights).sum(), logits2)
    torch.testing.assert_close(g_hard, g_soft)
    assert soft.argmax() == hard.argmax()


def test_gradcheck_gumbel_softmax_float64():
    g = gumbel_noise((3, 5), _gen(6))
    logits = torch.randn(3, 5, dtype=torch.float64, generator=_gen(7), requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: gumbel_softmax(x, 0.8, gumbel=g), (logits,))
    # (hard=True is not checked here: its gradient is by design not that of its value)


def test_gumbel_top_k_ordered_tuples_match_sampling_without_replacement():
    n, k = 60_000, 3
    p = torch.softmax(LOGITS, 0).numpy()
    idx, keys = gumbel_top_k(LOGITS.expand(n, -1), k, generator=_gen(8))
    assert (keys[:, :-1] >= keys[:, 1:]).all()
    exact = exact_ordered_probabilities(p, k)
    observed = dict.fromkeys(exact, 0)
    for row in map(tuple, idx.numpy().tolist()):
        observed[row] += 1
    tuples = list(exact)
    expected = np.array([exact[t] for t in tuples]) * n
    counts = np.array([observed[t] for t in tuples])
    # pool the rarest tuples so every expected count is >= 5
    rare = expected < 5
    if rare.any():
        expected = np.append(expected[~rare], expected[rare].sum())
        counts = np.append(counts[~rare], counts[rare].sum())
    assert stats.chisquare(counts, expected).pvalue > P_MIN
    # inclusion probabilities: P(i among the k)
    inclusion = np.zeros(5)
    for tup, prob in exact.items():
        inclusion[list(tup)] += prob
    freq = np.array([(idx == i).any(-1).double().mean().item() for i in range(5)])
    se = np.sqrt(inclusion * (1 - inclusion) / n)
    assert np.all(np.abs(freq - inclusion) <= 4 * se + 1e-12), (freq, inclusion)


def test_priority_sampling_estimator_is_unbiased():
    # sum over the top-k of p_i / P(G_i > kappa) f_i estimates sum_i p_i f_i without bias
    n, k = 40_000, 2
    log_p = torch.log_softmax(LOGITS, 0)
    f = torch.tensor([3.0, -1.0, 0.5, 2.0, 7.0], dtype=torch.float64)
    idx, keys = gumbel_top_k(log_p.expand(n, -1), k + 1, generator=_gen(9))
    kappa = keys[:, k:]
    chosen = idx[:, :k]
    w = torch.exp(log_p[chosen] - log_inclusion_probability(log_p[chosen], kappa))
    est = (w * f[chosen]).sum(-1)
    exact = float((log_p.exp() * f).sum())
    z = (float(est.mean()) - exact) / (float(est.std()) / math.sqrt(n))
    assert abs(z) < 4, z


def test_truncated_gumbel_has_the_conditioned_maximum_and_law():
    n = 20_000
    loc = torch.tensor([0.5, -1.0, 1.5], dtype=torch.float64)
    top = torch.full((n,), 2.0, dtype=torch.float64)
    out = truncated_gumbel(loc.expand(n, -1), top, gumbel_noise((n, 3), _gen(10)))
    torch.testing.assert_close(out.max(-1).values, top)
    # if T ~ Gumbel(logsumexp(loc)) the conditioned keys are independent Gumbel(loc)
    t = torch.logsumexp(loc, 0) + gumbel_noise((n,), _gen(11))
    keys = truncated_gumbel(loc.expand(n, -1), t, gumbel_noise((n, 3), _gen(12)))
    for i in range(3):
        assert stats.kstest(keys[:, i].numpy(), stats.gumbel_r(loc=float(loc[i])).cdf).pvalue > P_MIN


def test_bad_input_is_a_bayesdl_error():
    with pytest.raises(BayesdlError, match="tau"):
        gumbel_softmax(LOGITS, 0.0)
    with pytest.raises(BayesdlError, match="k must be"):
        gumbel_top_k(LOGITS, 6)
    with pytest.raises(BayesdlError, match="NaN"):
        gumbel_max(torch.tensor([0.0, math.nan]))
    with pytest.raises(BayesdlError, match="shape"):
        gumbel_max(LOGITS, gumbel=torch.zeros(4, dtype=torch.float64))
