"""A whole NUTS transition as one TorchScript call, around a traced potential.

:func:`~bayesdl.inference.nuts.nuts_transition` drives the tree from Python: per leaf a
potential call and a scripted bookkeeping call, per doubling a handful of small
operations and a merge. Without a compiler every one of those Python steps costs
microseconds (argument conversion, dispatch, the loop itself): a third of a transition
on logistic regression (25.4 ms from Python, 16.4 ms here). Here the same loops, with the same arithmetic
(:func:`~bayesdl.inference.nuts_leaf.leaf_update`, the same merge, the same random
numbers), are a TorchScript module with the traced potential inside, run by
TorchScript's Static Runtime on CPU (:func:`~bayesdl.inference.traced_potential.static_runtime`):
one call from Python per transition, no compile step. The draws equal the Python
driver's (a test compares them tree by tree).

:class:`ScriptedTransition` puts the rest of the transition around the tree in the same
call: the momentum and early doublings' random numbers (one counter-hash block), the
momentum from the metric, the starting energy, and the draw and its statistics
unpacked from the proposal. From Python those cost 150-220 us per transition (about
20 separate calls, the hash's ~14 operations in TorchScript's interpreter); inside the
call a transition takes 4-12% less (2026-12-07, one process, interleaved: eight
schools 717 -> 653 us, logistic regression 2698 -> 2385 us, the 100-d Gaussian 2608 ->
2494 us, fastest of 16 runs each), to the same draws bit for bit.

Unlike :mod:`~bayesdl.inference.compiled_nuts` (Inductor, static shapes, masks over all
levels) the loops here keep real control flow: a subtree stops at its first leaf where
no chain is still building, and only the levels that start or end at a leaf are
touched. Written by hand because no library offers a batched NUTS tree for torch.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bayesdl.inference.counter_rng import _stream_columns, _uniform_grid, _uniform_streams
from bayesdl.inference.integrator import apply_inverse_mass, energy_of, scale_noise
from bayesdl.inference.nuts_leaf import leaf_update, merge_subtree, start_doubling
from bayesdl.inference.traced_potential import static_runtime


class ScriptedTree(torch.nn.Module):
    """One NUTS tree for every chain (see the module docstring); ``gradient`` is the
    traced ``flat -> (grad, log_density)`` with NaN already -inf."""

    def __init__(self, gradient: torch.jit.ScriptModule, max_tree_depth: int,
                 max_energy_error: float, leaves_per_check: int = 1):
        super().__init__()
        self.leaves_per_check = leaves_per_check
        self.gradient = gradient
        self.max_tree_depth = max_tree_depth
        self.max_energy_error = max_energy_error
        # levels whose aligned blocks start at leaf n: trailing zeros of n (every level
        # at n = 0); a table, so the loop has no branches for it (each costs microseconds)
        self.levels = [max_tree_depth] + [(n & -n).bit_length() - 1
                                          for n in range(1, 2**max_tree_depth + 1)]

    def forward(self, position: torch.Tensor, log_density: torch.Tensor, grad: torch.Tensor,
                momentum: torch.Tensor, energy0: torch.Tensor, step_size: torch.Tensor,
                inverse_mass: torch.Tensor, keys: torch.Tensor,
                early_uniforms: list[torch.Tensor], later_counters: list[int]):
        """``(proposal, accept_sum, n_steps, depth, diverging)`` as the Python driver's;
        ``early_uniforms[d]`` are doubling ``d``'s uniforms, ``later_counters`` the
        counter-RNG counters of the doublings after those."""
        chains, dim = position.shape
        zeros = torch.zeros_like(log_density)
        left = torch.cat([position, momentum, grad, log_density[:, None]], dim=1)
        right = left
        proposal = torch.cat([position, grad, log_density[:, None], zeros[:, None]], dim=1)
        tree_log_weight = zeros
        momentum_sum = momentum
        active = torch.ones(chains, dtype=torch.bool, device=position.device)
        diverging = torch.zeros_like(active)
        depth = torch.zeros(chains, dtype=torch.int64, device=position.device)
        n_steps = zeros
        accept_sum = zeros
        for d in range(self.max_tree_depth):
            depth = depth + active.to(torch.int64)
            if d < len(early_uniforms):
                uniforms = early_uniforms[d]
            else:
                uniforms = _uniform_grid(keys, later_counters[d - len(early_uniforms)],
                                         (1 << d) + 2).to(position.dtype)
            log_uniforms = uniforms.log()
            (going_right, signed_step, half_step, leaf_position, r, leaf_grad,
             leaf_log_density, sub_proposal, sub_log_weight, sub_momentum_sum,
             checkpoint_velocity, checkpoint_sum) = start_doubling(
                log_uniforms, step_size, left, right, proposal, d)
            building = active
            for n in range(1 << d):
                starts = min(self.levels[n], d)
                ends = min(self.levels[n + 1], d)
                r = torch.addcmul(r, half_step, leaf_grad)
                leaf_position = torch.addcmul(leaf_position, signed_step,
                                              apply_inverse_mass(inverse_mass, r))
                leaf_grad, leaf_log_density = self.gradient(leaf_position)
                (r, accept_sum, n_steps, building, diverging, sub_log_weight, sub_proposal,
                 sub_momentum_sum) = leaf_update(
                    leaf_position, r, leaf_grad, leaf_log_density, half_step, inverse_mass,
                    energy0, accept_sum, n_steps, building, diverging, sub_log_weight,
                    sub_proposal, sub_momentum_sum, checkpoint_velocity, checkpoint_sum,
                    log_uniforms[:, 2 + n], starts, ends, self.max_energy_error)
                # (also at the last leaf: one branch fewer)
                if (n + 1) % self.leaves_per_check == 0 and not bool(building.any()):
                    break
            frontier = torch.cat([leaf_position, r, leaf_grad, leaf_log_density[:, None]],
                                 dim=1)
            proposal, tree_log_weight, left, right, momentum_sum, active = merge_subtree(
                building, going_right, log_uniforms[:, 1], sub_log_weight, tree_log_weight,
                sub_proposal, proposal, frontier, left, right, momentum_sum,
                sub_momentum_sum, inverse_mass, dim)
            if not bool(active.any()):
                break
        return proposal, accept_sum, n_steps, depth, diverging


class ScriptedTransition(torch.nn.Module):
    """A whole NUTS transition around :class:`ScriptedTree`, the same arithmetic as
    :func:`~bayesdl.inference.nuts.nuts_transition`'s Python around the tree:
    ``early_counters`` are the counters of the momentum stream and the first
    ``early_doublings`` doublings' streams, ``later_counters`` those of the rest;
    ``mass_cholesky`` is read only for a dense metric (``inverse_mass [C, D, D]``), as
    :func:`~bayesdl.inference.integrator.scale_noise`."""

    def __init__(self, tree: ScriptedTree, dim: int, early_doublings: int):
        super().__init__()
        self.tree = tree
        self.dim = dim
        self.sizes = [dim] + [(1 << k) + 2 for k in range(early_doublings)]
        column_stream, column_element = _stream_columns(tuple(self.sizes), torch.device("cpu"))
        self.register_buffer("column_stream", column_stream)
        self.register_buffer("column_element", column_element)

    def forward(self, position: torch.Tensor, log_density: torch.Tensor, grad: torch.Tensor,
                step_size: torch.Tensor, inverse_mass: torch.Tensor,
                mass_cholesky: torch.Tensor | None, keys: torch.Tensor,
                early_counters: list[int],
                later_counters: list[int]):
        """``(position, log_density, grad, acceptance_rate, n_steps, depth, diverging,
        energy)`` of the draw, as :func:`~bayesdl.inference.nuts.nuts_transition`."""
        counters = torch.tensor(early_counters, dtype=torch.int64, device=keys.device)
        block = _uniform_streams(keys, counters, self.column_stream, self.column_element)
        pieces = block.split(self.sizes, dim=1)
        momentum = scale_noise(torch.special.ndtri(pieces[0]).to(position.dtype),
                               inverse_mass, mass_cholesky)
        energy0 = energy_of(log_density, momentum, inverse_mass)
        early_uniforms = [piece.to(position.dtype) for piece in pieces[1:]]
        proposal, accept_sum, n_steps, depth, diverging = self.tree(
            position, log_density, grad, momentum, energy0, step_size, inverse_mass, keys,
            early_uniforms, later_counters)
        dim = self.dim
        return (proposal[:, :dim].contiguous(), proposal[:, 2 * dim].contiguous(),
                proposal[:, dim:2 * dim].contiguous(), accept_sum / n_steps.clamp(min=1),
                n_steps, depth, diverging, energy0 - proposal[:, 2 * dim + 1])


class ScriptedNUTS:
    """The built transition (:class:`ScriptedTransition`, frozen, run by the Static
    Runtime on CPU) as ``run``, and how many doublings' numbers it draws up front."""

    def __init__(self, run: Callable, early_doublings: int):
        self.run = run
        self.early_doublings = early_doublings


def scripted_tree(gradient: torch.jit.ScriptModule, max_tree_depth: int,
                  max_energy_error: float, example: torch.Tensor,
                  leaves_per_check: int = 1, early_doublings: int = 5) -> ScriptedNUTS:
    """The whole transition around :class:`ScriptedTree`, frozen and (on CPU) run by the
    Static Runtime; it reads whether any chain still builds every ``leaves_per_check``
    leaves (the same draws for any value; see :mod:`~bayesdl.inference.nuts`)."""
    early_doublings = min(early_doublings, max_tree_depth)
    tree = ScriptedTree(gradient, max_tree_depth, max_energy_error, leaves_per_check)
    transition = ScriptedTransition(tree, example.shape[1], early_doublings).to(example.device)
    module = torch.jit.script(transition)
    return ScriptedNUTS(static_runtime(torch.jit.freeze(module.eval()), example),
                        early_doublings)
