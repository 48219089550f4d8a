"""Exact answers for small Potts models by enumerating every labelling, and the
chi-square comparison of independent draws with them (shared by the SW, Gibbs and
composition tests).

Draws are the final states of many independent chains (one batched run), so they are
independent and a plain chi-square test applies; bins with expected count below 5
are pooled into one.
"""

from __future__ import annotations

import itertools

import numpy as np
from scipy import stats


def all_labellings(num_sites: int, q: int) -> np.ndarray:
    """``[q^N, N]``: every labelling, in lexicographic order."""
    return np.array(list(itertools.product(range(q), repeat=num_sites)), dtype=np.int64)


def log_weights(states: np.ndarray, edges: np.ndarray, beta: np.ndarray | float,
                field: np.ndarray | None = None) -> np.ndarray:
    """Unnormalised log probability of every state: Potts couplings plus a field ``[N, q]``."""
    same = states[:, edges[:, 0]] == states[:, edges[:, 1]]
    out = (same * np.broadcast_to(beta, (edges.shape[0],))).sum(1)
    if field is not None:
        out = out + field[np.arange(states.shape[1]), states].sum(1)
    return out


def probabilities(log_w: np.ndarray) -> np.ndarray:
    w = np.exp(log_w - log_w.max())
    return w / w.sum()


def chi_square_pvalue(observed_codes: np.ndarray, expected_probs: np.ndarray) -> float:
    """p-value of ``observed_codes`` (category index per draw) against ``expected_probs``."""
    n = observed_codes.shape[0]
    counts = np.bincount(observed_codes, minlength=expected_probs.shape[0]).astype(float)
    expected = n * expected_probs
    small = expected < 5
    obs = np.append(counts[~small], counts[small].sum())
    exp = np.append(expected[~small], expected[small].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    return float(stats.chisquare(obs, exp).pvalue)


def state_codes(states: np.ndarray, q: int) -> np.ndarray:
    """Index of each labelling ``[S, N]`` in ``all_labellings`` order."""
    powers = q ** np.arange(states.shape[1] - 1, -1, -1)
    return states @ powers
