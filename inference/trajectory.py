"""A fixed number of leapfrog steps for every chain as one call: ChEES-HMC's trajectory.

ChEES moves every chain the same number of steps, so the whole trajectory needs no
Python between steps. From Python each step is about ten calls (the two half-kicks,
the drift, the potential, the tuple it returns): microseconds each, a large part of a
step when the chains' tensors are small. Two ways to run it as one call:

- :class:`ScriptedLeapfrogs`: the loop as a TorchScript module with the traced
  potential inside, run by the Static Runtime on CPU (as the NUTS tree,
  :mod:`~bayesdl.inference.scripted_nuts`);
- :class:`GraphedLeapfrogs` (CUDA): one step captured as a CUDA graph and replayed
  ``steps`` times, one launch per step instead of one per operation (the per-operation
  launch cost, several microseconds, dominates small kernels on a GPU).

Both do the arithmetic of :func:`~bayesdl.inference.integrator.leapfrog`, operation for
operation, so the draws equal the Python loop's (a test compares them bit for bit).
The scripted loop runs the gradient's half of the traced graph at each step and the
log density's once, after the last (ChEES and HMC never read the others): logistic
regression, 1024 chains, 3805 -> 2113 us per step against the whole graph every step
(softplus over 583,000 logits is log-density only); eight schools 93 -> 72 us
(2026-12-07, 2-core AMD EPYC), the same bits.
The masked variants (:func:`masked_leapfrog_trajectory`) are static HMC's trajectory:
each chain takes its own number of steps (``ceil(length / step_size)``) and is held
where it stopped while the others go on, as :class:`~bayesdl.inference.hmc.HMCKernel`'s
Python loop does.
Written by hand because the leapfrog loop around a traced potential is ours; CUDA
graphs themselves are PyTorch's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from bayesdl.inference.integrator import apply_inverse_mass
from bayesdl.inference.traced_potential import TracedGradient, static_runtime

Trajectory = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
"""``(position, momentum, grad, step_size [C], inverse_mass, steps) -> (position,
log_density, grad, momentum)`` after ``steps >= 1`` leapfrog steps; a masked one takes
``(position, momentum, grad, log_density, step_size, inverse_mass, chain_steps [C],
steps)`` and moves chain ``c`` ``chain_steps[c] <= steps`` times."""


class ScriptedLeapfrogs(torch.nn.Module):
    """``steps`` leapfrog steps of signed size ``step_size [C]``, the traced gradient's
    halves inside: the gradient alone at each step (``gradient_only: flat -> grad``) and
    the log density once, at the end (``value: flat -> log_density``), as the steps
    before the last never need theirs. Both halves are the traced graph's own
    operations, so the same bits as the whole graph."""

    def __init__(self, gradient_only: torch.jit.ScriptModule, value: torch.jit.ScriptModule):
        super().__init__()
        self.gradient_only = gradient_only
        self.value = value

    def forward(self, position: torch.Tensor, momentum: torch.Tensor, grad: torch.Tensor,
                step_size: torch.Tensor, inverse_mass: torch.Tensor, steps: int):
        half = (0.5 * step_size)[:, None]
        step = step_size[:, None]
        for _ in range(steps):
            momentum = momentum + half * grad
            position = position + step * apply_inverse_mass(inverse_mass, momentum)
            grad = self.gradient_only(position)
            momentum = momentum + half * grad
        return position, self.value(position), grad, momentum


class ScriptedMaskedLeapfrogs(torch.nn.Module):
    """``steps`` leapfrog steps, chain ``c`` moving only in its first ``chain_steps[c]``;
    the log density once, at each chain's last position (kept for a chain that took no
    step), as in :class:`ScriptedLeapfrogs`."""

    def __init__(self, gradient_only: torch.jit.ScriptModule, value: torch.jit.ScriptModule):
        super().__init__()
        self.gradient_only = gradient_only
        self.value = value

    def forward(self, position: torch.Tensor, momentum: torch.Tensor, grad: torch.Tensor,
                log_density: torch.Tensor, step_size: torch.Tensor, inverse_mass: torch.Tensor,
                chain_steps: torch.Tensor, steps: int):
        half = (0.5 * step_size)[:, None]
        step = step_size[:, None]
        for n in range(steps):
            column = (chain_steps > n)[:, None]
            new_momentum = momentum + half * grad
            new_position = position + step * apply_inverse_mass(inverse_mass, new_momentum)
            new_grad = self.gradient_only(new_position)
            new_momentum = new_momentum + half * new_grad
            position = torch.where(column, new_position, position)
            momentum = torch.where(column, new_momentum, momentum)
            grad = torch.where(column, new_grad, grad)
        return (position, torch.where(chain_steps > 0, self.value(position), log_density),
                grad, momentum)


class GraphedLeapfrogs:
    """One leapfrog step captured as a CUDA graph on static buffers and replayed
    ``steps`` times per call; the step reads and writes the same buffers, so replays
    chain without copies. Built by :func:`leapfrog_trajectory` for CUDA positions, or
    with ``masked`` by :func:`masked_leapfrog_trajectory` (a step counter on the device,
    advanced by the graph, says which chains still move). ``capture=False`` calls the
    step itself instead of a replay (any device; for tests of the buffer logic)."""

    def __init__(self, step: Callable, position: torch.Tensor, inverse_mass: torch.Tensor,
                 warmup_runs: int = 3, masked: bool = False, capture: bool = True):
        self.step_module = step
        self.masked = masked
        self.position = position.clone()
        self.momentum = torch.zeros_like(position)
        self.grad = torch.zeros_like(position)
        self.log_density = position.new_zeros(position.shape[:1])
        self.half = position.new_zeros(position.shape[:1])[:, None]
        self.step_size = torch.zeros_like(self.half)
        self.inverse_mass = inverse_mass.clone()
        self.chain_steps = position.new_zeros(position.shape[:1])
        self.counter = position.new_zeros(())
        if not capture:  # the step called directly: the buffer logic, testable on a CPU
            self.replay = self._step
            return
        # TorchScript profiles and optimises a graph over its first runs (and may build
        # fused kernels): all of that happens before capture, on a side stream as
        # PyTorch's CUDA-graph notes ask
        side = torch.cuda.Stream(device=position.device)
        side.wait_stream(torch.cuda.current_stream(position.device))
        with torch.cuda.stream(side):
            for _ in range(warmup_runs):
                self._step()
        torch.cuda.current_stream(position.device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step()
        self.replay = self.graph.replay

    def _step(self) -> None:
        if self.masked:
            position, momentum, grad, log_density = self.step_module(
                self.position, self.momentum, self.grad, self.log_density, self.half,
                self.step_size, self.inverse_mass, self.chain_steps > self.counter)
            self.counter.add_(1)
        else:
            position, momentum, grad, log_density = self.step_module(
                self.position, self.momentum, self.grad, self.half, self.step_size,
                self.inverse_mass)
        self.position.copy_(position)
        self.momentum.copy_(momentum)
        self.grad.copy_(grad)
        self.log_density.copy_(log_density)

    def fits(self, position: torch.Tensor, inverse_mass: torch.Tensor) -> bool:
        return position.shape == self.position.shape and inverse_mass.shape == self.inverse_mass.shape

    def __call__(self, position: torch.Tensor, momentum: torch.Tensor, grad: torch.Tensor,
                 *rest):
        """As the scripted trajectory: ``(step_size, inverse_mass, steps)`` after ``grad``,
        or ``(log_density, step_size, inverse_mass, chain_steps, steps)`` when masked."""
        if self.masked:
            log_density, step_size, inverse_mass, chain_steps, steps = rest
            self.log_density.copy_(log_density)
            self.chain_steps.copy_(chain_steps)
            self.counter.zero_()
        else:
            step_size, inverse_mass, steps = rest
        self.position.copy_(position)
        self.momentum.copy_(momentum)
        self.grad.copy_(grad)
        self.half.copy_((0.5 * step_size)[:, None])
        self.step_size.copy_(step_size[:, None])
        self.inverse_mass.copy_(inverse_mass)
        for _ in range(steps):
            self.replay()
        return (self.position.clone(), self.log_density.clone(), self.grad.clone(),
                self.momentum.clone())


class _LeapfrogStep(torch.nn.Module):
    """One step on the graphed buffers (half and full step sizes as ``[C, 1]``)."""

    def __init__(self, gradient: torch.jit.ScriptModule):
        super().__init__()
        self.gradient = gradient

    def forward(self, position: torch.Tensor, momentum: torch.Tensor, grad: torch.Tensor,
                half: torch.Tensor, step: torch.Tensor, inverse_mass: torch.Tensor):
        momentum = momentum + half * grad
        position = position + step * apply_inverse_mass(inverse_mass, momentum)
        grad, log_density = self.gradient(position)
        momentum = momentum + half * grad
        return position, momentum, grad, log_density


class _MaskedLeapfrogStep(torch.nn.Module):
    """One step for the chains in ``moving [C]``; the others keep their state (the
    arithmetic of :func:`~bayesdl.inference.integrator.leapfrog` and
    :func:`~bayesdl.inference.integrator.select_point`)."""

    def __init__(self, gradient: torch.jit.ScriptModule):
        super().__init__()
        self.gradient = gradient

    def forward(self, position: torch.Tensor, momentum: torch.Tensor, grad: torch.Tensor,
                log_density: torch.Tensor, half: torch.Tensor, step: torch.Tensor,
                inverse_mass: torch.Tensor, moving: torch.Tensor):
        new_momentum = momentum + half * grad
        new_position = position + step * apply_inverse_mass(inverse_mass, new_momentum)
        new_grad, new_log_density = self.gradient(new_position)
        new_momentum = new_momentum + half * new_grad
        column = moving[:, None]
        return (torch.where(column, new_position, position),
                torch.where(column, new_momentum, momentum),
                torch.where(column, new_grad, grad),
                torch.where(moving, new_log_density, log_density))


def leapfrog_trajectory(traced: TracedGradient, position: torch.Tensor,
                        inverse_mass: torch.Tensor, cuda_graph: bool = True) -> Trajectory:
    """The trajectory for positions shaped like ``position``: on CUDA (with
    ``cuda_graph``) a CUDA graph of one step of ``traced.module``, or the scripted loop,
    with a warning, if capture fails; else the scripted loop over ``traced.split()``'s
    halves, run by the Static Runtime on CPU."""
    return _trajectory(traced, position, inverse_mass, cuda_graph, masked=False)


def masked_leapfrog_trajectory(traced: TracedGradient, position: torch.Tensor,
                               inverse_mass: torch.Tensor, cuda_graph: bool = True) -> Trajectory:
    """As :func:`leapfrog_trajectory`, each chain taking its own number of steps."""
    return _trajectory(traced, position, inverse_mass, cuda_graph, masked=True)


def graphed_leapfrogs(gradient: torch.jit.ScriptModule, position: torch.Tensor,
                      inverse_mass: torch.Tensor, masked: bool = False,
                      capture: bool = True) -> GraphedLeapfrogs:
    """One scripted leapfrog step (masked or not) on static buffers, captured as a CUDA
    graph (``capture=False``: called directly, on any device)."""
    step = _MaskedLeapfrogStep(gradient) if masked else _LeapfrogStep(gradient)
    scripted_step = torch.jit.freeze(torch.jit.script(step).eval())
    return GraphedLeapfrogs(scripted_step, position, inverse_mass, masked=masked, capture=capture)


def _trajectory(traced: TracedGradient, position: torch.Tensor, inverse_mass: torch.Tensor,
                cuda_graph: bool, masked: bool) -> Trajectory:
    if position.device.type == "cuda" and cuda_graph:
        try:
            return graphed_leapfrogs(traced.module, position, inverse_mass, masked)
        except Exception as error:  # noqa: BLE001 - capture declined: one launch per op
            reason = str(error).splitlines()[0][:160] if str(error) else ""
            warnings.warn(f"capturing the leapfrog step as a CUDA graph failed "
                          f"({type(error).__name__}: {reason}); running it without",
                          stacklevel=3)
    halves = traced.split()
    loop = ScriptedMaskedLeapfrogs(*halves) if masked else ScriptedLeapfrogs(*halves)
    module = torch.jit.freeze(torch.jit.script(loop).eval())
    return static_runtime(module, position)
