"""Our NUTS and ChEES on CUDA tensors (skipped without a GPU; `bench/gpu_check.sh` runs
them on a lent one): the same transition as on the CPU, to rounding, and ChEES with
many chains against posteriordb's eight-schools reference (the criteria of
tests/models/test_posteriordb.py: means within 4 MCSE, sds within 10%)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from posteriordb_check import check_kernel_against_reference

import bayesdl
from bayesdl.device import run_context
from bayesdl.inference.counter_rng import ChainRNG
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
                         generator=torch.Generator().manual_seed(0)) * 0.5).to(device)
    assert potential.accelerate(torch.zeros_like(start), "auto")
    return potential, start


@pytest.mark.parametrize("model", ["eight_schools", "logistic_regression"])
def test_cuda_nuts_transition_equals_the_cpu_one(model):
    """One scripted NUTS tree per chain on CUDA and on the CPU, from the same state and
    keys: the same tree sizes and the same draw to rounding."""
    results = []
    for device in (torch.device("cpu"), torch.device("cuda")):
        with run_context(device, torch.float64):
            potential, start = _traced(model, device, chains=8)
            tree = scripted_tree(potential.traced_gradient.module, 10, 1000.0, start)
            rng = ChainRNG(list(range(1, 9)), device=device)
            point = PhasePoint(start, *potential.log_density_and_grad(start))
            step_size = torch.full((8,), 0.02 if model == "logistic_regression" else 0.3,
                                   dtype=torch.float64, device=device)
            draw, info = nuts_transition(rng, 3, point, step_size, unit_metric(start),
                                         potential.log_density_and_grad, tree=tree)
            results.append((draw.position.cpu(), info.n_steps.cpu(), info.tree_depth.cpu()))
    (cpu_draw, cpu_steps, cpu_depth), (gpu_draw, gpu_steps, gpu_depth) = results
    assert torch.equal(cpu_steps, gpu_steps) and torch.equal(cpu_depth, gpu_depth)
    torch.testing.assert_close(gpu_draw, cpu_draw, rtol=1e-8, atol=1e-8)


def test_cuda_chees_many_chains_matches_posteriordb_eight_schools():
    check_kernel_against_reference("eight_schools", "eight_schools-eight_schools_noncentered",
                                   "chees", chains=1024, warmup=500, draws=100, device="cuda")


def test_cuda_nuts_runs_end_to_end_on_four_chains():
    idata = bayesdl.infer("eight_schools", method="nuts", chains=4, warmup=100, draws=100,
                          seed=1, progress=False, device="cuda")
    stats = idata.sample_stats
    assert np.isfinite(stats["energy"].values).all()
    assert 0.5 < float(stats["acceptance_rate"].mean()) < 1.0
