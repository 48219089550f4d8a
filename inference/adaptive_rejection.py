"""Adaptive rejection sampling (Gilks & Wild 1992) for log-concave densities, batched.

For a log-concave density ``exp(h)`` the tangents of ``h`` at a set of abscissae lie
above ``h``; their minimum is a piecewise-linear upper hull, so ``exp(hull)`` is a
piecewise-exponential envelope that is sampled exactly (pick a piece by its mass,
then invert its truncated-exponential CDF). A candidate ``x`` is accepted with
probability ``exp(h(x) - hull(x))``; rejected candidates become new abscissae, so the
envelope tightens where it was loose and the acceptance rate climbs towards one.

Batched: ``B`` independent densities (rows) are sampled at once, each with its own
abscissae in a padded ``[B, max_points]`` tensor; every round draws a block of
candidates per row from the current envelope (accepted ones are exact draws, since
the envelope is fixed within the round). All candidates of a round are evaluated in
one vectorised call, so the squeeze function of the original (which saves density
evaluations one at a time) is not used. Derivatives come from autograd. A point
above the hull proves the density is not log-concave, which is reported as an error.
Written by hand: neither torch, Pyro nor scipy has ARS.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from bayesdl.errors import BayesdlError

LogDensity = Callable[[torch.Tensor], torch.Tensor]


class ARSResult(NamedTuple):
    """``samples [B, num]``; per row: acceptance rate, candidates proposed, abscissae used."""

    samples: torch.Tensor
    acceptance_rate: torch.Tensor
    num_proposed: torch.Tensor
    num_points: torch.Tensor


def _value_and_slope(log_density: LogDensity, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        h = log_density(x)
        if h.shape != x.shape:
            raise BayesdlError(f"log_density returned shape {tuple(h.shape)} for points shaped "
                               f"{tuple(x.shape)}; it must act elementwise on [B, n]")
        (slope,) = torch.autograd.grad(h.sum(), x)
    return h.detach(), slope.detach()


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``."""
    return torch.where(x > -0.6931, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


class _Hull(NamedTuple):
    left: torch.Tensor  # [B, K] piece boundaries
    right: torch.Tensor
    log_mass: torch.Tensor  # [B, K], -inf for padding


def _hull(x, h, s, valid, lower, upper) -> _Hull:
    """Pieces of the upper hull: piece j is tangent j on [left_j, right_j]."""
    x_next, h_next, s_next = x[:, 1:], h[:, 1:], s[:, 1:]
    both = valid[:, 1:]
    gap = s[:, :-1] - s_next
    flat = gap.abs() <= 1e-12 * (s[:, :-1].abs() + s_next.abs() + 1)
    cross = (h_next - h[:, :-1] - x_next * s_next + x[:, :-1] * s[:, :-1]) / torch.where(flat, 1.0, gap)
    cross = torch.where(flat, 0.5 * (x[:, :-1] + x_next), cross)
    cross = torch.minimum(torch.maximum(cross, x[:, :-1]), torch.where(both, x_next, x[:, :-1]))
    right = torch.cat([torch.where(both, cross, upper[:, None]), upper[:, None]], dim=1)
    left = torch.cat([lower[:, None], right[:, :-1]], dim=1)
    width = right - left
    small = (s * width).abs() < 1e-10
    # log of the integral of exp(h_j + s_j (t - x_j)) over [left, right]
    pos = h + s * (right - x) - torch.log(s.abs()) + _log1mexp(-(s * width).abs())
    neg = h + s * (left - x) - torch.log(s.abs()) + _log1mexp(-(s * width).abs())
    mid = h + s * (0.5 * (left + right) - x) + torch.log(width)
    log_mass = torch.where(small, mid, torch.where(s > 0, pos, neg))
    log_mass = torch.where(valid & (width > 0), log_mass, -math.inf)
    return _Hull(left, right, log_mass)


def _sample_piece(left, right, s, u):
    """Inverse CDF of the density proportional to exp(s t) on [left, right]."""
    width = right - left
    small = (s * width).abs() < 1e-10
    safe_s = torch.where(small, 1.0, s)
    pos = right + torch.log(u + (1 - u) * torch.exp(-safe_s * width)) / safe_s
    neg = left + torch.log((1 - u) + u * torch.exp(safe_s * width)) / safe_s
    return torch.where(small, left + u * width, torch.where(s > 0, pos, neg))


def adaptive_rejection_sample(
    log_density: LogDensity,
    num_samples: int,
    init_points: torch.Tensor,
    lower: float | torch.Tensor = -math.inf,
    upper: float | torch.Tensor = math.inf,
    seed: int = 0,
    max_points: int = 64,
    candidates_per_round: int | None = None,
    tolerance: float = 1e-7,
) -> ARSResult:
    """``num_samples`` exact draws from each of ``B`` log-concave densities.

    ``log_density(x)`` maps points ``[B, n]`` to log densities ``[B, n]`` (row ``b`` is
    density ``b``, unnormalised, differentiable). ``init_points [B, k0]`` (or ``[k0]``
    for all rows) are starting abscissae inside ``(lower, upper)``; with an infinite
    bound the outermost point on that side must have a slope pointing inwards (left of
    the mode for ``-inf``, right of it for ``+inf``). ``seed`` seeds a private generator.
    """
    x0 = torch.as_tensor(init_points)
    if not x0.is_floating_point():
        x0 = x0.to(torch.get_default_dtype())
    if x0.dim() == 1:
        x0 = x0[None]
    if x0.dim() != 2 or x0.shape[1] < 1:
        raise BayesdlError(f"init_points must be [B, k] or [k], got shape {tuple(x0.shape)}")
    if num_samples < 1:
        raise BayesdlError(f"num_samples must be >= 1, got {num_samples}")
    x0 = torch.sort(x0, dim=1).values
    h0, s0 = _value_and_slope(log_density, x0)
    rows, k0 = x0.shape
    dtype, device = x0.dtype, x0.device
    lower = torch.as_tensor(lower, dtype=dtype, device=device).expand(rows).clone()
    upper = torch.as_tensor(upper, dtype=dtype, device=device).expand(rows).clone()
    if max_points < k0:
        raise BayesdlError(f"max_points ({max_points}) is below the number of init_points ({k0})")
    if not (torch.isfinite(h0).all() and torch.isfinite(s0).all()):
        raise BayesdlError("log_density or its derivative is not finite at an initial point")
    if ((x0[:, 0] <= lower) | (x0[:, -1] >= upper)).any():
        raise BayesdlError("init_points must lie strictly inside (lower, upper)")
    if (torch.isinf(lower) & (s0[:, 0] <= 0)).any():
        raise BayesdlError("with lower = -inf the smallest initial point must be left of the mode "
                           "(positive slope of log_density)")
    if (torch.isinf(upper) & (s0[:, -1] >= 0)).any():
        raise BayesdlError("with upper = +inf the largest initial point must be right of the mode "
                           "(negative slope of log_density)")
    if (s0[:, 1:] > s0[:, :-1] + tolerance * (1 + s0[:, :-1].abs())).any():
        raise BayesdlError("log_density is not concave: its slope increases between initial points")

    pad = max_points - k0
    x = torch.cat([x0, x0.new_full((rows, pad), math.inf)], 1)
    h = torch.cat([h0, h0.new_zeros((rows, pad))], 1)
    s = torch.cat([s0, s0.new_zeros((rows, pad))], 1)
    valid = torch.cat([torch.ones_like(x0, dtype=torch.bool),
                       torch.zeros((rows, pad), dtype=torch.bool, device=device)], 1)
    per_round = candidates_per_round or max(16, min(4096, num_samples // 4))
    out = x0.new_full((rows, num_samples + per_round + 1), math.nan)  # last column: a sink
    sink = out.shape[1] - 1
    count = torch.zeros(rows, dtype=torch.int64, device=device)
    proposed = torch.zeros(rows, dtype=torch.int64, device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    size = min(16, per_round)  # rounds grow while the hull tightens
    while bool((count < num_samples).any()):
        hull = _hull(x, h, s, valid, lower, upper)
        probs = torch.softmax(hull.log_mass, dim=1)
        piece = torch.multinomial(probs, size, replacement=True, generator=generator)
        u, w = torch.rand((2, rows, size), generator=generator, dtype=dtype,
                          device=device).clamp(min=torch.finfo(dtype).tiny)
        xs, hs, ss = x.gather(1, piece), h.gather(1, piece), s.gather(1, piece)
        cand = _sample_piece(hull.left.gather(1, piece), hull.right.gather(1, piece), ss, u)
        envelope = hs + ss * (cand - xs)
        h_cand, s_cand = _value_and_slope(log_density, cand)
        excess = h_cand - envelope
        if (excess > tolerance * (1 + envelope.abs())).any():
            raise BayesdlError("log_density is not log-concave: it lies above a tangent at "
                               f"x = {float(cand.flatten()[int(excess.argmax())]):.6g}")
        if not torch.isfinite(h_cand).all():
            raise BayesdlError("log_density is not finite inside (lower, upper)")
        active = count < num_samples
        accept = (torch.log(w) <= excess) & active[:, None]
        # accepted candidates go to the next free slots of their row
        slot = count[:, None] + torch.cumsum(accept.long(), 1) - 1
        out.scatter_(1, torch.where(accept, slot, sink), cand)
        count = count + accept.sum(1)
        proposed = proposed + active.long() * size
        # rejected candidates refine the hull, as many as the free slots allow
        room = max_points - valid.sum(1, keepdim=True)
        add = ~accept & active[:, None] & (torch.cumsum((~accept).long(), 1) <= room)
        x_all = torch.cat([x, torch.where(add, cand, math.inf)], 1)
        order = torch.argsort(x_all, dim=1)[:, :max_points]
        x = x_all.gather(1, order)
        h = torch.cat([h, h_cand], 1).gather(1, order)
        s = torch.cat([s, s_cand], 1).gather(1, order)
        valid = torch.isfinite(x)
        both = valid[:, 1:] & valid[:, :-1]
        if (both & (s[:, 1:] > s[:, :-1] + tolerance * (1 + s[:, :-1].abs()))).any():
            raise BayesdlError("log_density is not log-concave: its slope increases between "
                               "abscissae")
        size = min(2 * size, per_round)
    return ARSResult(out[:, :num_samples], count.to(dtype) / proposed.to(dtype), proposed,
                     valid.sum(1))
