"""A pure tensor function replayed as one CUDA graph on static buffers.

A many-chain transition outside its leapfrog steps (momentum draw, acceptance,
adaptation) is some sixty small kernels; on a GPU launching them from Python costs
several microseconds each, far more than they run. Captured once as a CUDA graph, one
replay launches them all. Written by hand because ``torch.cuda.make_graphed_callables``
is for autograd modules, and ``torch.compile(mode="reduce-overhead")`` takes seconds
to compile what this captures in milliseconds. CUDA graphs themselves are PyTorch's.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import torch
from torch.utils._pytree import tree_flatten, tree_map, tree_unflatten


class GraphedCall:
    """``fn(*args)`` captured as a CUDA graph on static copies of ``example_args``.

    ``fn`` takes and returns pytrees (tuples, NamedTuples) of tensors, with the same
    shapes at every call, never changes its inputs, and reads nothing back to the host.
    A call copies its arguments into the static buffers (skipping any that already are
    one), replays, and returns the static outputs, which the next call overwrites: use
    or copy them before then. ``capture=False`` runs ``fn`` on the buffers and copies
    its results into the same kind of persistent outputs instead of replaying (any
    device: tests check the buffer logic, and that ``fn`` reads nothing, on a CPU).
    """

    def __init__(self, fn: Callable[..., Any], example_args: tuple, capture: bool = True,
                 warmup_runs: int = 3):
        flat, self.spec = tree_flatten(example_args)
        if not all(torch.is_tensor(value) for value in flat):
            raise TypeError("a graphed call's arguments must all be tensors")
        self.fn = fn
        self.inputs = [value.clone() for value in flat]
        self.outputs: Any = None
        if not capture:
            self.replay = self._run_into_outputs
            return
        device = self.inputs[0].device
        # TorchScript pieces inside ``fn`` profile and optimise over their first runs:
        # all of that before capture, on a side stream as PyTorch's CUDA-graph notes ask
        side = torch.cuda.Stream(device=device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side):
            for _ in range(warmup_runs):
                self._call_fn()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.outputs = self._call_fn()
        self.replay = self.graph.replay

    def _call_fn(self) -> Any:
        return self.fn(*tree_unflatten(self.inputs, self.spec))

    def _run_into_outputs(self) -> None:
        fresh = self._call_fn()
        if self.outputs is None:
            self.outputs = tree_map(lambda value: value.clone(), fresh)
        else:
            tree_map(lambda out, value: out.copy_(value), self.outputs, fresh)

    def __call__(self, *args: Any) -> Any:
        flat, spec = tree_flatten(args)
        if spec != self.spec:
            raise ValueError("a graphed call's arguments changed structure since capture")
        for buffer, value in zip(self.inputs, flat, strict=True):
            if value is not buffer:
                buffer.copy_(value)
        self.replay()
        return self.outputs


def graphed_call(fn: Callable[..., Any], example_args: tuple, capture: bool = True,
                 what: str = "a transition step") -> Callable[..., Any]:
    """``fn`` as a :class:`GraphedCall`, or, with a warning, ``fn`` itself if capture
    fails (an operation CUDA graphs cannot hold): the same results, one launch per op."""
    try:
        return GraphedCall(fn, example_args, capture=capture)
    except Exception as error:  # noqa: BLE001 - capture declined: run it eagerly
        reason = str(error).splitlines()[0][:160] if str(error) else ""
        warnings.warn(f"capturing {what} as a CUDA graph failed ({type(error).__name__}: "
                      f"{reason}); running it without", stacklevel=2)
        return fn
