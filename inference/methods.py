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
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.pyro_hmc import HMCOptions, NUTSOptions, run_pyro_hmc
from bayesdl.inference.random_walk import RandomWalkKernel
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings
from bayesdl.inference.svi import SVIOptions, run_svi


@dataclass
class MHOptions:
    """Options of ``--method mh`` (batched random-walk Metropolis).

    ``target_accept`` 0 means 0.234 (0.44 in one dimension); ``init_step_size`` 0
    means 2.38 / sqrt(dim).
    """

    target_accept: float = 0.0
    init_step_size: float = 0.0
    adapt_scale: bool = True
    init_radius: float = 2.0


def _run_mh(spec: ModelSpec, options: MHOptions, settings: RunSettings) -> Samples:
    def make_kernel(potential):
        return RandomWalkKernel(
            potential.log_density,
            target_accept=options.target_accept or None,
            init_step_size=options.init_step_size or None,
            adapt_scale=options.adapt_scale,
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
        Method("nuts", "No-U-Turn sampler (Pyro's kernel, one chain at a time)", NUTSOptions,
               lambda spec, opts, s: run_pyro_hmc(spec, opts, s, "nuts")),
        Method("hmc", "Hamiltonian Monte Carlo, fixed trajectory (Pyro's kernel)", HMCOptions,
               lambda spec, opts, s: run_pyro_hmc(spec, opts, s, "hmc")),
        Method("mh", "random-walk Metropolis-Hastings, all chains batched in one tensor",
               MHOptions, _run_mh),
        Method("svi", "variational inference (Trace_ELBO, autoguide or the model's guide)",
               SVIOptions, run_svi),
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
