"""The registry of inference methods: name -> options dataclass and runner.

A method takes (ModelSpec, options, RunSettings) and returns `Samples`. Options are
a dataclass per method; an option the method does not know is an error.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bayesdl.errors import BayesdlError
from bayesdl.inference.batched_mcmc import run_batched_mcmc
from bayesdl.inference.composition import mixed_method, random_walk_factory
from bayesdl.inference.elliptical_slice import EllipticalSliceOptions, run_elliptical_slice
from bayesdl.inference.hmc_methods import (
    ChEESOptions,
    HMCOptions,
    NUTSOptions,
    hmc_factory,
    nuts_factory,
    run_chees,
    run_hmc,
    run_nuts,
)
from bayesdl.inference.importance import ISOptions, run_importance
from bayesdl.inference.independence import IndependenceKernel
from bayesdl.inference.mala import MALAOptions, mala_factory, run_mala
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.random_walk import RandomWalkKernel
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings
from bayesdl.inference.sghmc import SGHMCOptions, run_sghmc
from bayesdl.inference.slice import SliceOptions, run_slice, slice_factory
from bayesdl.inference.svi import SVIOptions, run_svi
from bayesdl.inference.tempered_smc import SMCOptions, run_tempered_smc
from bayesdl.inference.user_proposal import ProposalKernel, load_proposal


@dataclass
class MHOptions:
    """Options of ``--method mh`` (batched Metropolis-Hastings).

    ``proposal``: ``rw`` (random walk), ``independence`` (a Gaussian fitted in warm-up,
    widened by ``independence_scale``) or ``path/to/file.py:name`` (a user ``Proposal``,
    see :mod:`bayesdl.inference.user_proposal`). ``adapt``: ``diag`` (marginal scales)
    or ``full`` (Haario's adaptive covariance). ``target_accept`` 0 means 0.234 (0.44
    in one dimension); ``init_step_size`` 0 means 2.38 / sqrt(dim).
    """

    target_accept: float = 0.0
    init_step_size: float = 0.0
    adapt_scale: bool = True
    init_radius: float = 2.0
    proposal: str = "rw"
    adapt: str = "diag"
    independence_scale: float = 1.2


def _run_mh(spec: ModelSpec, options: MHOptions, settings: RunSettings) -> Samples:
    user_proposal = None
    if options.proposal not in ("rw", "independence"):
        user_proposal = load_proposal(options.proposal)

    def make_kernel(potential):
        if user_proposal is not None:
            return ProposalKernel(potential.log_density, user_proposal)
        if options.proposal == "independence":
            return IndependenceKernel(potential.log_density, options.independence_scale,
                                      options.adapt if options.adapt_scale else "none",
                                      options.target_accept or None, options.init_step_size or None)
        return RandomWalkKernel(
            potential.log_density,
            target_accept=options.target_accept or None,
            init_step_size=options.init_step_size or None,
            adapt_scale=options.adapt_scale,
            adapt=options.adapt,
        )

    return run_batched_mcmc(spec, settings, make_kernel, "mh", init_radius=options.init_radius)


@dataclass(frozen=True)
class Method:
    """An inference method as the CLI and API see it."""

    name: str
    description: str
    options: type
    run: Callable[[ModelSpec, Any, RunSettings], Samples]


METHODS: dict[str, Method] = {
    m.name: m
    for m in [
        Method("nuts", "No-U-Turn sampler, all chains batched (--opt backend=pyro: Pyro's)",
               NUTSOptions, run_nuts),
        Method("hmc", "Hamiltonian Monte Carlo, static trajectory, chains batched", HMCOptions,
               run_hmc),
        Method("chees", "ChEES-HMC: shared step size and learned trajectory length, for "
               "hundreds to thousands of chains", ChEESOptions, run_chees),
        Method("mh", "random-walk Metropolis-Hastings, all chains batched in one tensor",
               MHOptions, _run_mh),
        Method("mala", "Metropolis-adjusted Langevin (gradient proposals), chains batched",
               MALAOptions, run_mala),
        Method("slice", "coordinate-wise slice sampling (stepping out + shrinkage), batched",
               SliceOptions, run_slice),
        Method("ess", "elliptical slice sampling for Gaussian-prior models, chains batched",
               EllipticalSliceOptions, run_elliptical_slice),
        Method("sghmc", "stochastic-gradient HMC (friction, no MH step), chains batched",
               SGHMCOptions, run_sghmc),
        Method("svi", "variational inference (Trace_ELBO, autoguide or the model's guide)",
               SVIOptions, run_svi),
        Method("is", "importance sampling from the prior or an SVI fit; log evidence +- se",
               ISOptions, run_importance),
        Method("smc", "tempered SMC, --draws particles x --chains runs batched; log evidence",
               SMCOptions, run_tempered_smc),
        Method(*mixed_method("sw")),
        Method(*mixed_method("gibbs")),
        Method(*mixed_method("sw", "mh", MHOptions, random_walk_factory)),
        Method(*mixed_method("gibbs", "mh", MHOptions, random_walk_factory)),
        Method(*mixed_method("sw", "mala", MALAOptions, mala_factory)),
        Method(*mixed_method("gibbs", "mala", MALAOptions, mala_factory)),
        Method(*mixed_method("sw", "slice", SliceOptions, slice_factory)),
        Method(*mixed_method("gibbs", "slice", SliceOptions, slice_factory)),
        Method(*mixed_method("sw", "nuts", NUTSOptions, nuts_factory)),
        Method(*mixed_method("gibbs", "nuts", NUTSOptions, nuts_factory)),
        Method(*mixed_method("sw", "hmc", HMCOptions, hmc_factory)),
        Method(*mixed_method("gibbs", "hmc", HMCOptions, hmc_factory)),
    ]
}


def get_method(name: str) -> Method:
    """The method called ``name``, or a BayesdlError listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise BayesdlError(
            f"unknown method {name!r}; choose one of: {', '.join(METHODS)}"
        ) from None
