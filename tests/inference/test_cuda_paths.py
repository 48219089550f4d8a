"""Our NUTS and ChEES on CUDA tensors (skipped without a GPU; `bench/gpu_check.sh` runs
them on a lent one): the same transition as on the CPU, to rounding, and ChEES with
many chains against posteriordb's eight-schools reference (the criteria of
tests/models/test_posteriordb.py: means within 4 MCSE, sds within 10%)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from posteriordb_check import check_kernel_against_reference

import bayesdl
from bayesdl.device import run_context
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.graphed_nuts import GraphedTree
from bayesdl.inference.integrator import PhasePoint, unit_metric
from bayesdl.inference.nuts import nuts_transition
from bayesdl.inference.potential import BatchedPotential
from bayesdl.inference.scripted_nuts import scripted_tree
from bayesdl.model_source import load_model_spec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _traced(model: str, device: torch.device, chains: int) -> tuple[BatchedPotential, torch.Tensor]:
    spec = load_model_spec(model, None, {}, device, torch.float64)
    potential = BatchedPotential(spec.model, spec.data)
    start = (torch.randn(chains, potential.dim, dtype=torch.float64,
                         device="cpu", generator=torch.Generator().manual_seed(0)) * 0.5).to(device)
    assert potential.accelerate(torch.zeros_like(start), "auto")
    return potential, start


@pytest.mark.parametrize("model", ["eight_schools", "logistic_regression"])
@pytest.mark.parametrize("tree_kind", ["scripted", "graphed", "graphed, 3 leaves per check"])
def test_cuda_nuts_transition_equals_the_cpu_one(model, tree_kind):
    """NUTS trees on CUDA (scripted, or replayed CUDA graphs) and the scripted tree on the
    CPU, from the same states and keys, three transitions in a row: the same tree sizes
    and the same draws to rounding."""
    results = []
    for device in (torch.device("cpu"), torch.device("cuda")):
        with run_context(device, torch.float64):
            potential, start = _traced(model, device, chains=8)
            module = potential.traced_gradient.module
            metric = unit_metric(start)
            if device.type == "cpu" or tree_kind == "scripted":
                tree = scripted_tree(module, 10, 1000.0, start)
            else:
                tree = GraphedTree(module, 10, 1000.0, start, metric.inverse_mass,
                                   leaves_per_check=3 if "3" in tree_kind else 1)
            rng = ChainRNG(list(range(1, 9)), device=device)
            point = PhasePoint(start, *potential.log_density_and_grad(start))
            step_size = torch.full((8,), 0.02 if model == "logistic_regression" else 0.3,
                                   dtype=torch.float64, device=device)
            trace = []
            for step in range(3):
                point, info = nuts_transition(rng, step, point, step_size, metric,
                                              potential.log_density_and_grad, tree=tree)
                trace.append((point.position.cpu(), info.n_steps.cpu(), info.tree_depth.cpu()))
            results.append(trace)
    for (cpu_draw, cpu_steps, cpu_depth), (gpu_draw, gpu_steps, gpu_depth) in zip(*results, strict=True):
        assert torch.equal(cpu_steps, gpu_steps) and torch.equal(cpu_depth, gpu_depth)
        torch.testing.assert_close(gpu_draw, cpu_draw, rtol=1e-8, atol=1e-8)


def test_cuda_chees_many_chains_matches_posteriordb_eight_schools():
    check_kernel_against_reference("eight_schools", "eight_schools-eight_schools_noncentered",
                                   "chees", chains=1024, warmup=500, draws=100, device="cuda")


@pytest.mark.parametrize("cuda_graph", [True, False])
def test_cuda_nuts_runs_end_to_end_on_four_chains(monkeypatch, cuda_graph):
    """The default run on a GPU replays CUDA graphs (captured without a fallback
    warning); ``cuda_graph=false`` runs the scripted tree."""
    import bayesdl.inference.nuts as nuts

    built = []

    class CountedTree(GraphedTree):  # a subclass: the kernel checks isinstance
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(nuts, "GraphedTree", CountedTree)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        idata = bayesdl.infer("eight_schools", method="nuts", chains=4, warmup=100, draws=100,
                              seed=1, progress=False, device="cuda", cuda_graph=cuda_graph)
    assert not [w for w in caught if "CUDA graphs failed" in str(w.message)]
    assert len(built) == (1 if cuda_graph else 0)
    stats = idata.sample_stats
    assert np.isfinite(stats["energy"].values).all()
    assert 0.5 < float(stats["acceptance_rate"].mean()) < 1.0


def test_cuda_runs_switch_torchscripts_fuser_off_and_restore_it():
    """A CUDA run compiles no NNC kernels (slower set-up and draws on an H100/H200); the
    setting is the run's only: a CPU run, and the code after, keep theirs."""
    before = torch._C._jit_texpr_fuser_enabled()
    with run_context(torch.device("cuda"), torch.float64):
        assert not torch._C._jit_texpr_fuser_enabled()
    assert torch._C._jit_texpr_fuser_enabled() == before
    with run_context(torch.device("cpu"), torch.float64):
        assert torch._C._jit_texpr_fuser_enabled() == before


def test_cuda_chees_graphed_transition_takes_the_op_by_op_draws(monkeypatch):
    """ChEES's transition captured as CUDA graphs (momentum draw, acceptance with
    adaptation; the trajectory's steps) takes the draws of the same run launched op by op,
    and every capture succeeds (no fallback warning)."""
    import bayesdl.inference.chees as chees

    captured = []
    original = chees.graphed_call

    def counted(*args, **kwargs):
        call = original(*args, **kwargs)
        captured.append(call)
        return call

    monkeypatch.setattr(chees, "graphed_call", counted)
    runs = {}
    for cuda_graph in (True, False):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            runs[cuda_graph] = bayesdl.infer("eight_schools", method="chees", chains=128,
                                             warmup=150, draws=50, seed=3, progress=False,
                                             device="cuda", cuda_graph=cuda_graph)
        assert not [w for w in caught if "CUDA graph" in str(w.message)], \
            [str(w.message) for w in caught]
    assert len(captured) == 3  # begin, finish with adaptation, finish: once each
    graphed, plain = runs[True], runs[False]
    for name in ("mu", "tau", "theta_trans"):
        np.testing.assert_allclose(graphed.posterior[name].values, plain.posterior[name].values,
                                   rtol=1e-10, atol=1e-10)
    for name in ("step_size", "n_steps", "acceptance_rate"):
        np.testing.assert_allclose(graphed.sample_stats[name].values,
                                   plain.sample_stats[name].values, rtol=1e-10, atol=1e-12)
