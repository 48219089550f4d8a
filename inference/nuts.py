"""The No-U-Turn sampler with the chain as a tensor dimension (iterative, masked).

Every chain builds its own trajectory (Hoffman & Gelman 2014, with Betancourt's
multinomial sampling and generalised U-turn criterion, its momentum sum taken as a
trapezoidal integral: see :mod:`~bayesdl.inference.nuts_leaf`), but all chains
take their leapfrog steps together: one potential call advances every chain, and a
chain whose tree has stopped (U-turn, divergence, depth limit) is masked until the
slowest one finishes. The recursion of the original algorithm is replaced by an
iterative scheme (as in NumPyro's iterative NUTS): while a subtree of 2^d leaves is
built leaf by leaf, the momentum and momentum-sum at the first leaf of each aligned
block of 2^j leaves are kept, and the block is checked for a U-turn at its last leaf;
which blocks start or end at leaf n is known from n alone, so the bookkeeping is
vectorised over levels. Random numbers are keyed per chain (ChainRNG), so a chain's
draws do not depend on the other chains.

The loop reads one boolean every ``leaves_per_check`` leaves (whether any chain is
still building) so that a draw costs the slowest chain's tree, not 2^max_depth leaves.
Each read is a host-device synchronisation on a GPU; reading less often only adds
leaves on which no chain builds any more, which change nothing (a chain's subtree
state is masked once it stops), so the draws are the same for every setting.

Four drivers build the same trees to the same draws: this module's Python loop (any
potential, e.g. a model that cannot be traced), the same loop as one TorchScript call
around a traced potential (:mod:`~bayesdl.inference.scripted_nuts`, the default on
CPU), the loop over CUDA graphs of a leaf (:mod:`~bayesdl.inference.graphed_nuts`, the
default on a GPU), and one Inductor-compiled loop
(:mod:`~bayesdl.inference.compiled_nuts`, ``potential=compile``).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import NamedTuple

import torch

from bayesdl.inference.compiled_nuts import CompiledTransition
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.graphed_nuts import GraphedTree
from bayesdl.inference.hmc_warmup import StanWarmup, WarmupState
from bayesdl.inference.integrator import (
    HamiltonianKernel,
    Metric,
    PhasePoint,
    PotentialFn,
    hamiltonian,
    momentum_from_noise,
    velocity,
)
from bayesdl.inference.nuts_leaf import (
    DEPTH_STREAM,
    _trailing_zeros,
    leaf_update,
    merge_subtree,
    start_doubling,
)
from bayesdl.inference.scripted_nuts import ScriptedNUTS, scripted_tree
from bayesdl.inference.traced_potential import TracedGradient

MOMENTUM_STREAM = 11
EARLY_DOUBLINGS = 5  # their random numbers are drawn in one call at the start of a tree
GPU_LEAVES_PER_CHECK = 4  # on a GPU: at most 3 idle leaves per tree for 4x fewer syncs


class NUTSState(NamedTuple):
    point: PhasePoint
    warmup: WarmupState


class NUTSInfo(NamedTuple):
    acceptance_rate: torch.Tensor  # [C] mean Metropolis acceptance over the tree's leaves
    n_steps: torch.Tensor  # [C] leapfrog steps taken
    tree_depth: torch.Tensor  # [C]
    diverging: torch.Tensor  # [C] bool
    energy: torch.Tensor  # [C] Hamiltonian at the draw
    step_size: torch.Tensor  # [C] the step size this transition used


@torch.jit.script
def _merge_subtree(merge: torch.Tensor, going_right: torch.Tensor, log_u: torch.Tensor,
                   sub_log_weight: torch.Tensor, tree_log_weight: torch.Tensor,
                   sub_proposal: torch.Tensor, proposal: torch.Tensor, position: torch.Tensor,
                   r: torch.Tensor, grad: torch.Tensor, log_density: torch.Tensor,
                   left: torch.Tensor, right: torch.Tensor, momentum_sum: torch.Tensor,
                   sub_momentum_sum: torch.Tensor, inverse_mass: torch.Tensor):
    """:func:`~bayesdl.inference.nuts_leaf.merge_subtree` at the subtree's last leaf;
    scripted, as it runs once per doubling."""
    frontier = torch.cat([position, r, grad, log_density[:, None]], dim=1)
    return merge_subtree(merge, going_right, log_u, sub_log_weight, tree_log_weight,
                         sub_proposal, proposal, frontier, left, right, momentum_sum,
                         sub_momentum_sum, inverse_mass, position.shape[1])


def nuts_transition(rng: ChainRNG, step_index: int, point: PhasePoint, step_size: torch.Tensor,
                    metric: Metric, potential_fn: PotentialFn, max_tree_depth: int = 10,
                    max_energy_error: float = 1000.0,
                    compiled: CompiledTransition | None = None,
                    tree: Callable | None = None,
                    leaves_per_check: int = 1) -> tuple[PhasePoint, NUTSInfo]:
    """One NUTS draw for every chain from ``point`` (see the module docstring).

    The leaf loop is written for few tensor operations (it is the hot path on CPU,
    where each operation costs about a microsecond whatever its size): masks are
    applied arithmetically where possible, and a subtree's proposal is one packed
    tensor ``[position | grad | log_density | log_weight]``. ``compiled``, when given,
    builds the whole tree in one compiled call instead
    (:mod:`~bayesdl.inference.compiled_nuts`), to the same draws; so does ``tree``:
    :func:`~bayesdl.inference.scripted_nuts.scripted_tree` around the traced
    ``potential_fn`` (the whole transition, momentum to draw, as one TorchScript call),
    or :class:`~bayesdl.inference.graphed_nuts.GraphedTree` (the tree only). ``leaves_per_check`` is this
    loop's (a ``tree`` has its own).
    """
    if isinstance(tree, ScriptedNUTS):  # the whole transition in one scripted call
        counters = rng.counters(step_index, [MOMENTUM_STREAM, *range(
            DEPTH_STREAM, DEPTH_STREAM + max_tree_depth)])
        split = 1 + tree.early_doublings
        (position, log_density, grad, acceptance_rate, n_steps, depth, diverging,
         energy) = tree.run(point.position, point.log_density, point.grad, step_size,
                            metric.inverse_mass, metric.mass_cholesky, rng.keys,
                            counters[:split], counters[split:])
        return PhasePoint(position, log_density, grad), NUTSInfo(
            acceptance_rate, n_steps, depth, diverging, energy, step_size)
    chains, dim = point.position.shape
    dtype, device = point.position.dtype, point.position.device
    # the momentum and one draw per doubling ([direction, merge, one per leaf]) in one
    # hash call for the first doublings, as most trees are shallow
    early = range(min(EARLY_DOUBLINGS, max_tree_depth))
    uniforms = rng.uniform_streams(step_index, [MOMENTUM_STREAM, *(DEPTH_STREAM + k for k in early)],
                                   [dim, *(2**k + 2 for k in early)], torch.float64)
    momentum = momentum_from_noise(torch.special.ndtri(uniforms[0]).to(dtype), metric)
    energy0 = hamiltonian(point, momentum, metric)
    if compiled is not None:
        proposal, accept_sum, n_steps, depth, diverging = compiled(
            point.position, point.log_density, point.grad, momentum, energy0, step_size,
            metric.inverse_mass, rng.keys, torch.tensor(step_index, device=device))
        return _draw(proposal, dim), NUTSInfo(
            accept_sum / n_steps.clamp(min=1), n_steps, depth, diverging,
            energy0 - proposal[:, 2 * dim + 1], step_size)
    early_uniforms = [block.to(dtype) for block in uniforms[1:]]
    if tree is not None:
        later = rng.counters(step_index, range(DEPTH_STREAM + len(early),
                                               DEPTH_STREAM + max_tree_depth))
        proposal, accept_sum, n_steps, depth, diverging = tree(
            point.position, point.log_density, point.grad, momentum, energy0, step_size,
            metric.inverse_mass, rng.keys, early_uniforms, later)
        return _draw(proposal, dim), NUTSInfo(
            accept_sum / n_steps.clamp(min=1), n_steps, depth, diverging,
            energy0 - proposal[:, 2 * dim + 1], step_size)
    zeros = torch.zeros(chains, dtype=dtype, device=device)

    left = right = _pack(point, momentum)  # [position | momentum | grad | log_density]
    proposal = torch.cat([point.position, point.grad, point.log_density[:, None],
                          zeros[:, None]], dim=1)  # log weight of the start is 0
    tree_log_weight = zeros
    momentum_sum = momentum
    active = torch.ones(chains, dtype=torch.bool, device=device)
    diverging = torch.zeros_like(active)
    depth = torch.zeros(chains, dtype=torch.int64, device=device)
    n_steps = zeros
    accept_sum = zeros
    for d in range(max_tree_depth):
        depth = depth + active.to(depth.dtype)  # Stan counts the doubling even if rejected
        log_uniforms = (early_uniforms[d] if d < len(early_uniforms) else
                        rng.uniform(step_index, DEPTH_STREAM + d, (2**d + 2,), dtype)).log()
        (going_right, signed_step, half_step, position, r, grad, log_density, sub_proposal,
         sub_log_weight, sub_momentum_sum, checkpoint_velocity, checkpoint_sum) = start_doubling(
            log_uniforms, step_size, left, right, proposal, d)
        building = active
        for n in range(2**d):
            starts = min(_trailing_zeros(n) if n else d, d)
            ends = min(_trailing_zeros(n + 1), d)
            r = torch.addcmul(r, half_step, grad)
            position = torch.addcmul(position, signed_step, velocity(r, metric))
            log_density, grad = potential_fn(position)
            (r, accept_sum, n_steps, building, diverging, sub_log_weight, sub_proposal,
             sub_momentum_sum) = leaf_update(
                position, r, grad, log_density, half_step, metric.inverse_mass, energy0,
                accept_sum, n_steps, building, diverging, sub_log_weight, sub_proposal,
                sub_momentum_sum, checkpoint_velocity, checkpoint_sum, log_uniforms[:, 2 + n],
                starts, ends, max_energy_error)
            if (n + 1) % leaves_per_check == 0 and n + 1 < 2**d and not bool(building.any()):
                break
        proposal, tree_log_weight, left, right, momentum_sum, active = _merge_subtree(
            building, going_right, log_uniforms[:, 1], sub_log_weight, tree_log_weight,
            sub_proposal, proposal, position, r, grad, log_density, left, right, momentum_sum,
            sub_momentum_sum, metric.inverse_mass)
        if not bool(active.any()):
            break

    info = NUTSInfo(accept_sum / n_steps.clamp(min=1), n_steps, depth, diverging,
                    energy0 - proposal[:, 2 * dim + 1], step_size)
    return _draw(proposal, dim), info


def _draw(proposal: torch.Tensor, dim: int) -> PhasePoint:
    """The point packed as ``[position | grad | log_density | log_weight]``."""
    return PhasePoint(proposal[:, :dim].contiguous(), proposal[:, 2 * dim].contiguous(),
                      proposal[:, dim:2 * dim].contiguous())


def _pack(point: PhasePoint, momentum: torch.Tensor) -> torch.Tensor:
    return torch.cat([point.position, momentum, point.grad, point.log_density[:, None]], dim=1)


class NUTSKernel(HamiltonianKernel):
    """Batched NUTS on the kernel protocol, with Stan's warm-up (see module docstring).

    ``potential_fn(flat [C, D]) -> (log_density [C], grad [C, D])``. ``gradient_graph``
    (``flat -> (grad, log_density)``, a traced graph) makes every transition one
    compiled loop (:mod:`~bayesdl.inference.compiled_nuts`), compiled in :meth:`init`.
    ``traced_gradient`` (the traced ``potential_fn`` as TorchScript) makes every
    transition one TorchScript call (:mod:`~bayesdl.inference.scripted_nuts`) or, on a
    GPU with ``cuda_graph``, replays of CUDA graphs
    (:mod:`~bayesdl.inference.graphed_nuts`), built in :meth:`init`.
    ``leaves_per_check``: leaves between reads of whether any chain still builds (each
    read is a host-device synchronisation on a GPU; the same draws for any value);
    0 chooses 1 on CPU, :data:`GPU_LEAVES_PER_CHECK` on a GPU.
    """

    def __init__(self, potential_fn: PotentialFn, max_tree_depth: int = 10,
                 target_accept: float = 0.8, dense_mass: bool = False,
                 max_energy_error: float = 1000.0, init_step_size: float = 1.0,
                 adapt_step_size: bool = True, adapt_mass_matrix: bool = True,
                 gradient_graph: Callable | None = None,
                 traced_gradient: TracedGradient | None = None, cuda_graph: bool = True,
                 leaves_per_check: int = 0):
        self.potential_fn = potential_fn
        self.cuda_graph = cuda_graph
        self.leaves_per_check = leaves_per_check
        self.gradient_graph = gradient_graph
        self.traced_gradient = traced_gradient
        self.compiled: CompiledTransition | None = None
        self.tree: Callable | None = None
        self.max_tree_depth = max_tree_depth
        self.max_energy_error = max_energy_error
        self.warmup = StanWarmup(target_accept, dense_mass, adapt_step_size,
                                 adapt_mass_matrix, init_step_size)

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int) -> NUTSState:
        log_density, grad = self.potential_fn(position)
        warmup = self.warmup.init(position, num_warmup)
        if self.gradient_graph is not None and self.compiled is None:
            compiled = CompiledTransition(self.gradient_graph, self.max_tree_depth,
                                          self.max_energy_error)
            try:
                compiled.compile(position, warmup.metric.inverse_mass)
                self.compiled = compiled
            except Exception as error:  # noqa: BLE001 - any compiler failure: run uncompiled
                warnings.warn(f"compiling the NUTS transition failed ({type(error).__name__}: "
                              f"{str(error).splitlines()[0][:160] if str(error) else ''}); "
                              "running it uncompiled", stacklevel=2)
                self.gradient_graph = None
        if not self.leaves_per_check:
            self.leaves_per_check = GPU_LEAVES_PER_CHECK if position.is_cuda else 1
        if (self.compiled is None and self.tree is None and self.traced_gradient is not None
                and self.traced_gradient.shape == position.shape):
            if position.is_cuda and self.cuda_graph:
                self.tree = self._graphed_tree(position, warmup.metric.inverse_mass)
            if self.tree is None:
                try:
                    self.tree = scripted_tree(self.traced_gradient.module, self.max_tree_depth,
                                              self.max_energy_error, position,
                                              self.leaves_per_check, EARLY_DOUBLINGS)
                except Exception as error:  # noqa: BLE001 - TorchScript declined: from Python
                    warnings.warn(f"scripting the NUTS tree failed ({type(error).__name__}); "
                                  "building it from Python", stacklevel=2)
        return NUTSState(PhasePoint(position, log_density, grad), warmup)

    def _graphed_tree(self, position: torch.Tensor, inverse_mass: torch.Tensor) -> GraphedTree | None:
        """The tree as CUDA graphs, or None (with a warning) if capture fails."""
        try:
            return GraphedTree(self.traced_gradient.module, self.max_tree_depth,
                               self.max_energy_error, position, inverse_mass,
                               self.leaves_per_check)
        except Exception as error:  # noqa: BLE001 - capture declined: the scripted tree
            reason = str(error).splitlines()[0][:160] if str(error) else ""
            warnings.warn(f"capturing the NUTS leaf as CUDA graphs failed "
                          f"({type(error).__name__}: {reason}); running it without",
                          stacklevel=2)
            return None

    def step(self, rng: ChainRNG, step_index: int, state: NUTSState,
             warmup: bool) -> tuple[NUTSState, NUTSInfo]:
        adapt = state.warmup
        if not adapt.started:
            adapt = self.warmup.begin(rng, step_index, adapt, state.point, self.potential_fn)
        point, info = nuts_transition(rng, step_index, state.point, adapt.step_size,
                                      adapt.metric, self.potential_fn, self.max_tree_depth,
                                      self.max_energy_error,
                                      self._compiled_for(state.point, adapt.metric),
                                      self._tree_for(state.point, adapt.metric),
                                      self.leaves_per_check or 1)
        if warmup:
            adapt = self.warmup.update(rng, step_index, adapt, point, info.acceptance_rate,
                                       self.potential_fn)
        return NUTSState(point, adapt), info

    def _tree_for(self, point: PhasePoint, metric: Metric) -> Callable | None:
        """The scripted or graphed tree if it was built for these shapes."""
        if self.tree is None or self.traced_gradient.shape != point.position.shape:
            return None
        if isinstance(self.tree, GraphedTree) and not self.tree.fits(point.position,
                                                                      metric.inverse_mass):
            return None
        return self.tree

    def _compiled_for(self, point: PhasePoint, metric: Metric) -> CompiledTransition | None:
        """The compiled transition if it was compiled for these shapes."""
        if self.compiled is None or not self.compiled.fits(point.position, metric.inverse_mass):
            return None
        return self.compiled
