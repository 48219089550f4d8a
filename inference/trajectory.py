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
Written by hand because the leapfrog loop around a traced potential is ours; CUDA
graphs themselves are PyTorch's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch

from bayesdl.inference.integrator import apply_inverse_mass
from bayesdl.inference.traced_potential import static_runtime

Trajectory = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
"""``(position, momentum, grad, step_size [C], inverse_mass, steps) -> (position,
log_density, grad, momentum)`` after ``steps >= 1`` leapfrog steps."""


class ScriptedLeapfrogs(torch.nn.Module):
    """``steps`` leapfrog steps of signed size ``step_size [C]``; ``gradient`` is the
    traced ``flat -> (grad, log_density)`` with NaN already -inf."""

    def __init__(self, gradient: torch.jit.ScriptModule):
        super().__init__()
        self.gradient = gradient

    def forward(self, position: torch.Tensor, momentum: torch.Tensor, grad: torch.Tensor,
                step_size: torch.Tensor, inverse_mass: torch.Tensor, steps: int):
        half = (0.5 * step_size)[:, None]
        step = step_size[:, None]
        log_density = torch.empty_like(step_size)
        for _ in range(steps):
            momentum = momentum + half * grad
            position = position + step * apply_inverse_mass(inverse_mass, momentum)
            grad, log_density = self.gradient(position)
            momentum = momentum + half * grad
        return position, log_density, grad, momentum


class GraphedLeapfrogs:
    """One leapfrog step captured as a CUDA graph on static buffers and replayed
    ``steps`` times per call; the step reads and writes the same buffers, so replays
    chain without copies. Built by :func:`leapfrog_trajectory` for CUDA positions."""

    def __init__(self, step: Callable, position: torch.Tensor, inverse_mass: torch.Tensor,
                 warmup_runs: int = 3):
        self.step_module = step
        self.position = position.clone()
        self.momentum = torch.zeros_like(position)
        self.grad = torch.zeros_like(position)
        self.log_density = position.new_zeros(position.shape[:1])
        self.half = position.new_zeros(position.shape[:1])[:, None]
        self.step_size = torch.zeros_like(self.half)
        self.inverse_mass = inverse_mass.clone()
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

    def _step(self) -> None:
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
                 step_size: torch.Tensor, inverse_mass: torch.Tensor, steps: int):
        self.position.copy_(position)
        self.momentum.copy_(momentum)
        self.grad.copy_(grad)
        self.half.copy_((0.5 * step_size)[:, None])
        self.step_size.copy_(step_size[:, None])
        self.inverse_mass.copy_(inverse_mass)
        for _ in range(steps):
            self.graph.replay()
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


def leapfrog_trajectory(gradient: torch.jit.ScriptModule, position: torch.Tensor,
                        inverse_mass: torch.Tensor, cuda_graph: bool = True) -> Trajectory:
    """The trajectory for positions shaped like ``position``: on CUDA (with
    ``cuda_graph``) a CUDA graph, or the scripted loop, with a warning, if capture
    fails; else the scripted loop, run by the Static Runtime on CPU."""
    if position.device.type == "cuda" and cuda_graph:
        step = torch.jit.freeze(torch.jit.script(_LeapfrogStep(gradient)).eval())
        try:
            return GraphedLeapfrogs(step, position, inverse_mass)
        except Exception as error:  # noqa: BLE001 - capture declined: one launch per op
            reason = str(error).splitlines()[0][:160] if str(error) else ""
            warnings.warn(f"capturing the leapfrog step as a CUDA graph failed "
                          f"({type(error).__name__}: {reason}); running it without",
                          stacklevel=2)
    module = torch.jit.freeze(torch.jit.script(ScriptedLeapfrogs(gradient)).eval())
    return static_runtime(module, position)
