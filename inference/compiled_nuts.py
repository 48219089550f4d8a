"""A whole NUTS transition (every doubling, every leaf) as one compiled loop.

:func:`~bayesdl.inference.nuts.nuts_transition` drives the tree from Python: a call per
leaf, and per doubling a random-number call, the choice of direction, the merge. On
CPU each of those costs microseconds of interpreter and dispatch, more than the
leaf's arithmetic on small models. Here the same tree is one ``torch.while_loop``
whose body is one leaf plus, selected by masks, the start of a doubling before it and
the merge of the subtree after it. Inductor compiles the loop with its C++ wrapper, so
the loop itself runs in C++ and a transition is one call from Python.

Written by hand because no library offers a batched NUTS tree for torch (NumPyro's
iterative NUTS does the same in JAX). The draws equal the uncompiled transition's to
rounding: the per-leaf uniforms are the same counter-based hashes
(:mod:`~bayesdl.inference.counter_rng`), computed inside the loop, and the leaf, merge
and U-turn arithmetic are the same functions.

All chains share the doubling ``d`` and leaf ``n`` (they step in lockstep, as in the
Python driver); a chain whose subtree stopped is masked until the subtree ends for all.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from bayesdl.inference.counter_rng import uniform_at
from bayesdl.inference.nuts_leaf import DEPTH_STREAM, masked_leaf, merge_subtree
from bayesdl.inference.traced_potential import compile_graph


def _log_uniform(keys: torch.Tensor, step: torch.Tensor, stream: torch.Tensor,
                 element: int | torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """What the Python driver draws: ``rng.uniform(step, stream, ..., dtype).log()``."""
    return uniform_at(keys, step, stream, element).to(dtype).log()


class _Layout:
    """Column ranges of the packed per-chain state ``[C, width]`` carried by the loop:
    one wide tensor instead of ~15 narrow ones, as every carried or intermediate tensor
    is an allocation per leaf in the compiled loop. Scalar fields unpack to ``[C]``,
    the others to ``[C, size]`` (also when ``size`` is 1: a one-dimensional model)."""

    SCALARS = ("tree_log_weight", "n_steps", "accept_sum", "depth", "log_density",
               "sub_log_weight")

    def __init__(self, dim: int):
        edge, packed_proposal = 3 * dim + 1, 2 * dim + 2
        self.fields: dict[str, tuple[int, int]] = {}
        width = 0
        for name, size in [("left", edge), ("right", edge), ("proposal", packed_proposal),
                           ("tree_log_weight", 1), ("momentum_sum", dim), ("n_steps", 1),
                           ("accept_sum", 1), ("depth", 1), ("position", dim), ("r", dim),
                           ("grad", dim), ("log_density", 1), ("sub_proposal", packed_proposal),
                           ("sub_log_weight", 1), ("sub_momentum_sum", dim)]:
            self.fields[name] = (width, size)
            width += size

    def unpack(self, state: torch.Tensor) -> dict[str, torch.Tensor]:
        return {name: state[:, start] if name in self.SCALARS else state[:, start:start + size]
                for name, (start, size) in self.fields.items()}

    def pack(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        return torch.cat([values[name].reshape(values[name].shape[0], size)
                          for name, (_, size) in self.fields.items()], dim=1)


FLAGS = ("active", "diverging", "going_right", "building")  # the loop's boolean [C, 4]


def _transition(gradient_graph: Callable, levels: int, max_energy_error: float,
                position: torch.Tensor, log_density: torch.Tensor, grad: torch.Tensor,
                momentum: torch.Tensor, energy0: torch.Tensor, step_size: torch.Tensor,
                inverse_mass: torch.Tensor, keys: torch.Tensor, step_index: torch.Tensor,
                *constants: torch.Tensor):
    """One NUTS transition for all chains (see the module docstring). Returns
    ``(proposal [C, 2D+2], accept_sum, n_steps, depth, diverging)``; the proposal packs
    ``[position | grad | log_density | log_weight]``."""
    from torch._higher_order_ops.while_loop import while_loop_op

    chains, dim = position.shape
    dtype, device = position.dtype, position.device
    layout = _Layout(dim)
    level = torch.arange(1, levels + 1, device=device)
    block_sizes = torch.tensor([2**j for j in level.tolist()], device=device)  # leaves per block
    zeros = torch.zeros(chains, dtype=dtype, device=device)
    edge = torch.cat([position, momentum, grad, log_density[:, None]], dim=1)
    proposal = torch.cat([position, grad, log_density[:, None], zeros[:, None]], dim=1)
    state = layout.pack(dict(
        left=edge, right=edge, proposal=proposal, tree_log_weight=zeros, momentum_sum=momentum,
        n_steps=zeros, accept_sum=zeros, depth=zeros, position=position, r=momentum, grad=grad,
        log_density=log_density, sub_proposal=proposal, sub_log_weight=zeros,
        sub_momentum_sum=momentum))
    flags = torch.zeros(chains, len(FLAGS), dtype=torch.bool, device=device)
    flags[:, 0] = True  # every chain is active at the start
    counters = torch.tensor([0, 0, 1], device=device)  # doubling d, leaf n, 2^d
    checkpoints = position.new_zeros((2, levels, chains, dim))  # velocity, momentum sum

    def keep_going(counters, state, flags, checkpoints, *extras):
        return flags[:, 0].any() & (counters[0] < levels)

    def leaf(counters, state, flags, checkpoints, energy0, step_size, inverse_mass, keys,
             step_index, level, block_sizes, *constants):
        def potential(flat):
            return gradient_graph(flat, *constants)

        d, n, size = counters[0], counters[1], counters[2]
        s = layout.unpack(state)
        active, diverging, going_right, building = flags.unbind(1)
        stream = d + DEPTH_STREAM
        # a new doubling starts at leaf 0: pick its direction, start from that edge
        start = n == 0
        depth = s["depth"] + (active & start).to(dtype)
        going_right = torch.where(
            start, _log_uniform(keys, step_index, stream, 0, dtype) < -math.log(2.0),
            going_right)
        edge = torch.where(going_right[:, None], s["right"], s["left"])
        position = torch.where(start, edge[:, :dim], s["position"])
        r = torch.where(start, edge[:, dim:2 * dim], s["r"])
        grad = torch.where(start, edge[:, 2 * dim:3 * dim], s["grad"])
        proposal = s["proposal"]
        sub_proposal = torch.where(start, proposal, s["sub_proposal"])
        sub_log_weight = torch.where(start, -math.inf, s["sub_log_weight"])
        sub_momentum_sum = torch.where(start, 0.0, s["sub_momentum_sum"])
        building = torch.where(start, active, building)
        signed_step = torch.where(going_right, step_size, -step_size)[:, None]
        # the leaf, with the levels whose aligned blocks start or end at leaf n
        within = level <= d
        start_mask = (within & (n % block_sizes == 0))[:, None, None]
        end_mask = (within & ((n + 1) % block_sizes == 0))[:, None]
        (position, r, grad, log_density, accept_sum, n_steps, building, diverging,
         sub_log_weight, sub_proposal, sub_momentum_sum, checkpoint_velocity,
         checkpoint_sum) = masked_leaf(
            potential, max_energy_error, position, r, grad, signed_step, inverse_mass,
            energy0, s["accept_sum"], s["n_steps"], building, diverging, sub_log_weight,
            sub_proposal, sub_momentum_sum, checkpoints[0], checkpoints[1],
            _log_uniform(keys, step_index, stream, n + 2, dtype), start_mask, end_mask)
        # the subtree ends after its last leaf, or when every chain has stopped building
        finished = (n + 1 == size) | ~building.any()
        frontier = torch.cat([position, r, grad, log_density[:, None]], dim=1)
        proposal, tree_log_weight, left, right, momentum_sum, still_active = merge_subtree(
            building & finished, going_right, _log_uniform(keys, step_index, stream, 1, dtype),
            sub_log_weight, s["tree_log_weight"], sub_proposal, proposal, frontier, s["left"],
            s["right"], s["momentum_sum"], sub_momentum_sum, inverse_mass, dim)
        active = torch.where(finished, still_active, active)
        counters = torch.stack([d + finished.to(d.dtype), torch.where(finished, 0, n + 1),
                                torch.where(finished, 2 * size, size)])
        state = layout.pack(dict(
            left=left, right=right, proposal=proposal, tree_log_weight=tree_log_weight,
            momentum_sum=momentum_sum, n_steps=n_steps, accept_sum=accept_sum, depth=depth,
            position=position, r=r, grad=grad, log_density=log_density,
            sub_proposal=sub_proposal, sub_log_weight=sub_log_weight,
            sub_momentum_sum=sub_momentum_sum))
        flags = torch.stack([active, diverging, going_right, building], dim=1)
        return counters, state, flags, torch.stack([checkpoint_velocity, checkpoint_sum])

    # the operator itself rather than torch.while_loop, which would trace the body with
    # Dynamo (a second longer); every tensor the body reads is passed in explicitly
    _, state, flags, _ = while_loop_op(
        keep_going, leaf, (counters, state, flags, checkpoints),
        (energy0, step_size, inverse_mass, keys, step_index, level, block_sizes, *constants))
    final = layout.unpack(state)
    return (final["proposal"], final["accept_sum"], final["n_steps"],
            final["depth"].to(torch.int64), flags[:, 1])


def _lift_constants(graph: Callable) -> tuple[Callable, tuple[torch.Tensor, ...]]:
    """``(function, constants)`` with ``function(flat, *constants) == graph(flat)``: the
    tensors an FX graph holds (data, fixed covariances) become inputs, as the loop body
    must receive every tensor it reads as an input of the loop; each is a copy, so no
    two share storage. (Side-effect-only error checks, which a loop body cannot hold
    either, are already gone: see ``traced_potential._errors_to_nan``.)"""
    if not isinstance(graph, torch.fx.GraphModule):
        return graph, ()
    new_graph = torch.fx.Graph()
    mapping: dict[torch.fx.Node, torch.fx.Node] = {}
    constants: list[torch.Tensor] = []
    for node in graph.graph.nodes:
        if node.op == "placeholder":
            mapping[node] = new_graph.placeholder(node.name)
    for node in graph.graph.nodes:
        if node.op != "get_attr":
            continue
        value = graph
        for part in node.target.split("."):
            value = getattr(value, part)
        if isinstance(value, torch.Tensor):
            mapping[node] = new_graph.placeholder(f"constant_{len(constants)}")
            constants.append(value.detach().clone())
    for node in graph.graph.nodes:
        if node not in mapping:
            mapping[node] = new_graph.node_copy(node, lambda old: mapping[old])
    return torch.fx.GraphModule(graph, new_graph), tuple(constants)


class CompiledTransition:
    """:func:`_transition` compiled for ``[C, D]`` positions and one metric shape; call
    :meth:`compile` once (seconds; cached on disk by Inductor), then call per draw."""

    def __init__(self, gradient_graph: Callable, max_tree_depth: int,
                 max_energy_error: float = 1000.0):
        self.gradient_graph = gradient_graph
        self.levels = max_tree_depth
        self.max_energy_error = max_energy_error
        self.compiled: Callable | None = None
        self.shape: torch.Size | None = None
        self.metric_shape: torch.Size | None = None

    def compile(self, position: torch.Tensor, inverse_mass: torch.Tensor) -> None:
        """Trace and compile for these shapes and dtype (seconds, once per model, shape
        and dtype: Inductor caches the result on disk)."""
        chains = position.shape[0]
        dtype = position.dtype
        self.shape, self.metric_shape = position.shape, inverse_mass.shape
        example = [position, torch.zeros(chains, dtype=dtype, device=position.device),
                   torch.zeros_like(position), torch.zeros_like(position),
                   torch.zeros(chains, dtype=dtype, device=position.device),
                   torch.full((chains,), 0.1, dtype=dtype, device=position.device),
                   inverse_mass, torch.zeros(chains, dtype=torch.int64, device=position.device),
                   torch.zeros((), dtype=torch.int64, device=position.device)]
        gradient_graph, self.constants = _lift_constants(self.gradient_graph)
        # distinct tensors: the compiler would otherwise assume arguments alias each other
        example = [tensor.clone() for tensor in [*example, *self.constants]]

        def transition(*args):
            return _transition(gradient_graph, self.levels, self.max_energy_error, *args)

        self.compiled = compile_graph(transition, example, cpp_wrapper=True)

    def fits(self, position: torch.Tensor, inverse_mass: torch.Tensor) -> bool:
        return position.shape == self.shape and inverse_mass.shape == self.metric_shape

    def __call__(self, position: torch.Tensor, log_density: torch.Tensor, grad: torch.Tensor,
                 momentum: torch.Tensor, energy0: torch.Tensor, step_size: torch.Tensor,
                 inverse_mass: torch.Tensor, keys: torch.Tensor, step_index: torch.Tensor):
        """``(proposal, accept_sum, n_steps, depth, diverging)`` of one transition (see
        :func:`_transition`). The compiled code reads its inputs as contiguous tensors of
        the compiled shapes (it does not check them), hence the ``contiguous`` calls."""
        return self.compiled(position.contiguous(), log_density.contiguous(), grad.contiguous(),
                             momentum.contiguous(), energy0.contiguous(),
                             step_size.contiguous(), inverse_mass.contiguous(),
                             keys.contiguous(), step_index, *self.constants)
