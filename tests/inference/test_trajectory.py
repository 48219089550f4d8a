"""ChEES's and static HMC's trajectories as one call (inference/trajectory.py) against
the Python leapfrog loops they replace: the same arithmetic, so the same draws, bit for
bit; and on CUDA (when a GPU is present) the CUDA-graph replays against the same loops."""

from __future__ import annotations

import pytest
import torch
from fast_path_check import built_once_when_traced, failed_build_warns
from host_reads import HostReads
from test_nuts import _test_metric, _traced_for

from bayesdl.device import run_context
from bayesdl.inference.chees import ChEESKernel
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.driver import run_kernel
from bayesdl.inference.hmc import HMCKernel
from bayesdl.inference.integrator import PhasePoint, leapfrog, select_point
from bayesdl.inference.trajectory import (
    GraphedLeapfrogs,
    graphed_leapfrogs,
    leapfrog_trajectory,
    masked_leapfrog_trajectory,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def _python_leapfrogs(potential_fn, position, momentum, step_size, metric, steps):
    point = PhasePoint(position, *potential_fn(position))
    for _ in range(steps):
        point, momentum = leapfrog(point, momentum, step_size, metric, potential_fn)
    return point, momentum


def _compare(trajectory, potential_fn, start, metric, step_size, steps, exact=True):
    momentum = torch.randn(start.shape, dtype=start.dtype,
                           device="cpu", generator=torch.Generator().manual_seed(5)).to(start.device)
    point, r = _python_leapfrogs(potential_fn, start, momentum, step_size, metric, steps)
    _, grad0 = potential_fn(start)
    position, log_density, grad, r_fast = trajectory(start, momentum, grad0, step_size,
                                                     metric.inverse_mass, steps)
    assert not torch.equal(position, start)  # it moved
    _assert_same((position, log_density, grad, r_fast),
                 (point.position, point.log_density, point.grad, r), exact)


def _assert_same(mine: tuple, theirs: tuple, exact: bool) -> None:
    """Bit for bit, or (another device's kernels) to 1e-10."""
    for fast, plain in zip(mine, theirs, strict=True):
        if exact:
            assert torch.equal(fast, plain)
        else:
            torch.testing.assert_close(fast, plain, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("model", ["eight_schools", "logistic_regression"])
@pytest.mark.parametrize("dense", [False, True])
def test_scripted_trajectory_equals_the_python_leapfrog_loop(model, dense):
    with run_context(torch.device("cpu"), torch.float64):
        _, potential, start = _traced_for(model, chains=4, seed=0, scale=0.5)
        metric = _test_metric(potential.dim, dense)
        trajectory = leapfrog_trajectory(potential.traced_gradient, start, metric.inverse_mass)
        # signed per-chain steps, as NUTS and ChEES give them
        step_size = torch.tensor([0.05, -0.03, 0.04, 0.02], dtype=torch.float64)
        for steps in (1, 7):
            _compare(trajectory, potential.log_density_and_grad, start, metric, step_size,
                     steps)


def _compare_masked(trajectory, potential_fn, start, metric, step_size, exact=True):
    """Chains taking 1, 5, 3 and 5 steps: the one-call trajectory against HMC's masked
    Python loop."""
    chain_steps = torch.tensor([1.0, 5.0, 3.0, 5.0], dtype=start.dtype).repeat(
        start.shape[0] // 4).to(start.device)
    momentum = torch.randn(start.shape, dtype=start.dtype,
                           device="cpu", generator=torch.Generator().manual_seed(5)).to(start.device)
    point = PhasePoint(start, *potential_fn(start))
    r = momentum
    for n in range(5):
        moving = chain_steps > n
        new_point, new_r = leapfrog(point, r, step_size, metric, potential_fn)
        point = select_point(moving, new_point, point)
        r = torch.where(moving[:, None], new_r, r)
    log_density0, grad0 = potential_fn(start)
    fast = trajectory(start, momentum, grad0, log_density0, step_size, metric.inverse_mass,
                      chain_steps, 5)
    one_step = leapfrog(PhasePoint(start, log_density0, grad0), momentum, step_size, metric,
                        potential_fn)[0].position
    assert torch.equal(point.position[0], one_step[0])  # chain 0 stopped after one step
    _assert_same(fast, (point.position, point.log_density, point.grad, r), exact)


@pytest.mark.parametrize("model", ["eight_schools", "logistic_regression"])
@pytest.mark.parametrize("dense", [False, True])
def test_masked_trajectory_equals_hmcs_python_loop(model, dense):
    with run_context(torch.device("cpu"), torch.float64):
        _, potential, start = _traced_for(model, chains=4, seed=0, scale=0.5)
        metric = _test_metric(potential.dim, dense)
        trajectory = masked_leapfrog_trajectory(potential.traced_gradient, start,
                                                metric.inverse_mass)
        step_size = torch.tensor([0.05, -0.03, 0.04, 0.02], dtype=torch.float64)
        _compare_masked(trajectory, potential.log_density_and_grad, start, metric, step_size)


@pytest.mark.parametrize("masked", [False, True])
def test_graph_buffers_equal_the_python_loop_and_read_nothing_back(masked):
    """What a GPU captures as a graph, called directly on the CPU: the step on static
    buffers lands where the Python loop does, and makes no host read (which capture
    would refuse, and which would stall every replay)."""
    with run_context(torch.device("cpu"), torch.float64):
        _, potential, start = _traced_for("eight_schools", chains=4, seed=0, scale=0.5)
        metric = _test_metric(potential.dim, False)
        trajectory = graphed_leapfrogs(potential.traced_gradient.module, start,
                                       metric.inverse_mass, masked=masked, capture=False)
        step_size = torch.tensor([0.05, -0.03, 0.04, 0.02], dtype=torch.float64)
        compare = (_compare_masked if masked
                   else lambda *args: _compare(*args, steps=7))
        compare(trajectory, potential.log_density_and_grad, start, metric, step_size)
        reads = HostReads()
        with reads:
            trajectory.replay()
        assert reads.seen == []


@pytest.mark.parametrize("dense", [False, True])
def test_hmc_takes_the_same_draws_with_the_trajectory_as_one_call(dense):
    """Static HMC (per-chain step counts from per-chain step sizes) with its trajectory
    scripted lands on the Python loop's draws, Stan's warm-up included."""
    plain_stats = _same_draws_with_the_trajectory(
        lambda potential, traced: HMCKernel(potential.log_density_and_grad,
                                            trajectory_length=1.5, dense_mass=dense,
                                            traced_gradient=traced), chains=8)
    steps = plain_stats["n_steps"]  # [chains, draws]
    assert (steps != steps[:1]).any()  # chains took unequal numbers of steps


def _same_draws_with_the_trajectory(make_kernel, chains: int) -> dict:
    """Run ``make_kernel(potential, traced_gradient)`` on eight schools without and with
    the traced gradient; assert the same draws, step sizes and step counts (warm-up
    included) and that the chains moved. Returns the plain run's statistics."""
    with run_context(torch.device("cpu"), torch.float64):
        _, potential, start = _traced_for("eight_schools", chains=chains, seed=1, scale=1.0)
        runs = []
        for traced in (None, potential.traced_gradient):
            kernel = make_kernel(potential, traced)
            rng = ChainRNG(list(range(chains)))
            draws, stats, _ = run_kernel(kernel, rng, start, potential.log_density(start),
                                         60, 20, progress=False)
            assert (kernel.trajectory is not None) == (traced is not None)
            runs.append((draws, stats))
    (plain, plain_stats), (fast, fast_stats) = runs
    assert torch.equal(plain, fast)
    assert torch.equal(plain_stats["step_size"], fast_stats["step_size"])
    assert torch.equal(plain_stats["n_steps"], fast_stats["n_steps"])
    assert not torch.equal(plain[0], plain[-1])
    return plain_stats


def test_hmc_method_uses_the_trajectory_when_the_potential_is_traced(monkeypatch):
    import bayesdl.inference.hmc as hmc

    built_once_when_traced(monkeypatch, hmc, "masked_leapfrog_trajectory", "hmc", chains=4)


def test_a_failed_hmc_trajectory_script_warns_and_steps_from_python(monkeypatch):
    import bayesdl.inference.hmc as hmc

    failed_build_warns(monkeypatch, hmc, "masked_leapfrog_trajectory", "hmc", 4,
                       "scripting the HMC trajectory failed")


def test_chees_takes_the_same_draws_with_the_trajectory_as_one_call():
    """ChEES with its trajectory scripted lands on the draws of the Python loop, warm-up
    (step size, trajectory length, metric) included."""
    _same_draws_with_the_trajectory(
        lambda potential, traced: ChEESKernel(potential.log_density_and_grad,
                                              traced_gradient=traced), chains=64)


def test_chees_method_uses_the_trajectory_when_the_potential_is_traced(monkeypatch):
    import bayesdl.inference.chees as chees

    built_once_when_traced(monkeypatch, chees, "leapfrog_trajectory", "chees", chains=16)


def test_a_failed_trajectory_script_warns_and_steps_from_python(monkeypatch):
    import bayesdl.inference.chees as chees

    failed_build_warns(monkeypatch, chees, "leapfrog_trajectory", "chees", 16,
                       "scripting the leapfrog trajectory failed")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("model", ["eight_schools", "logistic_regression"])
def test_cuda_graph_trajectory_equals_the_python_leapfrog_loop(model):
    """On CUDA the trajectory is one leapfrog step captured as a CUDA graph, replayed;
    it must land where the Python loop on the same device lands."""
    device = torch.device("cuda")
    with run_context(device, torch.float64):
        from bayesdl.inference.potential import BatchedPotential
        from bayesdl.model_source import load_model_spec

        spec = load_model_spec(model, None, {}, device, torch.float64)
        potential = BatchedPotential(spec.model, spec.data)
        start = (torch.randn(1024, potential.dim, dtype=torch.float64,
                             device="cpu", generator=torch.Generator().manual_seed(0)) * 0.5).to(device)
        assert potential.accelerate(torch.zeros_like(start), "auto")
        metric = _test_metric(potential.dim, False)
        metric = metric._replace(inverse_mass=metric.inverse_mass[:1].expand(1024, -1)
                                 .contiguous().to(device))
        trajectory = leapfrog_trajectory(potential.traced_gradient, start,
                                         metric.inverse_mass)
        assert isinstance(trajectory, GraphedLeapfrogs)
        step_size = torch.full((1024,), 0.01, dtype=torch.float64, device=device)
        for steps in (1, 9):
            _compare(trajectory, potential.log_density_and_grad, start, metric, step_size,
                     steps, exact=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_graph_masked_trajectory_equals_hmcs_python_loop():
    """HMC's trajectory on CUDA: one masked step captured as a CUDA graph, replayed,
    with the step counter on the device."""
    device = torch.device("cuda")
    with run_context(device, torch.float64):
        from bayesdl.inference.potential import BatchedPotential
        from bayesdl.model_source import load_model_spec

        spec = load_model_spec("eight_schools", None, {}, device, torch.float64)
        potential = BatchedPotential(spec.model, spec.data)
        start = (torch.randn(1024, potential.dim, dtype=torch.float64,
                             device="cpu", generator=torch.Generator().manual_seed(0)) * 0.5).to(device)
        assert potential.accelerate(torch.zeros_like(start), "auto")
        metric = _test_metric(potential.dim, False)
        metric = metric._replace(inverse_mass=metric.inverse_mass[:1].expand(1024, -1)
                                 .contiguous().to(device))
        trajectory = masked_leapfrog_trajectory(potential.traced_gradient, start,
                                                metric.inverse_mass)
        assert isinstance(trajectory, GraphedLeapfrogs)
        step_size = torch.full((1024,), 0.05, dtype=torch.float64, device=device)
        for _ in range(2):  # a second call restarts the counter
            _compare_masked(trajectory, potential.log_density_and_grad, start, metric,
                            step_size, exact=False)
