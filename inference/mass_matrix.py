"""Metric estimation in warm-up: Welford moments per chain, regularised as Stan does.

Diagonal: variances; dense: covariances (NUTS/HMC metrics, and the MH, MALA and slice
scales). Both are shrunk towards 1e-3 * I with weight
5 / (n + 5), Stan's rule, so a short window cannot give a singular metric.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from bayesdl.inference.integrator import Metric, dense_metric, diagonal_metric


class Welford(NamedTuple):
    count: int
    mean: torch.Tensor  # [C, D]
    m2: torch.Tensor  # [C, D] (diagonal) or [C, D, D] (dense)


def welford_start(position: torch.Tensor, dense: bool) -> Welford:
    chains, dim = position.shape
    m2 = position.new_zeros((chains, dim, dim) if dense else (chains, dim))
    return Welford(0, torch.zeros_like(position), m2)


def welford_update(state: Welford, position: torch.Tensor) -> Welford:
    count = state.count + 1
    delta = position - state.mean
    mean = state.mean + delta / count
    if state.m2.dim() == 3:
        m2 = state.m2 + delta.unsqueeze(-1) * (position - mean).unsqueeze(-2)
    else:
        m2 = state.m2 + delta * (position - mean)
    return Welford(count, mean, m2)


def welford_covariance(state: Welford) -> torch.Tensor:
    """The window's (co)variance shrunk towards 1e-3 (times I) with weight 5 / (n + 5)."""
    n = state.count
    covariance = state.m2 / max(n - 1, 1)
    shrink = 5.0 / (n + 5.0)
    if covariance.dim() == 3:
        eye = torch.eye(covariance.shape[-1], dtype=covariance.dtype, device=covariance.device)
        return (n / (n + 5.0)) * covariance + 1e-3 * shrink * eye
    return (n / (n + 5.0)) * covariance + 1e-3 * shrink


def welford_metric(state: Welford) -> Metric:
    """The regularised estimate as a metric (inverse mass = posterior covariance)."""
    covariance = welford_covariance(state)
    if covariance.dim() == 3:
        return dense_metric(0.5 * (covariance + covariance.transpose(-1, -2)))
    return diagonal_metric(covariance)
