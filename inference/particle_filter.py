"""The bootstrap particle filter (Gordon, Salmond & Smith 1993) for state-space models.

The model is three distributions: ``initial()`` of the first state ``x_0``,
``transition(x_{t-1}, t)`` of ``x_t`` and ``observation(x_t, t)`` of ``y_t``. Particles
are propagated through the transition (the bootstrap proposal), weighted by the
observation density, and resampled (systematic by default) when the effective sample
size falls below ``ess_threshold * N``. The filter returns the filtering means and
variances ``E[x_t | y_0..t]`` and the log marginal likelihood ``log p(y_0..T-1)``,
whose exponential is an unbiased estimate. ``R`` independent runs of ``N`` particles
are one ``[R, N, D]`` tensor, so there is no Python loop over runs or particles, only
over time. The runs filter one shared series (:func:`bootstrap_particle_filter`) or one
series each (:func:`filter_series`, e.g. a batch of tracks). Written by hand: Pyro's
``SMCFilter`` runs one filter through poutines per step and has no batched independent runs.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import pyro
import torch

from bayesdl.errors import BayesdlError

RESAMPLERS = ("systematic", "stratified", "multinomial")


class StateSpaceModel(NamedTuple):
    """``initial() -> Distribution`` over ``x_0`` (event ``[D]``);
    ``transition(x [R, N, D], t) -> Distribution`` over ``x_t`` (batch ``[R, N]``);
    ``observation(x [R, N, D], t) -> Distribution`` over ``y_t`` (batch ``[R, N]``)."""

    initial: Callable[[], torch.distributions.Distribution]
    transition: Callable[[torch.Tensor, int], torch.distributions.Distribution]
    observation: Callable[[torch.Tensor, int], torch.distributions.Distribution]


class FilterResult(NamedTuple):
    """Per run ``r`` and time ``t``: filtering ``mean [R, T, D]`` and ``variance
    [R, T, D]``, ``ess [R, T]`` before resampling, ``log_likelihood_increments [R, T]``
    (``log p(y_t | y_0..t-1)``), their sum ``log_marginal_likelihood [R]``, and
    ``resampled [R, T]`` (bool)."""

    mean: torch.Tensor
    variance: torch.Tensor
    ess: torch.Tensor
    log_likelihood_increments: torch.Tensor
    log_marginal_likelihood: torch.Tensor
    resampled: torch.Tensor


def resample(log_weights: torch.Tensor, method: str = "systematic",
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Ancestor indices ``[R, N]`` for normalised ``log_weights [R, N]``.

    Systematic: one uniform per run, ``(i + u) / N``; stratified: one per particle,
    ``(i + u_i) / N``; multinomial: ``N`` independent uniforms (sorted positions are
    not needed: ``searchsorted`` handles any order).
    """
    runs, n = log_weights.shape
    cdf = torch.cumsum(log_weights.exp(), dim=-1)
    cdf = cdf / cdf[:, -1:]
    grid = torch.arange(n, dtype=log_weights.dtype, device=log_weights.device)
    if method == "systematic":  # offspring counts from the sorted grid, in O(N)
        u = torch.rand((runs, 1), generator=generator, dtype=log_weights.dtype,
                       device=log_weights.device)
        edges = torch.floor(n * torch.cat([torch.zeros_like(u), cdf], dim=1) + u).clamp(max=n)
        edges[:, -1] = n
        counts = (edges[:, 1:] - edges[:, :-1]).long().reshape(-1)
        flat = torch.repeat_interleave(torch.arange(n, device=cdf.device).repeat(runs), counts,
                                       output_size=runs * n)
        return flat.reshape(runs, n)
    if method == "stratified":
        positions = (grid + torch.rand((runs, n), generator=generator, dtype=log_weights.dtype,
                                       device=log_weights.device)) / n
    elif method == "multinomial":
        positions = torch.rand((runs, n), generator=generator, dtype=log_weights.dtype,
                               device=log_weights.device)
    else:
        raise BayesdlError(f"unknown resampling {method!r}; choose one of {', '.join(RESAMPLERS)}")
    return torch.searchsorted(cdf, positions.contiguous()).clamp(max=n - 1)


