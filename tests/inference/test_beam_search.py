"""Stochastic beam search against exact enumeration of a tiny sequence model.

The model: a 3-token vocabulary (0, 1 and EOS = 2), sequences of at most 3 tokens,
next-token probabilities from a small fixed random recurrent net; its 15 complete
sequences are enumerated with their exact probabilities. Checked: the first sequence
of each search is a draw from p (chi-square), inclusion frequencies in a beam of k
match exact sampling without replacement (|z| <= 4), and the weighted estimator of
E_p[f(Y)] is unbiased (|mean - exact| <= 4 standard errors over 20,000 searches)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayesdl.errors import BayesdlError
from bayesdl.inference.beam_search import stochastic_beam_search

VOCAB, EOS, MAX_LEN = 3, 2, 3
S = 20_000


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


class TinyRNN:
    """Next-token log-probabilities from a fixed random recurrent net (batched)."""

    def __init__(self, seed: int = 0, hidden: int = 4):
        g = torch.Generator().manual_seed(seed)
        self.embed = torch.randn(VOCAB, hidden, generator=g, dtype=torch.float64)
        self.rec = torch.randn(hidden, hidden, generator=g, dtype=torch.float64) * 0.8
        self.out = torch.randn(hidden, VOCAB, generator=g, dtype=torch.float64) * 1.5
        self.calls = 0

    def __call__(self, prefixes: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        h = torch.zeros(prefixes.shape[0], self.embed.shape[1], dtype=torch.float64)
        for t in range(prefixes.shape[1]):
            h = torch.tanh(self.embed[prefixes[:, t]] + h @ self.rec)
        return torch.log_softmax(h @ self.out, dim=-1)


def enumerate_sequences(model: TinyRNN) -> dict[tuple[int, ...], float]:
    """Every complete sequence (ends in EOS or has MAX_LEN tokens) and its probability."""
    out = {}
    for length in range(1, MAX_LEN + 1):
        for seq in itertools.product(range(VOCAB), repeat=length):
            if EOS in seq[:-1] or (length < MAX_LEN and seq[-1] != EOS):
                continue
            log_p = 0.0
            for t in range(length):
                prefix = torch.tensor([seq[:t]], dtype=torch.int64).reshape(1, t)
                log_p += float(model(prefix)[0, seq[t]])
            out[seq] = math.exp(log_p)
    return out


def exact_inclusion(p: dict[tuple[int, ...], float], k: int) -> dict[tuple[int, ...], float]:
    items = list(p)
    inclusion = dict.fromkeys(items, 0.0)
    for tup in itertools.permutations(items, k):
        prob, left = 1.0, 1.0
        for y in tup:
            prob *= p[y] / left
            left -= p[y]
        for y in tup:
            inclusion[y] += prob
    return inclusion


def _key(row: torch.Tensor, length: int) -> tuple[int, ...]:
    return tuple(row[:length].tolist())


@pytest.fixture(scope="module")
def model_and_truth():
    model = TinyRNN()
    truth = enumerate_sequences(model)
    assert len(truth) == 15 and abs(sum(truth.values()) - 1) < 1e-12
    return model, truth


@pytest.fixture(scope="module")
def searches(model_and_truth):
    model, _ = model_and_truth
    return stochastic_beam_search(model, beam_size=3, max_length=MAX_LEN, eos=EOS, num_searches=S,
                                  generator=torch.Generator().manual_seed(0))


def _sequences(result, j: int) -> list[tuple[int, ...]]:
    return [_key(r, n) for r, n in zip(result.sequences[:, j], result.lengths[:, j].tolist(),
                                       strict=True)]


def test_beams_hold_distinct_complete_sequences_sorted_by_key(searches, model_and_truth):
    _, truth = model_and_truth
    assert searches.sequences.shape == (S, 3, MAX_LEN)
    assert (searches.keys[:, :-1] >= searches.keys[:, 1:]).all()
    assert (searches.keys[:, -1] >= searches.threshold).all()
    for i in range(0, S, 997):
        seqs = [_key(searches.sequences[i, j], int(searches.lengths[i, j])) for j in range(3)]
        assert len(set(seqs)) == 3 and all(s in truth for s in seqs)
        np.testing.assert_allclose(searches.log_probs[i].exp().numpy(), [truth[s] for s in seqs])


def test_first_sequence_is_an_exact_draw(searches, model_and_truth):
    _, truth = model_and_truth
    first = _sequences(searches, 0)
    items = list(truth)
    counts = np.array([first.count(y) for y in items])
    expected = np.array([truth[y] for y in items]) * S
    assert stats.chisquare(counts, expected).pvalue > 1e-3


def test_inclusion_frequencies_match_sampling_without_replacement(searches, model_and_truth):
    _, truth = model_and_truth
    exact = exact_inclusion(truth, 3)
    seen: dict[tuple[int, ...], int] = dict.fromkeys(truth, 0)
    for j in range(3):
        for y in _sequences(searches, j):
            seen[y] += 1
    for y, q in exact.items():
        z = (seen[y] / S - q) / math.sqrt(q * (1 - q) / S)
        assert abs(z) < 4, (y, seen[y] / S, q)


def test_weighted_estimator_is_unbiased(searches, model_and_truth):
    _, truth = model_and_truth
    rng = np.random.default_rng(1)
    f = {y: float(v) for y, v in zip(truth, rng.normal(size=len(truth)) * 3 + 1, strict=True)}
    exact = sum(truth[y] * f[y] for y in truth)
    values = torch.tensor([[f[y] for y in _sequences(searches, j)] for j in range(3)],
                          dtype=torch.float64).T
    estimates = searches.estimate(values)
    z = (float(estimates.mean()) - exact) / (float(estimates.std()) / math.sqrt(S))
    assert abs(z) < 4, z
    # the normalised estimator is consistent (biased for small k) and far less variable
    normalised = searches.estimate(values, normalised=True)
    assert float(normalised.std()) < float(estimates.std())
    assert abs(float(normalised.mean()) - exact) < 0.1 * abs(exact) + 0.1


def test_beam_larger_than_the_support_returns_everything_with_weight_p(model_and_truth):
    model, truth = model_and_truth
    result = stochastic_beam_search(model, beam_size=20, max_length=MAX_LEN, eos=EOS, num_searches=2,
                                    generator=torch.Generator().manual_seed(3))
    assert torch.isinf(result.threshold).all()
    valid = torch.isfinite(result.log_weights)
    assert valid.sum(-1).tolist() == [15, 15]
    torch.testing.assert_close(result.log_weights[valid], result.log_probs[valid])
    torch.testing.assert_close(result.log_weights.exp().sum(-1), torch.ones(2, dtype=torch.float64))


def test_fixed_length_without_eos_and_one_model_call_per_step():
    model = TinyRNN(seed=4)
    result = stochastic_beam_search(model, beam_size=4, max_length=5, num_searches=7,
                                    generator=torch.Generator().manual_seed(5))
    assert model.calls == 5
    assert result.sequences.shape == (7, 4, 5) and (result.lengths == 5).all()


def test_bad_input():
    with pytest.raises(BayesdlError, match="beam_size"):
        stochastic_beam_search(TinyRNN(), beam_size=0, max_length=3)
    with pytest.raises(BayesdlError, match="eos"):
        stochastic_beam_search(TinyRNN(), beam_size=2, max_length=3, eos=7)
    with pytest.raises(BayesdlError, match="shape"):
        stochastic_beam_search(lambda p: torch.zeros(3), beam_size=2, max_length=3)
