"""Hooks on our kernels' ``step`` for the benchmarks: call something at a run's first
step, at its first draw after warm-up and after its last draw, to split a run's wall
time into set-up, warm-up, draws and what follows (conversion), or to profile the draws."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator

import torch


@contextlib.contextmanager
def step_hooks(method: str, warmup: int, draws: int, on_draws_start: Callable[[], None],
               on_draws_end: Callable[[], None],
               on_first_step: Callable[[], None] | None = None) -> Iterator[None]:
    """Run the hooks around the steps of ``method``'s kernel (its ``step`` wrapped)."""
    from bayesdl.inference.chees import ChEESKernel
    from bayesdl.inference.nuts import NUTSKernel

    kernel_class = {"nuts": NUTSKernel, "chees": ChEESKernel}[method]
    original = kernel_class.step

    def step(self, rng, step_index, state, warmup_phase):
        if step_index == 0 and on_first_step is not None:
            on_first_step()
        if step_index == warmup:
            on_draws_start()
        result = original(self, rng, step_index, state, warmup_phase)
        if step_index == warmup + draws - 1:
            on_draws_end()
        return result

    kernel_class.step = step
    try:
        yield
    finally:
        kernel_class.step = original


@contextlib.contextmanager
def phase_clock(method: str, warmup: int, draws: int, device: str) -> Iterator[dict[str, float]]:
    """Seconds of set-up (until the first step), warm-up, draws and after the last draw,
    filled in on exit; each clock read follows a device sync (three in a run)."""
    reads: dict[str, float] = {"start": time.perf_counter()}

    def read(name: str) -> Callable[[], None]:
        def clock() -> None:
            if device == "cuda":
                torch.cuda.synchronize()
            reads[name] = time.perf_counter()
        return clock

    phases: dict[str, float] = {}
    spent: dict[str, float] = {}
    with step_hooks(method, warmup, draws, read("draws"), read("end"), read("first")), \
            _timed_builds(device, spent):
        yield phases
    stop = time.perf_counter()
    if {"first", "draws", "end"} <= reads.keys():
        phases.update(setup_s=reads["first"] - reads["start"],
                      warmup_s=reads["draws"] - reads["first"],
                      draws_s=reads["end"] - reads["draws"], after_s=stop - reads["end"])
        phases.update(spent)


@contextlib.contextmanager
def _timed_builds(device: str, spent: dict[str, float]) -> Iterator[None]:
    """Seconds in the set-up's two big parts, added to ``spent``: tracing and checking
    the potential (``trace_s``) and building the trajectory or tree (``build_s``: scripting,
    CUDA-graph capture and the first runs that TorchScript profiles and fuses)."""
    from bayesdl.inference import chees, nuts
    from bayesdl.inference.potential import BatchedPotential

    patched: list[tuple[object, str, object]] = []

    def timed(owner: object, name: str, key: str) -> None:
        original = getattr(owner, name)

        def run(*args, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            started = time.perf_counter()
            result = original(*args, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            spent[key] = spent.get(key, 0.0) + time.perf_counter() - started
            return result

        patched.append((owner, name, original))
        setattr(owner, name, run)

    timed(BatchedPotential, "accelerate", "trace_s")
    timed(chees, "leapfrog_trajectory", "build_s")
    timed(nuts, "scripted_tree", "build_s")
    timed(nuts.NUTSKernel, "_graphed_tree", "build_s")
    try:
        yield
    finally:
        for owner, name, original in reversed(patched):
            setattr(owner, name, original)