def bootstrap_particle_filter(
    model: StateSpaceModel,
    observations: torch.Tensor,
    num_particles: int,
    num_runs: int = 1,
    seed: int = 0,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
) -> FilterResult:
    """Filter ``observations [T, ...]`` with ``num_runs`` independent bootstrap filters.

    Random numbers come from torch's generator inside a private fork seeded ``seed``
    (the global generator is left as it was). ``ess_threshold=1`` resamples at every step.
    """
    if resampling not in RESAMPLERS:
        raise BayesdlError(f"unknown resampling {resampling!r}; choose one of {', '.join(RESAMPLERS)}")
    if num_particles < 1 or num_runs < 1:
        raise BayesdlError("num_particles and num_runs must be >= 1")
    if not 0 <= ess_threshold <= 1:
        raise BayesdlError(f"ess_threshold must be in [0, 1], got {ess_threshold}")
    if observations.dim() < 1 or observations.shape[0] < 1:
        raise BayesdlError("observations must be [T, ...] with T >= 1")
    if torch.isnan(observations).any():
        raise BayesdlError("observations contain NaN")
    steps, n, runs = observations.shape[0], num_particles, num_runs
    means, variances, esss, increments, resampled = [], [], [], [], []
    # argument validation of torch.distributions costs more than the filter's arithmetic
    with torch.random.fork_rng(devices=[observations.device] if observations.is_cuda else []), \
            pyro.validation_enabled(False):
        torch.manual_seed(seed)
        x = model.initial().sample((runs, n))
        if x.dim() == 2:
            x = x.unsqueeze(-1)
        log_w = torch.full((runs, n), -math.log(n), dtype=x.dtype, device=x.device)
        for t in range(steps):
            if t > 0:
                x = model.transition(x, t).sample()
                if x.dim() == 2:
                    x = x.unsqueeze(-1)
            log_g = model.observation(x, t).log_prob(observations[t])
            if log_g.shape != (runs, n):
                raise BayesdlError(f"observation(x, {t}).log_prob(y) has shape {tuple(log_g.shape)}; "
                                   f"expected [{runs}, {n}] (runs, particles)")
            log_g = torch.where(torch.isnan(log_g), -math.inf, log_g)
            joint = log_w + log_g
            increment = torch.logsumexp(joint, -1)
            log_w = joint - increment[:, None]
            w = log_w.exp()
            mean = torch.einsum("rn,rnd->rd", w, x)
            variance = torch.einsum("rn,rnd->rd", w, (x - mean[:, None]) ** 2)
            ess = 1.0 / (w**2).sum(-1)
            do = ess < ess_threshold * n
            if ess_threshold >= 1:
                do = torch.ones_like(do)
            if bool(do.any()):  # one host read per time step, not per run or particle
                index = resample(log_w, resampling)
                index = torch.where(do[:, None], index, torch.arange(n, device=x.device).expand(runs, n))
                x = torch.gather(x, 1, index[..., None].expand_as(x))
                log_w = torch.where(do[:, None], torch.full_like(log_w, -math.log(n)), log_w)
            means.append(mean)
            variances.append(variance)
            esss.append(ess)
            increments.append(increment)
            resampled.append(do)
    inc = torch.stack(increments, 1)
    if not torch.isfinite(inc).all():
        raise BayesdlError("every particle of a run had likelihood zero at some step; the "
                           "model cannot explain an observation (or use more particles)")
    return FilterResult(torch.stack(means, 1), torch.stack(variances, 1), torch.stack(esss, 1), inc,
                        inc.sum(1), torch.stack(resampled, 1))


def filter_series(
    model: StateSpaceModel,
    series: torch.Tensor,
    num_particles: int,
    seed: int = 0,
    resampling: str = "systematic",
    ess_threshold: float = 0.5,
) -> FilterResult:
    """Filter ``B`` different series ``[B, T, ...]`` at once: run ``b`` filters ``series[b]``.

    ``model.observation(x [B, N, D], t)`` is scored at ``y_t [B, 1, ...]`` (one value per
    run, broadcast over the particles), so its ``log_prob`` must come out ``[B, N]``.
    """
    if series.dim() < 2:
        raise BayesdlError(f"series must be [B, T, ...], got shape {tuple(series.shape)}")
    return bootstrap_particle_filter(model, series.transpose(0, 1).unsqueeze(2), num_particles,
                                     series.shape[0], seed, resampling, ess_threshold)
