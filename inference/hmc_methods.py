"""``--method nuts`` and ``--method hmc``: options, and the choice between our batched
kernels (default) and Pyro's (``--opt backend=pyro``)."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from bayesdl.errors import BayesdlError
from bayesdl.inference.batched_mcmc import run_batched_mcmc
from bayesdl.inference.chees import ChEESKernel
from bayesdl.inference.hmc import HMCKernel
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.nuts import NUTSKernel
from bayesdl.inference.potential import BatchedPotential
from bayesdl.inference.pyro_hmc import run_pyro_hmc
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings

BACKENDS = ("bayesdl", "pyro")


@dataclass
class NUTSOptions:
    """Options of ``--method nuts``.

    ``backend``: ``bayesdl`` (ours: all chains batched) or ``pyro`` (Pyro's NUTS, one
    chain at a time). ``potential`` (ours): ``auto`` traces the model's log density once
    into a lean graph, ``eager`` runs the model every call, ``compile`` compiles each
    leapfrog step with the potential into one Inductor graph (seconds to start, faster
    per step: for long runs). ``jit`` is Pyro's JIT (backend pyro). ``cuda_graph``: on a
    GPU, replay each leaf as one CUDA graph (false: launch it op by op).
    ``leaves_per_check``: leaves between reads of whether any chain still builds its
    tree (a host-device sync on a GPU; the draws are the same for any value; 0: 1 on
    CPU, 4 on a GPU).
    """

    backend: str = "bayesdl"
    target_accept: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    init_step_size: float = 1.0
    potential: str = "auto"
    jit: bool = False
    cuda_graph: bool = True
    leaves_per_check: int = 0


@dataclass
class HMCOptions:
    """Options of ``--method hmc``; ``num_steps=0`` uses ``trajectory_length``;
    ``jitter``: each transition integrates a uniform fraction in (0, 1] of that length
    (false: all of it, which resonates on near-Gaussian targets).
    ``backend``, ``potential``, ``jit`` and ``cuda_graph`` as for ``nuts``."""

    backend: str = "bayesdl"
    target_accept: float = 0.8
    num_steps: int = 0
    trajectory_length: float = 2 * math.pi
    jitter: bool = True
    dense_mass: bool = False
    init_step_size: float = 1.0
    potential: str = "auto"
    jit: bool = False
    cuda_graph: bool = True


@dataclass
class ChEESOptions:
    """Options of ``--method chees`` (ChEES-HMC, for many chains): ``target_accept`` is
    for the harmonic mean of the chains' acceptance probabilities; ``cuda_graph``: on a
    GPU, replay each leapfrog step as one CUDA graph (false: launch it op by op)."""

    target_accept: float = 0.651
    init_step_size: float = 0.1
    init_trajectory_length: float = 1.0
    learning_rate: float = 0.025
    max_steps: int = 1000
    potential: str = "auto"
    backend: str = "bayesdl"
    cuda_graph: bool = True


def _check(options, name: str) -> None:
    if options.backend not in BACKENDS:
        raise BayesdlError(f"unknown backend {options.backend!r} for {name}; choose bayesdl or pyro")
    if not 0 < options.target_accept < 1:
        raise BayesdlError(f"target_accept must be in (0, 1), got {options.target_accept}")
    if options.init_step_size <= 0:
        raise BayesdlError(f"init_step_size must be positive, got {options.init_step_size}")
    positive = ("trajectory_length", "init_trajectory_length", "learning_rate")
    for name in positive:
        value = getattr(options, name, 1.0)
        if not value > 0:  # also catches NaN
            raise BayesdlError(f"{name} must be positive, got {value}")
    for name, low in (("max_tree_depth", 1), ("max_steps", 1), ("num_steps", 0),
                      ("leaves_per_check", 0)):
        value = getattr(options, name, low)
        if value < low:
            raise BayesdlError(f"{name} must be >= {low}, got {value}")


def nuts_kernel(options: NUTSOptions, potential_fn, gradient_graph=None,
                traced_gradient=None) -> NUTSKernel:
    return NUTSKernel(potential_fn, options.max_tree_depth, options.target_accept,
                      options.dense_mass, init_step_size=options.init_step_size,
                      gradient_graph=gradient_graph, traced_gradient=traced_gradient,
                      cuda_graph=options.cuda_graph, leaves_per_check=options.leaves_per_check)


def hmc_kernel(options: HMCOptions, potential_fn, traced_gradient=None) -> HMCKernel:
    return HMCKernel(potential_fn, options.num_steps, options.trajectory_length,
                     options.target_accept, options.dense_mass,
                     init_step_size=options.init_step_size, traced_gradient=traced_gradient,
                     cuda_graph=options.cuda_graph, jitter=options.jitter)


def chees_kernel(options: ChEESOptions, potential_fn, traced_gradient=None) -> ChEESKernel:
    return ChEESKernel(potential_fn, options.target_accept, options.init_step_size,
                       options.init_trajectory_length, options.learning_rate, options.max_steps,
                       traced_gradient=traced_gradient, cuda_graph=options.cuda_graph)


def _run(spec: ModelSpec, options, settings: RunSettings, name: str,
         build: Callable) -> Samples:
    _check(options, name)
    if options.backend == "pyro":
        return run_pyro_hmc(spec, options, settings, name)

    def make_kernel(potential: BatchedPotential):
        if options.potential != "compile" or potential.gradient_graph is None:
            if build in (nuts_kernel, chees_kernel, hmc_kernel):  # tree / trajectory as one call
                return build(options, potential.log_density_and_grad,
                             traced_gradient=potential.traced_gradient)
            return build(options, potential.log_density_and_grad)
        if build is nuts_kernel:  # the whole leaf is compiled, the potential inside it
            return nuts_kernel(options, potential.log_density_and_grad, potential.gradient_graph)
        return build(options, potential.compiled_log_density_and_grad())

    return run_batched_mcmc(spec, settings, make_kernel, name, evaluation=options.potential)


def run_nuts(spec: ModelSpec, options: NUTSOptions, settings: RunSettings) -> Samples:
    return _run(spec, options, settings, "nuts", nuts_kernel)


def run_hmc(spec: ModelSpec, options: HMCOptions, settings: RunSettings) -> Samples:
    return _run(spec, options, settings, "hmc", hmc_kernel)


def run_chees(spec: ModelSpec, options: ChEESOptions, settings: RunSettings) -> Samples:
    if options.backend != "bayesdl":
        raise BayesdlError("chees has no pyro backend (Pyro has no ChEES kernel)")
    return _run(spec, options, settings, "chees", chees_kernel)


def nuts_factory(options: NUTSOptions):
    """The continuous kernel of ``--method sw+nuts`` / ``gibbs+nuts``."""
    return lambda log_density_fn, log_density_and_grad_fn: nuts_kernel(
        options, log_density_and_grad_fn)


def hmc_factory(options: HMCOptions):
    """The continuous kernel of ``--method sw+hmc`` / ``gibbs+hmc``."""
    return lambda log_density_fn, log_density_and_grad_fn: hmc_kernel(
        options, log_density_and_grad_fn)
