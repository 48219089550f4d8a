"""A pure tensor function as one CUDA graph (inference/graphed_call.py) and ChEES's
transition through such graphs: on a CPU with ``capture=False`` (the graph's buffer
logic, its outputs overwritten by the next call), the same draws as direct calls, and the
captured pieces read nothing back to the host (a read would fail capture on a GPU)."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch
from host_reads import HostReads
from test_nuts import _traced_for

import bayesdl.inference.chees as chees
from bayesdl.device import run_context
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.driver import run_kernel
from bayesdl.inference.graphed_call import GraphedCall, graphed_call


class Pair(NamedTuple):
    left: torch.Tensor
    right: torch.Tensor


def _affine(pair: Pair, scale: torch.Tensor) -> tuple[torch.Tensor, Pair]:
    return pair.left * scale + pair.right, Pair(pair.right, pair.left.sum().expand(2))


def test_a_graphed_call_copies_arguments_in_and_overwrites_its_outputs():
    first = Pair(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0]))
    call = GraphedCall(_affine, (first, torch.tensor(2.0)), capture=False)
    out, swapped = call(first, torch.tensor(2.0))
    assert torch.equal(out, torch.tensor([5.0, 8.0]))
    assert torch.equal(swapped.right, torch.tensor([3.0, 3.0]))
    kept = out
    out2, _ = call(Pair(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])), torch.tensor(3.0))
    # static outputs, as a CUDA graph's: the same tensors, new values
    assert out2 is kept and torch.equal(kept, torch.tensor([1.0, 4.0]))
    # an output passed back in is copied before the call overwrites it
    out3, _ = call(Pair(out2, out2), torch.tensor(1.0))
    assert torch.equal(out3, torch.tensor([2.0, 8.0]))


def test_a_graphed_call_refuses_other_arguments():
    call = GraphedCall(_affine, (Pair(torch.ones(2), torch.ones(2)), torch.tensor(1.0)),
                       capture=False)
    with pytest.raises(ValueError, match="changed structure"):
        call((torch.ones(2), torch.ones(2)), torch.tensor(1.0))
    with pytest.raises(TypeError, match="must all be tensors"):
        GraphedCall(_affine, (Pair(torch.ones(2), torch.ones(2)), 1.0), capture=False)


def test_a_failed_capture_warns_and_calls_the_function():
    # capture needs CUDA: on a CPU tensor it fails, and the function itself comes back
    args = (Pair(torch.ones(2), torch.ones(2)), torch.tensor(1.0))
    if torch.cuda.is_available():
        pytest.skip("capture succeeds with a GPU")
    with pytest.warns(UserWarning, match="capturing the test as a CUDA graph failed"):
        call = graphed_call(_affine, args, what="the test")
    assert call is _affine


def _chees_run(monkeypatch, graphed: bool, reads: list[str] | None = None):
    """ChEES on eight schools, 32 chains, 60 + 20; with ``graphed`` every transition piece
    through :class:`GraphedCall` buffers (``capture=False``), each run in a
    :class:`HostReads` mode whose findings go to ``reads``."""

    def emulated(fn, example_args, what, cuda_graph):
        call = GraphedCall(fn, example_args, capture=False)
        if reads is None:
            return call

        def watched(*args):
            mode = HostReads()
            with mode:
                out = call(*args)
            reads.extend(f"{what}: {seen}" for seen in mode.seen)
            return out
        return watched

    if graphed:
        monkeypatch.setattr(chees, "transition_call", emulated)
    with run_context(torch.device("cpu"), torch.float64):
        _, potential, start = _traced_for("eight_schools", chains=32, seed=1, scale=1.0)
        kernel = chees.ChEESKernel(potential.log_density_and_grad)
        return run_kernel(kernel, ChainRNG(list(range(32))), start,
                          potential.log_density(start), 60, 20, progress=False)


def test_chees_through_graph_buffers_takes_the_same_draws(monkeypatch):
    """The transition's pieces on static buffers whose outputs the next call overwrites
    (what a CUDA graph does) land on the direct calls' draws, warm-up included."""
    plain_draws, plain_stats, plain_state = _chees_run(monkeypatch, graphed=False)
    reads: list[str] = []
    draws, stats, state = _chees_run(monkeypatch, graphed=True, reads=reads)
    assert torch.equal(plain_draws, draws)
    for name in ("step_size", "n_steps", "trajectory_length", "acceptance_rate", "energy"):
        assert torch.equal(plain_stats[name], stats[name]), name
    assert torch.equal(plain_state.metric.inverse_mass, state.metric.inverse_mass)
    assert not torch.equal(draws[:, 0], draws[:, -1])
    # what a GPU captures makes no host read (each would be an error inside capture)
    assert reads == []
