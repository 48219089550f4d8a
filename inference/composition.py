"""Metropolis-within-Gibbs: discrete sites by Swendsen-Wang or Gibbs, continuous sites by
any batched continuous kernel, in one BatchedKernel.

One step of ``MetropolisWithinGibbs`` updates, in turn,

1. every discrete site given the rest: a Potts site by one Swendsen-Wang update
   (``discrete="sw"``, generalised SW when data depend on the labels) or one heat-bath
   sweep (``discrete="gibbs"``); any other finite site by a Gibbs draw from its full
   conditional (all its elements at once: they must be conditionally independent);
2. the continuous sites by one step of a continuous kernel whose target is the joint
   density *given the new discrete values*.

The continuous kernel comes from a factory ``make(log_density_fn, log_density_and_grad_fn)``
(``log_density_fn(flat [C, D]) -> [C]``, ``log_density_and_grad_fn(flat) -> ([C], [C, D])``).
Kernels hold configuration only, so the composition builds the continuous kernel
afresh each step with the current discrete values baked into its target, then calls
its ``reevaluate(state)`` (the BatchedKernel protocol's optional method) because the
log density (and gradient) cached in its state belonged to the previous target.

Spellings on the command line: ``sw`` and ``gibbs`` (models whose latent sites are all
discrete), and ``sw+mh``, ``gibbs+mh`` (and ``sw+NAME`` for any continuous kernel
registered with :func:`mixed_method`). Positions for the driver are the discrete value
indices as floats followed by the flat unconstrained continuous values.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.connected_components import METHODS as COMPONENT_METHODS
from bayesdl.inference.counter_rng import ChainRNG, mix64
from bayesdl.inference.driver import run_kernel
from bayesdl.inference.gibbs import PottsGibbsKernel
from bayesdl.inference.kernel import BatchedKernel
from bayesdl.inference.mixed_potential import MixedPotential
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.pyro_kernel import PyroKernelAdapter
from bayesdl.inference.random_walk import RandomWalkKernel
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings
from bayesdl.inference.swendsen_wang import SwendsenWangKernel, categorical_from_uniform

DISCRETE_KERNELS = ("sw", "gibbs")
SITE_STREAM = 53_001


def fold_in(rng: ChainRNG, salt: int) -> ChainRNG:
    """Independent per-chain generators for one purpose (JAX's ``fold_in``): the discrete
    updates of each site and sweep draw from their own keys, never from the streams of
    the continuous kernel."""
    out = ChainRNG.__new__(ChainRNG)
    out.keys = mix64(rng.keys ^ mix64(torch.tensor(salt, dtype=torch.int64, device=rng.device)))
    out.device = rng.device
    return out

LogDensityFn = Callable[[torch.Tensor], torch.Tensor]
LogDensityGradFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
ContinuousFactory = Callable[[LogDensityFn, LogDensityGradFn], BatchedKernel]


class MixedState(NamedTuple):
    discrete: torch.Tensor  # [C, M] value indices
    continuous: Any  # the continuous kernel's state (None without continuous sites)
    flat: torch.Tensor  # [C, D] continuous unconstrained position
    log_density: torch.Tensor  # [C] joint log density


class MetropolisWithinGibbs:
    """Discrete sites by SW/Gibbs, continuous sites by ``continuous`` (a kernel factory)."""

    def __init__(self, potential: MixedPotential, discrete: str = "sw",
                 continuous: ContinuousFactory | None = None, components: str = "auto",
                 discrete_sweeps: int = 1):
        if discrete not in DISCRETE_KERNELS:
            raise BayesdlError(f"unknown discrete kernel {discrete!r}; choose sw or gibbs")
        if components not in COMPONENT_METHODS:
            raise BayesdlError(f"unknown components method {components!r}; choose one of "
                               f"{', '.join(COMPONENT_METHODS)}")
        if discrete_sweeps < 1:
            raise BayesdlError(f"discrete_sweeps must be >= 1, got {discrete_sweeps}")
        if not potential.discrete:
            raise BayesdlError("the model has no discrete latent site for sw/gibbs to update; "
                               "use a continuous method (nuts, mh)")
        if potential.dim and continuous is None:
            raise BayesdlError(f"the model has continuous sites ({', '.join(potential.continuous)}); "
                               f"use a composed method such as --method {discrete}+mh")
        if discrete == "sw" and not any(s.potts is not None for s in potential.discrete):
            raise BayesdlError("sw needs a Potts site in the model; use gibbs for other "
                               "discrete sites")
        self.potential = potential
        self.discrete = discrete
        self.continuous = continuous
        self.components = components
        self.discrete_sweeps = discrete_sweeps

    def _continuous_kernel(self, discrete: torch.Tensor) -> BatchedKernel:
        potential = self.potential
        kernel = self.continuous(lambda flat: potential.log_density(flat, discrete),
                                 lambda flat: potential.log_density_and_grad(flat, discrete))
        if not hasattr(kernel, "reevaluate"):
            raise BayesdlError(f"{type(kernel).__name__} has no reevaluate(state); it cannot be "
                               "composed with a discrete kernel")
        return kernel

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int) -> MixedState:
        m = self.potential.num_discrete
        discrete = position[:, :m].round().to(torch.long)
        flat = position[:, m:]
        cstate = None
        if self.potential.dim:
            cstate = self._continuous_kernel(discrete).init(flat, log_density, num_warmup)
        return MixedState(discrete, cstate, flat, log_density)

    def _update_discrete(self, rng: ChainRNG, step_index: int, discrete: torch.Tensor,
                         flat: torch.Tensor, sweep: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        stats: dict[str, torch.Tensor] = {}
        dtype = flat.dtype
        potts_sites = [s for s in self.potential.discrete if s.potts is not None]
        for index, site in enumerate(self.potential.discrete):
            site_rng = fold_in(rng, 1 + index + 1024 * sweep)
            field = self.potential.field(index, flat, discrete)
            current = discrete[:, site.offset:site.offset + site.size]
            if site.potts is not None:
                potts = site.potts
                beta = potts.edge_beta.to(dtype)
                if self.discrete == "sw":
                    kernel = SwendsenWangKernel(potts.q, potts.graph, beta, field, self.components)
                    new, clusters = kernel.update(site_rng, step_index, current)
                    key = "num_clusters" if len(potts_sites) == 1 else f"num_clusters_{site.name}"
                    stats[key] = clusters
                else:
                    new = PottsGibbsKernel(potts.q, potts.graph, beta, field).update(
                        site_rng, step_index, current)
            else:
                uniform = site_rng.uniform(step_index, SITE_STREAM, (site.size,), dtype)
                new = categorical_from_uniform(field, uniform)
            discrete = torch.cat([discrete[:, :site.offset], new,
                                  discrete[:, site.offset + site.size:]], dim=1)
        return discrete, stats

    def step(self, rng: ChainRNG, step_index: int, state: MixedState, warmup: bool
             ) -> tuple[MixedState, dict[str, torch.Tensor]]:
        discrete, flat = state.discrete, state.flat
        stats: dict[str, torch.Tensor] = {}
        for sweep in range(self.discrete_sweeps):
            discrete, stats = self._update_discrete(rng, step_index, discrete, flat, sweep)
        cstate = state.continuous
        if self.potential.dim:
            kernel = self._continuous_kernel(discrete)
            cstate, info = kernel.step(rng, step_index, kernel.reevaluate(cstate), warmup)
            flat = kernel.position(cstate)
            stats.update(kernel.stats(cstate, info))
        if "lp" not in stats:
            bare = self.potential.bare_potts
            stats["lp"] = (self.potential.log_density(flat, discrete) if bare is None
                           else bare.log_prob(discrete).to(flat.dtype))
        return MixedState(discrete, cstate, flat, stats["lp"]), stats

    def position(self, state: MixedState) -> torch.Tensor:
        return torch.cat([state.discrete.to(state.flat.dtype), state.flat], dim=-1)

    def stats(self, state: MixedState, info: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return info


# ----------------------------------------------------------------- runs
def run_mixed_mcmc(spec: ModelSpec, settings: RunSettings, discrete: str,
                   continuous: ContinuousFactory | None, method: str, components: str = "auto",
                   discrete_sweeps: int = 1, init_radius: float = 2.0, init: str = "prior") -> Samples:
    """Sample ``spec`` with ``MetropolisWithinGibbs``, all chains at once."""
    started = time.perf_counter()
    potential = MixedPotential(spec.model, spec.data)
    rng = ChainRNG(settings.chain_seeds(), device=settings.device)
    kernel = MetropolisWithinGibbs(potential, discrete, continuous, components, discrete_sweeps)
    index, flat, log_density = potential.initial_state(rng, init_radius, dtype=settings.dtype,
                                                       init=init)
    potential.check_fields(flat, index)
    position = torch.cat([index.to(flat.dtype), flat], dim=-1)
    draws, stats, _ = run_kernel(kernel, rng, position, log_density, settings.warmup, settings.draws,
                                 progress=settings.progress,
                                 description=f"{method} ({settings.chains} chains)",
                                 checkpoint=settings.checkpoint)
    return Samples(
        draws=potential.constrain(draws), stats=stats,
        info={"method": method, "seed": settings.seed, "chain_seeds": settings.chain_seeds(),
              "sampling_time_s": time.perf_counter() - started})


@dataclasses.dataclass
class DiscreteOptions:
    """Options of the discrete part (``--method sw``, ``gibbs`` and ``sw+...``/``gibbs+...``).

    ``components``: connected-components routine for SW (``auto``: scipy on CPU, torch
    on CUDA; or ``scipy``, ``torch``); ``discrete_sweeps``: discrete updates per step;
    ``init``: continuous starts drawn from the model's sample statements (``prior``) or
    Uniform(-init_radius, init_radius) on unconstrained space (``uniform``, Stan's rule;
    also the fallback when a prior draw fails). Discrete sites start uniformly at random.
    """

    components: str = "auto"
    discrete_sweeps: int = 1
    init: str = "prior"
    init_radius: float = 2.0


def random_walk_factory(options: Any) -> ContinuousFactory:
    """The ``mh`` continuous kernel from options with ``target_accept``, ``init_step_size``
    and ``adapt_scale`` (0 meaning the kernel's default, as in ``--method mh``)."""

    if getattr(options, "proposal", "rw") != "rw":
        raise BayesdlError("within sw/gibbs, mh uses the random-walk proposal only (proposal=rw)")

    def make(log_density_fn: LogDensityFn, log_density_and_grad_fn: LogDensityGradFn | None = None):
        return RandomWalkKernel(log_density_fn, target_accept=options.target_accept or None,
                                init_step_size=options.init_step_size or None,
                                adapt_scale=options.adapt_scale,
                                adapt=getattr(options, "adapt", "diag"))

    return make


def mixed_method(discrete: str, continuous: str | None = None, continuous_options: type | None = None,
                 make_factory: Callable[[Any], ContinuousFactory] | None = None
                 ) -> tuple[str, str, type, Callable[[ModelSpec, Any, RunSettings], Samples]]:
    """``(name, description, options class, runner)`` of ``discrete`` or ``discrete+continuous``.

    The options class joins ``DiscreteOptions`` with ``continuous_options``' fields;
    ``make_factory(options)`` returns the continuous kernel factory.
    """
    name = discrete if continuous is None else f"{discrete}+{continuous}"
    long_name = {"sw": "Swendsen-Wang", "gibbs": "Gibbs"}[discrete]
    if continuous is None:
        description = f"{long_name} on discrete (Potts/finite) sites, all chains batched"
        options_class = DiscreteOptions
    else:
        description = (f"{long_name} on discrete sites within {continuous} on continuous sites "
                       "(Metropolis-within-Gibbs)")
        own = {f.name for f in dataclasses.fields(DiscreteOptions)}
        fields = [(f.name, f.type, f) for f in dataclasses.fields(DiscreteOptions)]
        fields += [(f.name, f.type, f) for f in dataclasses.fields(continuous_options)
                   if f.name not in own]
        options_class = dataclasses.make_dataclass(
            f"{long_name.replace('-', '')}{continuous.capitalize()}Options",
            [(n, t, dataclasses.field(default=f.default)) for n, t, f in fields])
        options_class.__doc__ = (f"Options of --method {name}: those of --method {discrete} "
                                 f"and of --method {continuous}.")

    def run(spec: ModelSpec, options: Any, settings: RunSettings) -> Samples:
        factory = None if make_factory is None else make_factory(options)
        return run_mixed_mcmc(spec, settings, discrete, factory, name, options.components,
                              options.discrete_sweeps, options.init_radius, options.init)

    return name, description, options_class, run


# ----------------------------------------------------------------- inside pyro.infer.MCMC
class MixedPyroKernel(PyroKernelAdapter):
    """``MetropolisWithinGibbs`` as a ``pyro.infer.MCMC`` kernel (one chain).

    Discrete sites come back as their support values (as floats when the model also
    has continuous sites: ``pyro.infer.MCMC`` concatenates every site into one tensor).
    """

    def __init__(self, model: Callable[..., Any], discrete: str = "sw",
                 continuous: ContinuousFactory | None = None, components: str = "auto",
                 init_radius: float = 2.0):
        super().__init__(model, lambda potential: None, init_radius)
        self.discrete = discrete
        self.continuous = continuous
        self.components = components

    def setup(self, warmup_steps: int, *args, **kwargs) -> None:
        if args:
            raise ValueError("pass the model's data to MCMC.run as keyword arguments")
        self.potential = MixedPotential(self.model, kwargs)
        self.transforms = self.potential.transforms
        self._rng = ChainRNG([int(torch.randint(0, 2**62, ()))])
        self._kernel = MetropolisWithinGibbs(self.potential, self.discrete, self.continuous,
                                             self.components)
        index, flat, log_density = self.potential.initial_state(self._rng, self.init_radius)
        self.potential.check_fields(flat, index)
        position = torch.cat([index.to(flat.dtype), flat], dim=-1)
        self._state = self._kernel.init(position, log_density, warmup_steps)
        self._warmup_steps = warmup_steps
        self._t = 0
        self._accepted, self._steps = 0.0, 0
        self._initial_params = self._unravel_one(position)

    def _unravel_one(self, position: torch.Tensor) -> dict[str, torch.Tensor]:
        m = self.potential.num_discrete
        out = {k: v[0] for k, v in self.potential.discrete_values(
            position[:, :m].round().to(torch.long)).items()}
        out.update({k: v[0] for k, v in self.potential.unravel(position[:, m:]).items()})
        return out

    def sample(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        warmup = self._t < self._warmup_steps
        with torch.no_grad():
            self._state, info = self._kernel.step(self._rng, self._t, self._state, warmup)
        self._t += 1
        if not warmup and "acceptance_rate" in info:
            self._steps += 1
            self._accepted += float(info["acceptance_rate"][0])
        return self._unravel_one(self._kernel.position(self._state))


class SwendsenWang(MixedPyroKernel):
    """Swendsen-Wang (within ``continuous`` for continuous sites) as a ``pyro.infer.MCMC`` kernel.

        MCMC(SwendsenWang(ising), num_samples=1000, warmup_steps=100).run(L=16, T=2.269)
    """

    def __init__(self, model: Callable[..., Any], continuous: ContinuousFactory | None = None,
                 components: str = "auto", init_radius: float = 2.0):
        super().__init__(model, "sw", continuous, components, init_radius)


class Gibbs(MixedPyroKernel):
    """Gibbs on discrete sites (within ``continuous``) as a ``pyro.infer.MCMC`` kernel."""

    def __init__(self, model: Callable[..., Any], continuous: ContinuousFactory | None = None,
                 init_radius: float = 2.0):
        super().__init__(model, "gibbs", continuous, "auto", init_radius)
