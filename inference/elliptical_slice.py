"""Elliptical slice sampling (Murray, Adams & MacKay 2010), batched over chains.

For models whose every latent site has a Gaussian prior, ``p(x) = N(x; m, S) L(x)``:
each step draws ``nu ~ N(0, S)``, a level ``log y = log L(x) - Exp(1)`` and an angle,
and moves along the ellipse ``m + (x - m) cos t + nu sin t``, shrinking the angle
bracket towards 0 until a point lands above the level. There is no step size to tune
and every step moves. The bracket loop is over iterations with chains masked when
done; it reads one boolean from the device per iteration (``.all()``) to stop when
every chain has landed, capped at ``max_shrink`` iterations (a chain that has not
landed by then, after ~2^-max_shrink of shrinkage, stays where it is).

The prior is read from the model's trace: every latent site must be ``Normal`` or
``MultivariateNormal`` (possibly expanded, in plates or ``to_event``), unmasked and
unscaled, with parameters that do not change when the other latent sites do (checked
by tracing the model at two different points). Anything else is a ``BayesdlError``
naming the site. ``log L = log p - log N(x; m, S)`` with ``log p`` the model's own log
density. Written by hand because no library has a batched version.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import ExpandedDistribution, MaskedDistribution
from torch.distributions import Independent, MultivariateNormal, Normal

from bayesdl.errors import BayesdlError
from bayesdl.inference.batched_mcmc import run_batched_mcmc
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.potential import BatchedPotential
from bayesdl.inference.pyro_kernel import PyroKernelAdapter
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings

LEVEL_STREAM = 1
NU_STREAM = 2
ANGLE_STREAM = 3
SHRINK_STREAM = 16  # bracket draw k uses stream SHRINK_STREAM + k
MAX_SHRINK_LIMIT = 10_000  # streams stay clear of the next step's and of the start draws


class GaussianPrior(NamedTuple):
    """``N(mean, S)`` on the flat latent vector: ``S = diag(scale^2)`` when ``factor`` is
    None, else ``S = factor @ factor.T`` (block-diagonal, lower triangular)."""

    mean: torch.Tensor  # [D]
    scale: torch.Tensor  # [D]
    factor: torch.Tensor | None  # [D, D]

    def noise(self, standard: torch.Tensor) -> torch.Tensor:
        """``[C, D]`` standard normals -> draws of ``N(0, S)``."""
        if self.factor is None:
            return standard * self.scale
        return standard @ self.factor.T

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """``log N(x; mean, S)`` for ``x [C, D]``, as ``[C]``."""
        residual = x - self.mean
        if self.factor is None:
            white = residual / self.scale
        else:
            white = torch.linalg.solve_triangular(self.factor, residual.T, upper=False).T
        log_det = torch.log(self.scale).sum()
        return -0.5 * (white**2).sum(-1) - log_det - 0.5 * x.shape[-1] * math.log(2 * math.pi)


def _site_parameters(name: str, site: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """``(mean, scale or scale_tril, is_mvn)`` of a latent site, shaped like its value."""
    fn = site["fn"]
    if float(site.get("scale", 1.0)) != 1.0:
        raise BayesdlError(f"elliptical slice sampling: latent site {name!r} is scaled "
                           "(poutine.scale or subsampling); its prior must be a plain Gaussian")
    base = fn
    while True:
        if isinstance(base, MaskedDistribution):
            raise BayesdlError(f"elliptical slice sampling: latent site {name!r} has a masked "
                               "prior (e.g. a flat one); it needs a Gaussian prior")
        if isinstance(base, (Independent, ExpandedDistribution)):
            base = base.base_dist
            continue
        break
    value = site["value"]
    if isinstance(base, Normal):
        return fn.mean.expand(value.shape), fn.stddev.expand(value.shape), False
    if isinstance(base, MultivariateNormal):
        k = value.shape[-1]
        return (fn.mean.expand(value.shape),
                base.scale_tril.expand((*value.shape[:-1], k, k)), True)
    raise BayesdlError(
        f"elliptical slice sampling needs a Normal or MultivariateNormal prior on every latent "
        f"site; {name!r} has {type(base).__name__} (use --method slice, mala or nuts)"
    )


def _trace_at(potential: BatchedPotential, values: dict[str, torch.Tensor]):
    with pyro.validation_enabled(False), poutine.block():
        conditioned = poutine.condition(potential.model, data=values)
        return poutine.trace(conditioned).get_trace(**potential.data)


def gaussian_prior(potential: BatchedPotential) -> GaussianPrior:
    """The model's Gaussian prior on the flat latent vector, or a BayesdlError."""
    sites = potential.latent_sites
    here = {n: potential.trace.nodes[n]["value"].detach() for n in sites}
    there = {n: v + 0.7 + 0.3 * torch.arange(v.numel(), dtype=v.dtype, device=v.device).reshape(
        v.shape).remainder(3) for n, v in here.items()}
    first, second = _trace_at(potential, here), _trace_at(potential, there)
    means, scales, factors = [], [], []
    any_mvn = False
    for name in sites:
        mean, scale, is_mvn = _site_parameters(name, first.nodes[name])
        mean2, scale2, _ = _site_parameters(name, second.nodes[name])
        if not (torch.allclose(mean, mean2) and torch.allclose(scale, scale2)):
            raise BayesdlError(
                f"elliptical slice sampling needs Gaussian priors whose parameters do not depend "
                f"on other latent sites; the prior of {name!r} does (use --method slice, mala or nuts)"
            )
        means.append(mean.reshape(-1))
        if is_mvn:
            k = scale.shape[-1]
            blocks = scale.reshape(-1, k, k)
            factors.append(torch.block_diag(*blocks))
            scales.append(torch.diagonal(blocks, dim1=-2, dim2=-1).reshape(-1))
            any_mvn = True
        else:
            factors.append(torch.diag(scale.reshape(-1)))
            scales.append(scale.reshape(-1))
    return GaussianPrior(torch.cat(means), torch.cat(scales),
                         torch.block_diag(*factors) if any_mvn else None)


