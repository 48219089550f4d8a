"""One NUTS leaf (leapfrog step, potential, tree bookkeeping) compiled as one graph.

On CPU every tensor operation costs one to two microseconds of dispatch whatever its
size, and a leaf is ~120 of them: the traced potential (~75 for eight schools) and the
bookkeeping of :func:`~bayesdl.inference.nuts._leaf_update` (~40). Traced together and
compiled by Inductor (``--opt potential=compile``) they become a few fused C++ (or, on
CUDA, Triton) kernels. The price is a compilation of several seconds per model and
shape, so it pays on long runs and on GPUs, where every separate operation is a kernel
launch.

One compiled graph needs static shapes, so unlike ``_leaf_update`` the levels whose
aligned blocks start or end at a leaf are boolean masks over all ``max_tree_depth``
levels (looked up in tables made once), and the checkpoints hold every level.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bayesdl.inference.traced_potential import compile_graph


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


def _velocity(inverse_mass: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    if inverse_mass.dim() == 3:
        return torch.matmul(inverse_mass, r.unsqueeze(-1)).squeeze(-1)
    return inverse_mass * r


def _masked_leaf(gradient_graph: Callable, max_energy_error: float, position: torch.Tensor,
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
    position = torch.addcmul(position, signed_step, _velocity(inverse_mass, r))
    grad, log_density = gradient_graph(position)
    log_density = torch.where(torch.isnan(log_density), -math.inf, log_density)
    r = torch.addcmul(r, half_step, grad)
    v = _velocity(inverse_mass, r)
    accept_sum, n_steps, diverged, diverging, sub_log_weight, sub_proposal = weigh_leaf(
        position, r, v, grad, log_density, energy0, accept_sum, n_steps, building, diverging,
        sub_log_weight, sub_proposal, log_u, max_energy_error)
    checkpoint_velocity = torch.where(start_mask, v, checkpoint_velocity)
    checkpoint_sum = torch.where(start_mask, sub_momentum_sum, checkpoint_sum)
    sub_momentum_sum = sub_momentum_sum + r
    block_sum = sub_momentum_sum - checkpoint_sum
    turned = torch.minimum((checkpoint_velocity * block_sum).sum(-1),
                           (v * block_sum).sum(-1)) <= 0
    building = building & ~(diverged | (turned & end_mask).any(0))
    return (position, r, grad, log_density, accept_sum, n_steps, building, diverging,
            sub_log_weight, sub_proposal, sub_momentum_sum, checkpoint_velocity, checkpoint_sum)


class FusedLeaf:
    """The compiled leaf for ``[C, D]`` positions; call :meth:`compile` once, then
    :meth:`__call__` per leaf (same arguments as ``_masked_leaf`` after the first two,
    without the masks, plus the depth and leaf number)."""

    def __init__(self, gradient_graph: Callable, max_tree_depth: int,
                 max_energy_error: float = 1000.0):
        self.gradient_graph = gradient_graph
        self.levels = max_tree_depth
        self.max_energy_error = max_energy_error
        self.compiled: Callable | None = None
        self.shape: torch.Size | None = None

    def compile(self, position: torch.Tensor, inverse_mass: torch.Tensor) -> None:
        """Trace and compile for these shapes (several seconds); build the mask tables."""
        chains, dim = position.shape
        self.shape = position.shape
        levels, device, dtype = self.levels, position.device, position.dtype
        zeros = torch.zeros(chains, dtype=dtype, device=device)
        flags = torch.ones(chains, dtype=torch.bool, device=device)
        example = [position, torch.zeros_like(position), torch.zeros_like(position),
                   torch.full((chains, 1), 0.1, dtype=dtype, device=device), inverse_mass,
                   zeros, zeros, zeros, flags, ~flags, torch.full_like(zeros, -math.inf),
                   torch.zeros(chains, 2 * dim + 2, dtype=dtype, device=device),
                   torch.zeros_like(position), position.new_zeros((levels, chains, dim)),
                   position.new_zeros((levels, chains, dim)), zeros - 1.0,
                   torch.zeros(levels, 1, 1, dtype=torch.bool, device=device),
                   torch.zeros(levels, 1, dtype=torch.bool, device=device)]
        # distinct tensors: the compiler would otherwise assume arguments alias each other
        example = [tensor.clone() for tensor in example]

        def leaf(*args):
            return _masked_leaf(self.gradient_graph, self.max_energy_error, *args)

        self.compiled = compile_graph(leaf, example)
        level = torch.arange(1, levels + 1, device=device)
        self._start_masks, self._end_masks = [], []
        for depth in range(levels):
            leaves = range(2**depth)
            starts = torch.tensor([min(_trailing_zeros(n) if n else depth, depth) for n in leaves],
                                  device=device)
            ends = torch.tensor([min(_trailing_zeros(n + 1), depth) for n in leaves],
                                device=device)
            self._start_masks.append((level <= starts[:, None])[:, :, None, None])
            self._end_masks.append((level <= ends[:, None])[:, :, None])

    def checkpoints(self, momentum: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Empty per-level checkpoints (velocity, momentum sum) for one transition."""
        shape = (self.levels, *momentum.shape)
        return momentum.new_zeros(shape), momentum.new_zeros(shape)

    def __call__(self, depth: int, leaf: int, *args: torch.Tensor):
        return self.compiled(*args, self._start_masks[depth][leaf], self._end_masks[depth][leaf])
