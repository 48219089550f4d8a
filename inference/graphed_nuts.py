"""A NUTS transition on a GPU as replays of CUDA graphs: one launch per leaf.

Run op by op, a NUTS leaf on CUDA is about a hundred small kernels (the leapfrog step,
the traced potential and its gradient, the leaf's bookkeeping), each launched by the
host at several microseconds: with small per-chain models the GPU waits on launches,
whatever the number of chains. Here every piece of a tree lives in static buffers and
each piece of work on them is captured once as a CUDA graph:

- ``begin``: a new doubling (direction, the edge it grows from, an empty subtree);
- one leaf graph per pair ``(starts, ends)``: the levels whose aligned U-turn blocks
  start or end at the leaf, which is all a leaf's work depends on besides the buffers
  (about ``2 * max_tree_depth`` pairs); the leaf's random number is gathered by a
  counter on the device that the graph advances, so no leaf needs a copy from the host;
- ``merge``: the finished subtree joins the tree.

Per doubling the host writes the doubling's uniforms, replays ``begin``, the leaves
(reading whether any chain still builds every ``leaves_per_check`` leaves) and
``merge``, then reads whether any chain is still active. The arithmetic is the Python
driver's (:func:`~bayesdl.inference.nuts.nuts_transition`) operation for operation, so
the draws are the same; with ``capture=False`` the same loop calls the pieces directly
instead of replaying them, which is how the tests check the buffer logic on a CPU.
Written by hand because no library batches a NUTS tree for torch; the graphs are
PyTorch's.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from bayesdl.inference.counter_rng import _uniform_grid
from bayesdl.inference.integrator import apply_inverse_mass
from bayesdl.inference.nuts_leaf import _trailing_zeros, leaf_update, merge_subtree, start_doubling

WARMUP_RUNS = 3  # TorchScript profiles and optimises its graphs over the first runs


def leaf_levels(max_tree_depth: int) -> list[list[tuple[int, int]]]:
    """``(starts, ends)`` of leaf ``n`` of doubling ``d``, as ``levels[d][n]``: the
    levels whose aligned blocks start at the leaf and those that end at it."""
    return [[(min(_trailing_zeros(n) if n else d, d), min(_trailing_zeros(n + 1), d))
             for n in range(2**d)] for d in range(max_tree_depth)]


class _TreeBuffers:
    """Every tensor a tree reads or writes, allocated once: the graphs are bound to
    their addresses."""

    def __init__(self, chains: int, dim: int, max_tree_depth: int, inverse_mass: torch.Tensor,
                 dtype: torch.dtype, device: torch.device):
        def zeros(*shape: int, kind: torch.dtype = dtype) -> torch.Tensor:
            return torch.zeros(shape, dtype=kind, device=device)

        edge, packed = 3 * dim + 1, 2 * dim + 2
        # the tree: [position | momentum | grad | log_density] at either end, the
        # proposal [position | grad | log_density | log_weight], and the statistics
        self.left, self.right, self.proposal = zeros(chains, edge), zeros(chains, edge), zeros(chains, packed)
        self.tree_log_weight, self.momentum_sum = zeros(chains), zeros(chains, dim)
        self.active, self.diverging = zeros(chains, kind=torch.bool), zeros(chains, kind=torch.bool)
        self.depth = zeros(chains, kind=torch.int64)
        self.accept_sum, self.n_steps = zeros(chains), zeros(chains)
        # the transition's inputs
        self.energy0, self.step_size = zeros(chains), zeros(chains)
        self.inverse_mass = torch.zeros_like(inverse_mass)
        self.log_uniforms = zeros(chains, 2**max_tree_depth + 2)
        # the subtree being built
        self.going_right, self.building = zeros(chains, kind=torch.bool), zeros(chains, kind=torch.bool)
        self.signed_step, self.half_step = zeros(chains, 1), zeros(chains, 1)
        self.position, self.r, self.grad = zeros(chains, dim), zeros(chains, dim), zeros(chains, dim)
        self.log_density = zeros(chains)
        self.sub_proposal, self.sub_log_weight = zeros(chains, packed), zeros(chains)
        self.sub_momentum_sum = zeros(chains, dim)
        self.checkpoint_velocity = zeros(max_tree_depth + 1, chains, dim)
        self.checkpoint_sum = zeros(max_tree_depth + 1, chains, dim)
        self.leaf_index = torch.full((chains, 1), 2, dtype=torch.int64, device=device)


class GraphedTree:
    """One NUTS tree for every chain from CUDA graphs (see the module docstring); called
    as :class:`~bayesdl.inference.scripted_nuts.ScriptedTree` is. ``gradient`` is the
    traced ``flat -> (grad, log_density)`` with NaN already -inf."""

    def __init__(self, gradient: Callable, max_tree_depth: int, max_energy_error: float,
                 example: torch.Tensor, inverse_mass: torch.Tensor, leaves_per_check: int = 4,
                 capture: bool = True):
        chains, dim = example.shape
        self.gradient = gradient
        self.max_tree_depth = max_tree_depth
        self.max_energy_error = max_energy_error
        self.leaves_per_check = leaves_per_check
        self.levels = leaf_levels(max_tree_depth)
        self.buffers = _TreeBuffers(chains, dim, max_tree_depth, inverse_mass, example.dtype,
                                    example.device)
        pairs = sorted({pair for doubling in self.levels for pair in doubling})
        steps: dict[object, Callable[[], None]] = {
            "begin": self._begin, "merge": self._merge,
            **{pair: (lambda pair=pair: self._leaf(*pair)) for pair in pairs}}
        self.replays = _capture(steps, self.buffers) if capture else steps

    def fits(self, position: torch.Tensor, inverse_mass: torch.Tensor) -> bool:
        return (position.shape == self.buffers.position.shape
                and inverse_mass.shape == self.buffers.inverse_mass.shape)

    def __call__(self, position: torch.Tensor, log_density: torch.Tensor, grad: torch.Tensor,
                 momentum: torch.Tensor, energy0: torch.Tensor, step_size: torch.Tensor,
                 inverse_mass: torch.Tensor, keys: torch.Tensor,
                 early_uniforms: list[torch.Tensor], later_counters: list[int]):
        """``(proposal, accept_sum, n_steps, depth, diverging)`` as the Python driver's."""
        b = self.buffers
        edge = torch.cat([position, momentum, grad, log_density[:, None]], dim=1)
        b.left.copy_(edge)
        b.right.copy_(edge)
        b.proposal.copy_(torch.cat([position, grad, log_density[:, None],
                                    torch.zeros_like(log_density)[:, None]], dim=1))
        b.momentum_sum.copy_(momentum)
        b.energy0.copy_(energy0)
        b.step_size.copy_(step_size)
        b.inverse_mass.copy_(inverse_mass)
        for buffer in (b.tree_log_weight, b.depth, b.accept_sum, b.n_steps, b.diverging):
            buffer.zero_()
        b.active.fill_(True)
        for d in range(self.max_tree_depth):
            if d < len(early_uniforms):
                uniforms = early_uniforms[d]
            else:
                uniforms = _uniform_grid(keys, later_counters[d - len(early_uniforms)],
                                         2**d + 2).to(position.dtype)
            b.log_uniforms[:, :2**d + 2].copy_(uniforms.log())
            self.replays["begin"]()
            for n, pair in enumerate(self.levels[d]):
                self.replays[pair]()
                if ((n + 1) % self.leaves_per_check == 0 and n + 1 < 2**d
                        and not bool(b.building.any())):
                    break
            self.replays["merge"]()
            if not bool(b.active.any()):
                break
        return (b.proposal.clone(), b.accept_sum.clone(), b.n_steps.clone(), b.depth.clone(),
                b.diverging.clone())

    def _begin(self) -> None:
        b = self.buffers
        b.depth.add_(b.active.to(torch.int64))  # Stan counts the doubling even if rejected
        (going_right, signed_step, half_step, position, r, grad, log_density, sub_proposal,
         sub_log_weight, sub_momentum_sum, _, _) = start_doubling(
            b.log_uniforms, b.step_size, b.left, b.right, b.proposal, 0)
        for buffer, value in ((b.going_right, going_right), (b.signed_step, signed_step),
                              (b.half_step, half_step), (b.position, position), (b.r, r),
                              (b.grad, grad), (b.log_density, log_density),
                              (b.sub_proposal, sub_proposal), (b.sub_log_weight, sub_log_weight),
                              (b.sub_momentum_sum, sub_momentum_sum), (b.building, b.active)):
            buffer.copy_(value)
        b.leaf_index.fill_(2)  # a doubling's leaf n uses column 2 + n of its uniforms

    def _leaf(self, starts: int, ends: int) -> None:
        b = self.buffers
        r = torch.addcmul(b.r, b.half_step, b.grad)
        position = torch.addcmul(b.position, b.signed_step, apply_inverse_mass(b.inverse_mass, r))
        grad, log_density = self.gradient(position)
        log_u = b.log_uniforms.gather(1, b.leaf_index).squeeze(1)
        (r, accept_sum, n_steps, building, diverging, sub_log_weight, sub_proposal,
         sub_momentum_sum) = leaf_update(
            position, r, grad, log_density, b.half_step, b.inverse_mass, b.energy0,
            b.accept_sum, b.n_steps, b.building, b.diverging, b.sub_log_weight,
            b.sub_proposal, b.sub_momentum_sum, b.checkpoint_velocity, b.checkpoint_sum,
            log_u, starts, ends, self.max_energy_error)
        for buffer, value in ((b.position, position), (b.r, r), (b.grad, grad),
                              (b.log_density, log_density), (b.accept_sum, accept_sum),
                              (b.n_steps, n_steps), (b.building, building),
                              (b.diverging, diverging), (b.sub_log_weight, sub_log_weight),
                              (b.sub_proposal, sub_proposal),
                              (b.sub_momentum_sum, sub_momentum_sum)):
            buffer.copy_(value)
        b.leaf_index.add_(1)

    def _merge(self) -> None:
        b = self.buffers
        frontier = torch.cat([b.position, b.r, b.grad, b.log_density[:, None]], dim=1)
        proposal, tree_log_weight, left, right, momentum_sum, active = merge_subtree(
            b.building, b.going_right, b.log_uniforms[:, 1], b.sub_log_weight,
            b.tree_log_weight, b.sub_proposal, b.proposal, frontier, b.left, b.right,
            b.momentum_sum, b.sub_momentum_sum, b.inverse_mass, b.position.shape[1])
        for buffer, value in ((b.proposal, proposal), (b.tree_log_weight, tree_log_weight),
                              (b.left, left), (b.right, right), (b.momentum_sum, momentum_sum),
                              (b.active, active)):
            buffer.copy_(value)


def _capture(steps: dict[object, Callable[[], None]],
             buffers: _TreeBuffers) -> dict[object, Callable[[], None]]:
    """Each step captured as a CUDA graph (one memory pool for all: they never run at
    once, and what outlives a step is in ``buffers``); returns their replays."""
    device = buffers.position.device
    side = torch.cuda.Stream(device=device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # PyTorch's CUDA-graph notes: warm up on a side stream
        for step in steps.values():
            for _ in range(WARMUP_RUNS):
                buffers.leaf_index.fill_(2)  # keeps the gather inside the uniforms
                step()
    torch.cuda.current_stream(device).wait_stream(side)
    pool = torch.cuda.graph_pool_handle()
    replays: dict[object, Callable[[], None]] = {}
    for key, step in steps.items():
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=pool):
            step()
        replays[key] = graph.replay
    return replays