class EllipticalSliceState(NamedTuple):
    position: torch.Tensor  # [C, D]
    log_likelihood: torch.Tensor  # [C]


class EllipticalSliceInfo(NamedTuple):
    acceptance_rate: torch.Tensor  # [C], always 1
    n_steps: torch.Tensor  # [C] likelihood evaluations this step


class EllipticalSliceKernel:
    """Batched elliptical slice sampler (see the module docstring)."""

    def __init__(self, log_density_fn: Callable[[torch.Tensor], torch.Tensor], prior: GaussianPrior,
                 max_shrink: int = 100):
        if not 1 <= max_shrink <= MAX_SHRINK_LIMIT:
            raise BayesdlError(f"max_shrink must be in 1..{MAX_SHRINK_LIMIT}, got {max_shrink}")
        self.log_density_fn = log_density_fn
        self.prior = prior
        self.max_shrink = int(max_shrink)

    @classmethod
    def from_potential(cls, potential: BatchedPotential, max_shrink: int = 100):
        return cls(potential.log_density, gaussian_prior(potential), max_shrink)

    def _prior_on(self, x: torch.Tensor) -> GaussianPrior:
        return GaussianPrior(*(None if t is None else t.to(x) for t in self.prior))

    def log_likelihood(self, x: torch.Tensor) -> torch.Tensor:
        """``log p(x) - log N(x; m, S)`` for ``x [C, D]``."""
        return self.log_density_fn(x) - self._prior_on(x).log_prob(x)

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int):
        if position.shape[1] != self.prior.mean.shape[0]:
            raise BayesdlError(f"positions have {position.shape[1]} coordinates, the prior "
                               f"{self.prior.mean.shape[0]}")
        return EllipticalSliceState(position, log_density - self._prior_on(position).log_prob(position))

    def step(self, rng: ChainRNG, step_index: int, state: EllipticalSliceState, warmup: bool):
        x, log_lik = state.position, state.log_likelihood
        dtype = x.dtype
        prior = self._prior_on(x)
        nu = prior.noise(rng.normal(step_index, NU_STREAM, x.shape[1:], dtype))
        centred = x - prior.mean
        log_level = log_lik + torch.log(rng.uniform(step_index, LEVEL_STREAM, (), dtype))
        angle = 2 * math.pi * rng.uniform(step_index, ANGLE_STREAM, (), dtype)
        low, high = angle - 2 * math.pi, angle
        done = torch.zeros_like(log_lik, dtype=torch.bool)
        new_x, new_log_lik = x, log_lik
        evaluations = torch.zeros_like(log_lik)
        for k in range(self.max_shrink):
            candidate = prior.mean + centred * torch.cos(angle)[:, None] + nu * torch.sin(angle)[:, None]
            at_candidate = self.log_likelihood(candidate)
            evaluations = evaluations + (~done).to(dtype)
            landed = ~done & (at_candidate > log_level)
            new_x = torch.where(landed[:, None], candidate, new_x)
            new_log_lik = torch.where(landed, at_candidate, new_log_lik)
            done = done | landed
            if bool(done.all()):
                break
            low = torch.where(~done & (angle < 0), angle, low)
            high = torch.where(~done & (angle >= 0), angle, high)
            angle = low + (high - low) * rng.uniform(step_index, SHRINK_STREAM + k, (), dtype)
        state = EllipticalSliceState(new_x, new_log_lik)
        return state, EllipticalSliceInfo(torch.ones_like(new_log_lik), evaluations)

    def position(self, state: EllipticalSliceState) -> torch.Tensor:
        return state.position

    def reevaluate(self, state: EllipticalSliceState) -> EllipticalSliceState:
        """The state with its log likelihood recomputed at the current position."""
        return state._replace(log_likelihood=self.log_likelihood(state.position))

    def stats(self, state: EllipticalSliceState, info: EllipticalSliceInfo) -> dict[str, torch.Tensor]:
        lp = state.log_likelihood + self._prior_on(state.position).log_prob(state.position)
        return {"lp": lp, "n_steps": info.n_steps}


class EllipticalSlice(PyroKernelAdapter):
    """Elliptical slice sampling as a ``pyro.infer.MCMC`` kernel (Gaussian-prior models)."""

    def __init__(self, model: Callable[..., Any], max_shrink: int = 100, init_radius: float = 2.0):
        super().__init__(
            model, lambda potential: EllipticalSliceKernel.from_potential(potential, max_shrink),
            init_radius,
        )


@dataclass
class EllipticalSliceOptions:
    """Options of ``--method ess`` (elliptical slice sampling)."""

    max_shrink: int = 100
    init_radius: float = 2.0


def run_elliptical_slice(spec: ModelSpec, options: EllipticalSliceOptions,
                         settings: RunSettings) -> Samples:
    """``--method ess``: all chains in one batch (see :class:`EllipticalSliceKernel`)."""

    def make_kernel(potential):
        return EllipticalSliceKernel.from_potential(potential, options.max_shrink)

    return run_batched_mcmc(spec, settings, make_kernel, "ess", init_radius=options.init_radius)
