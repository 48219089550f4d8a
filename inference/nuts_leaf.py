"""One NUTS leaf as pure tensor functions: leapfrog step, weight, multinomial sampling
inside the subtree, divergence, and the U-turn checks of the aligned blocks it starts
or ends.

:func:`weigh_leaf` is shared by the Python driver's scripted leaf
(:func:`~bayesdl.inference.nuts._leaf_update`) and :func:`masked_leaf`, the leaf of the
compiled transition (:mod:`~bayesdl.inference.compiled_nuts`). A compiled graph needs
static shapes, so unlike ``_leaf_update`` the levels whose aligned blocks start or end
at a leaf are boolean masks over all ``max_tree_depth`` levels, and the checkpoints
hold every level.

The U-turn criterion: a block of leaves (an aligned block inside a subtree, or the
whole tree at a merge) has turned when the velocity at either end has a non-positive
dot product with rho, the block's momentum sum less half of each end momentum (the
trapezoidal integral of momentum along the trajectory, Betancourt 2017, A.4.2, as
NumPyro uses; Stan sums every momentum in full). Both are valid (rho depends only on
the block), and this one stops sooner: from NumPyro's adapted step sizes and metrics on
the 100-d Gaussian, the full sum built 15% more leaves per chain and 30% more for the
slowest of 4 chains, which a batched draw waits for. Over six seeds x 4 chains x (1000 +
1000), min bulk ESS per leaf of the slowest chain rose from 149 to 178 (eight schools)
and from 64.8 to 77.2 (100-d Gaussian); on logistic regression, whose trees fill depth
5 either way, nothing changed (114.8 -> 121.4, within noise). Each checkpoint holds the
momentum sum before its leaf plus half that leaf's momentum, so a block's rho is one
subtraction.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bayesdl.inference.integrator import apply_inverse_mass

DEPTH_STREAM = 100  # the random numbers of doubling d are ChainRNG stream DEPTH_STREAM + d


def _trailing_zeros(n: int) -> int:
    return (n & -n).bit_length() - 1


def weigh_leaf(position: torch.Tensor, r: torch.Tensor, v: torch.Tensor, grad: torch.Tensor,
               log_density: torch.Tensor, energy0: torch.Tensor, accept_sum: torch.Tensor,
               n_steps: torch.Tensor, building: torch.Tensor, diverging: torch.Tensor,
               sub_log_weight: torch.Tensor, sub_proposal: torch.Tensor, log_u: torch.Tensor,
               max_energy_error: float):
    """A new leaf's weight, acceptance statistic, divergence, and multinomial sampling
    inside the subtree (keep the new leaf with probability w / sum w). Shared by the
    scripted and the compiled leaf."""
    log_weight = torch.add(log_density + energy0, (r * v).sum(-1), alpha=-0.5)
    log_weight = torch.nan_to_num(log_weight, nan=-math.inf)
    weight = building.to(log_weight.dtype)
    accept_sum = torch.addcmul(accept_sum, weight, log_weight.clamp(max=0.0).exp())
    n_steps = n_steps + weight
    diverged = building & (log_weight < -max_energy_error)
    diverging = diverging | diverged
    sub_log_weight = torch.logaddexp(sub_log_weight, log_weight)
    take = log_u < log_weight - sub_log_weight
    leaf = torch.cat([position, grad, log_density.unsqueeze(1), log_weight.unsqueeze(1)], dim=1)
    sub_proposal = torch.where(take.unsqueeze(1), leaf, sub_proposal)
    return accept_sum, n_steps, diverged, diverging, sub_log_weight, sub_proposal


@torch.jit.script
def start_doubling(log_uniforms: torch.Tensor, step_size: torch.Tensor, left: torch.Tensor,
                   right: torch.Tensor, proposal: torch.Tensor, d: int):
    """The state a new subtree of ``2**d`` leaves starts from, for every chain: the
    direction (``log_uniforms[:, 0]``, a fair coin), the signed step and half step, the
    edge it grows from (position, momentum, gradient, log density), an empty subtree
    (its proposal, log weight -inf, momentum sum 0) and room for the U-turn checkpoints
    of its ``d + 1`` levels. Shared by the Python driver and the scripted tree."""
    chains = left.shape[0]
    dim = (left.shape[1] - 1) // 3
    going_right = log_uniforms[:, 0] < -math.log(2.0)
    signed_step = torch.where(going_right, step_size, -step_size)[:, None]
    edge = torch.where(going_right[:, None], right, left)
    r = edge[:, dim:2 * dim]
    return (going_right, signed_step, 0.5 * signed_step, edge[:, :dim], r,
            edge[:, 2 * dim:3 * dim], edge[:, 3 * dim], proposal,
            torch.full_like(step_size, -math.inf), torch.zeros_like(r),
            r.new_empty((d + 1, chains, dim)), r.new_empty((d + 1, chains, dim)))


@torch.jit.script
def leaf_update(position: torch.Tensor, r: torch.Tensor, grad: torch.Tensor,
                 log_density: torch.Tensor, half_step: torch.Tensor,
                 inverse_mass: torch.Tensor, energy0: torch.Tensor, accept_sum: torch.Tensor,
                 n_steps: torch.Tensor, building: torch.Tensor, diverging: torch.Tensor,
                 sub_log_weight: torch.Tensor, sub_proposal: torch.Tensor,
                 sub_momentum_sum: torch.Tensor, checkpoint_velocity: torch.Tensor,
                 checkpoint_sum: torch.Tensor, log_u: torch.Tensor, starts: int, ends: int,
                 max_energy_error: float):
    """The bookkeeping of one new leaf after its gradient is known: the second half
    momentum step, its weight, multinomial sampling inside the subtree, divergence and
    the U-turn checks of the aligned blocks that start (``starts`` levels) or end
    (``ends`` levels) here. Scripted: about 40 small operations run without Python
    between them (no library offers this loop body; see the module docstring). Shared
    by the Python driver and the scripted tree (:mod:`~bayesdl.inference.scripted_nuts`)."""
    r = torch.addcmul(r, half_step, grad)
    v = apply_inverse_mass(inverse_mass, r)
    accept_sum, n_steps, diverged, diverging, sub_log_weight, sub_proposal = weigh_leaf(
        position, r, v, grad, log_density, energy0, accept_sum, n_steps, building, diverging,
        sub_log_weight, sub_proposal, log_u, max_energy_error)
    half_sum = torch.add(sub_momentum_sum, r, alpha=0.5)
    if starts > 0:
        checkpoint_velocity[1:starts + 1] = v
        checkpoint_sum[1:starts + 1] = half_sum
    sub_momentum_sum = sub_momentum_sum + r
    stop = diverged
    if ends > 0:
        block_sum = half_sum - checkpoint_sum[1:ends + 1]
        turned = torch.minimum((checkpoint_velocity[1:ends + 1] * block_sum).sum(-1),
                               (v * block_sum).sum(-1)) <= 0
        stop = stop | turned.any(0)
    building = building & ~stop
    return (r, accept_sum, n_steps, building, diverging, sub_log_weight, sub_proposal,
            sub_momentum_sum)


def masked_leaf(gradient_graph: Callable, max_energy_error: float, position: torch.Tensor,
                 r: torch.Tensor, grad: torch.Tensor, signed_step: torch.Tensor,
                 inverse_mass: torch.Tensor, energy0: torch.Tensor, accept_sum: torch.Tensor,
                 n_steps: torch.Tensor, building: torch.Tensor, diverging: torch.Tensor,
                 sub_log_weight: torch.Tensor, sub_proposal: torch.Tensor,
                 sub_momentum_sum: torch.Tensor, checkpoint_velocity: torch.Tensor,
                 checkpoint_sum: torch.Tensor, log_u: torch.Tensor, start_mask: torch.Tensor,
                 end_mask: torch.Tensor):
    """The whole leaf with level masks ``start_mask [L, 1, 1]`` and ``end_mask [L, 1]``."""
    half_step = 0.5 * signed_step
    r = torch.addcmul(r, half_step, grad)
    position = torch.addcmul(position, signed_step, apply_inverse_mass(inverse_mass, r))
    grad, log_density = gradient_graph(position)
    log_density = torch.where(torch.isnan(log_density), -math.inf, log_density)
    r = torch.addcmul(r, half_step, grad)
    v = apply_inverse_mass(inverse_mass, r)
    accept_sum, n_steps, diverged, diverging, sub_log_weight, sub_proposal = weigh_leaf(
        position, r, v, grad, log_density, energy0, accept_sum, n_steps, building, diverging,
        sub_log_weight, sub_proposal, log_u, max_energy_error)
    half_sum = torch.add(sub_momentum_sum, r, alpha=0.5)
    checkpoint_velocity = torch.where(start_mask, v, checkpoint_velocity)
    checkpoint_sum = torch.where(start_mask, half_sum, checkpoint_sum)
    sub_momentum_sum = sub_momentum_sum + r
    block_sum = half_sum - checkpoint_sum
    turned = torch.minimum((checkpoint_velocity * block_sum).sum(-1),
                           (v * block_sum).sum(-1)) <= 0
    building = building & ~(diverged | (turned & end_mask).any(0))
    return (position, r, grad, log_density, accept_sum, n_steps, building, diverging,
            sub_log_weight, sub_proposal, sub_momentum_sum, checkpoint_velocity, checkpoint_sum)


def merge_subtree(merge: torch.Tensor, going_right: torch.Tensor, log_u: torch.Tensor,
                  sub_log_weight: torch.Tensor, tree_log_weight: torch.Tensor,
                  sub_proposal: torch.Tensor, proposal: torch.Tensor, frontier: torch.Tensor,
                  left: torch.Tensor, right: torch.Tensor, momentum_sum: torch.Tensor,
                  sub_momentum_sum: torch.Tensor, inverse_mass: torch.Tensor, dim: int):
    """Join a finished subtree to the tree, for the chains in ``merge``: biased progressive
    sampling of the proposal (Betancourt 2017), the new edge ``frontier`` (packed as the
    edges) on the side it grew, and the U-turn check of the whole tree. Returns the new
    ``(proposal, tree_log_weight, left, right, momentum_sum, still_active)``."""
    take = merge & (log_u < sub_log_weight - tree_log_weight)
    proposal = torch.where(take[:, None], sub_proposal, proposal)
    tree_log_weight = torch.where(merge, torch.logaddexp(tree_log_weight, sub_log_weight),
                                  tree_log_weight)
    right = torch.where((merge & going_right)[:, None], frontier, right)
    left = torch.where((merge & ~going_right)[:, None], frontier, left)
    momentum_sum = torch.where(merge[:, None], momentum_sum + sub_momentum_sum, momentum_sum)
    left_r, right_r = left[:, dim:2 * dim], right[:, dim:2 * dim]
    left_v = apply_inverse_mass(inverse_mass, left_r)
    right_v = apply_inverse_mass(inverse_mass, right_r)
    rho = momentum_sum - 0.5 * (left_r + right_r)
    turned = ((left_v * rho).sum(-1) <= 0) | ((right_v * rho).sum(-1) <= 0)
    return proposal, tree_log_weight, left, right, momentum_sum, merge & ~turned
