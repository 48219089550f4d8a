"""The log density of a Pyro model with discrete (finite or Potts) and continuous sites.

``BatchedPotential`` samples continuous sites only; Gibbs and Swendsen-Wang need two
more things from a model, batched over chains (``torch.func.vmap``):

- ``log_density(flat, discrete)``: the joint log density (+ log-Jacobian) of the
  continuous sites' flat unconstrained values ``[C, D]`` *given* the discrete values
  ``[C, M]`` (value indices), with its gradient: the target of the continuous kernel
  in Metropolis-within-Gibbs, and
- ``field(site, flat, discrete)``: for one discrete site with ``n`` elements and ``K``
  values, the ``[C, n, K]`` log-likelihood of everything else in the model for each
  element and each value (the external field of generalised Swendsen-Wang, and the
  logits of a Gibbs update).

The field is read off the model by setting the site to the constant value ``k`` and
keeping every log-probability term shaped like the site (they are site-local: an
observation per pixel, a likelihood per data point). Terms of any other shape must not
depend on the site's value, which is checked at the start (for sites that are not
scalars; a scalar site's field is the whole log joint). A Potts site's own prior is left
out of its field: the kernels handle the coupling. Discrete values are stored as
indices ``0..K-1`` into the site's support (``enumerate_support``, or ``0..q-1``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import pyro
import torch
from pyro import poutine
from pyro.distributions.torch_distribution import MaskedDistribution
from pyro.distributions.transforms import biject_to
from pyro.poutine.util import site_is_subsample
from torch.func import grad_and_value, vmap

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.potential import uniform_starts
from bayesdl.inference.potts import Potts

INIT_DISCRETE_STREAM = 1_000_501
INIT_CONTINUOUS_STREAM = 1_000_003


class DiscreteSite(NamedTuple):
    """A discrete latent site: its place in the ``[C, M]`` index vector and its support."""

    name: str
    shape: tuple[int, ...]
    offset: int
    size: int
    values: torch.Tensor  # [K] support values, index k -> values[k]
    potts: Potts | None  # the site's distribution when it is a Potts field

    @property
    def num_values(self) -> int:
        return self.values.shape[0]


def _unwrap(fn: Any) -> Any:
    while isinstance(fn, MaskedDistribution) or type(fn).__name__ == "ExpandedDistribution":
        fn = fn.base_dist
    return fn


class MixedPotential:
    """Discrete + continuous view of a Pyro model, all evaluations batched over chains."""

    def __init__(self, model: Callable[..., Any], data: dict[str, Any]):
        self.model = model
        self.data = data
        with pyro.validation_enabled(False), poutine.block(), torch.no_grad():
            trace = poutine.trace(model).get_trace(**data)
        latent = [name for name, site in trace.nodes.items()
                  if site["type"] == "sample" and not site["is_observed"]
                  and not site_is_subsample(site) and not site["infer"].get("_deterministic")]
        self.discrete: list[DiscreteSite] = []
        self.continuous: list[str] = []
        offset = 0
        for name in latent:
            fn = trace.nodes[name]["fn"]
            value = trace.nodes[name]["value"]
            if not fn.support.is_discrete:
                self.continuous.append(name)
                continue
            base = _unwrap(fn)
            if isinstance(base, Potts):
                values = torch.arange(base.q, device=value.device)
                potts = base
            elif fn.has_enumerate_support:
                values = fn.enumerate_support(expand=False).reshape(-1)
                potts = None
            else:
                raise BayesdlError(f"discrete site {name!r} ({type(base).__name__}) has no finite "
                                   "support to enumerate; Gibbs and SW need one")
            size = value.numel()
            self.discrete.append(DiscreteSite(name, tuple(value.shape), offset, size, values, potts))
            offset += size
        self.num_discrete = offset
        # constrained -> unconstrained, as in Pyro (and BatchedPotential)
        self.transforms = {n: biject_to(trace.nodes[n]["fn"].support).inv for n in self.continuous}
        self.shapes = {n: tuple(self.transforms[n](trace.nodes[n]["value"]).shape)
                       for n in self.continuous}
        self.sizes = [math.prod(self.shapes[n]) for n in self.continuous]
        self.dim = sum(self.sizes)
        self.trace = trace
        self._log_density = vmap(self._log_density_one)
        self._grad = vmap(grad_and_value(self._log_density_one))
        self._fields = [vmap(vmap(self._local_one(s), in_dims=(None, None, 0)), in_dims=(0, 0, None))
                        for s in range(len(self.discrete))]
        self._nonlocal = [vmap(self._nonlocal_one(s), in_dims=(None, None, 0))
                          for s in range(len(self.discrete))]
        self._constant_fields: dict[int, torch.Tensor | None] = {}

    # ----------------------------------------------------------------- layout
    def unravel(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., D]`` unconstrained continuous values -> ``{site: [..., *shape]}``."""
        parts = torch.split(flat, self.sizes, dim=-1)
        return {n: p.reshape((*flat.shape[:-1], *self.shapes[n]))
                for n, p in zip(self.continuous, parts, strict=True)}

    def discrete_values(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., M]`` value indices -> ``{site: [..., *shape]}`` support values."""
        batch = index.shape[:-1]
        return {s.name: s.values[index[..., s.offset:s.offset + s.size]].reshape((*batch, *s.shape))
                for s in self.discrete}

    def constrain(self, position: torch.Tensor) -> dict[str, torch.Tensor]:
        """``[..., M + D]`` (indices as floats, then unconstrained) -> constrained site values."""
        index = position[..., :self.num_discrete].round().to(torch.long)
        out = self.discrete_values(index)
        for name, value in self.unravel(position[..., self.num_discrete:]).items():
            out[name] = self.transforms[name].inv(value)
        return out

    def _conditioned(self, flat: torch.Tensor, index: torch.Tensor):
        values = self.discrete_values(index)
        log_jacobian = flat.new_zeros(())
        for name, value in self.unravel(flat).items():
            inverse = self.transforms[name].inv
            values[name] = inverse(value)
            log_jacobian = log_jacobian + inverse.log_abs_det_jacobian(value, values[name]).sum()
        trace = poutine.trace(poutine.condition(self.model, data=values)).get_trace(**self.data)
        return trace, log_jacobian

    # ----------------------------------------------------------------- log density
    def _log_density_one(self, flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
        trace, log_jacobian = self._conditioned(flat, index)
        return trace.log_prob_sum() + log_jacobian

    def log_density(self, flat: torch.Tensor, discrete: torch.Tensor) -> torch.Tensor:
        """Joint ``log p`` (+ log-Jacobian) at ``flat [C, D]`` given ``discrete [C, M]``, ``[C]``."""
        with pyro.validation_enabled(False), poutine.block():
            value = self._log_density(flat, discrete)
        return torch.where(torch.isnan(value), -math.inf, value)

    def log_density_and_grad(self, flat: torch.Tensor, discrete: torch.Tensor
                             ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p [C], d log p / d flat [C, D])`` given ``discrete [C, M]``."""
        with pyro.validation_enabled(False), poutine.block():
            grad, value = self._grad(flat, discrete)
        return torch.where(torch.isnan(value), -math.inf, value), grad

    # ----------------------------------------------------------------- fields
    def _with_constant(self, site: DiscreteSite, index: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        constant = k.expand(site.size).to(index.dtype)
        return torch.cat([index[:site.offset], constant, index[site.offset + site.size:]])

    def _terms(self, site: DiscreteSite, flat, index, k):
        trace, _ = self._conditioned(flat, self._with_constant(site, index, k))
        trace.compute_log_prob()
        local = flat.new_zeros(site.shape)
        nonlocal_sum = flat.new_zeros(())
        for name, node in trace.nodes.items():
            if node["type"] != "sample" or name == site.name and site.potts is not None:
                continue
            log_prob = node["log_prob"]
            if site.shape == () or tuple(log_prob.shape) == site.shape:
                local = local + (log_prob.sum() if site.shape == () else log_prob)
            else:
                nonlocal_sum = nonlocal_sum + log_prob.sum()
        return local.reshape(-1), nonlocal_sum

    def _local_one(self, s: int):
        site = self.discrete[s]
        return lambda flat, index, k: self._terms(site, flat, index, k)[0]

    def _nonlocal_one(self, s: int):
        site = self.discrete[s]
        return lambda flat, index, k: self._terms(site, flat, index, k)[1]

    def field(self, s: int, flat: torch.Tensor, discrete: torch.Tensor) -> torch.Tensor | None:
        """``[C, n, K]`` log-likelihood of discrete site ``s`` per element and value, or
        ``None`` when nothing else in the model depends on it (a bare Potts field)."""
        if s in self._constant_fields:
            cached = self._constant_fields[s]
            return None if cached is None else cached.expand(discrete.shape[0], -1, -1)
        site = self.discrete[s]
        ks = torch.arange(site.num_values, device=discrete.device)
        with pyro.validation_enabled(False), poutine.block():
            field = self._fields[s](flat, discrete, ks).transpose(1, 2)
        return torch.where(torch.isnan(field), -math.inf, field)

    def check_fields(self, flat: torch.Tensor, discrete: torch.Tensor) -> None:
        """At the start: fields are site-local (else BayesdlError), and constant ones are
        computed once (a model whose only latent site is the discrete one)."""
        for s, site in enumerate(self.discrete):
            ks = torch.arange(site.num_values, device=discrete.device)
            if site.shape != ():
                with pyro.validation_enabled(False), poutine.block():
                    other = self._nonlocal[s](flat[0], discrete[0], ks)
                if not torch.allclose(other, other[:1].expand_as(other), rtol=1e-9, atol=1e-9):
                    raise BayesdlError(
                        f"discrete site {site.name!r} enters a log-probability term that is not "
                        "shaped like it (site by site), so its full conditional cannot be read off "
                        "the model; give every term that depends on it the site's shape")
            if self.dim == 0 and len(self.discrete) == 1:
                field = self.field(s, flat[:1], discrete[:1])
                self._constant_fields[s] = None if bool((field == 0).all()) else field

    @property
    def bare_potts(self) -> Potts | None:
        """The Potts distribution when the model is one Potts field and nothing else
        (after ``check_fields``): its log density is then the Potts log weight alone."""
        if (self.dim == 0 and len(self.discrete) == 1 and self.discrete[0].potts is not None
                and 0 in self._constant_fields and self._constant_fields[0] is None):
            return self.discrete[0].potts
        return None

    # ----------------------------------------------------------------- start
    def prior_draws(self, rng: ChainRNG, dtype: torch.dtype) -> torch.Tensor:
        """``[C, D]`` unconstrained continuous values drawn by running the model, chain ``c``
        seeded from its own key (so it does not depend on the other chains)."""
        rows = []
        for key in rng.keys.tolist():
            with torch.random.fork_rng(devices=[rng.device] if rng.device.type == "cuda" else []):
                torch.manual_seed(key & 0x7FFFFFFFFFFFFFFF)
                with pyro.validation_enabled(False), poutine.block(), torch.no_grad():
                    trace = poutine.trace(self.model).get_trace(**self.data)
            rows.append(torch.cat([self.transforms[n](trace.nodes[n]["value"]).reshape(-1)
                                   for n in self.continuous]) if self.continuous else
                        torch.zeros(0))
        return torch.stack(rows).to(device=rng.device, dtype=dtype)

    def initial_state(self, rng: ChainRNG, radius: float = 2.0, tries: int = 100,
                      dtype: torch.dtype | None = None, init: str = "uniform"
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Uniform random discrete indices, and continuous values from Uniform(-radius, radius)
        on unconstrained space (``init="uniform"``, Stan's rule) or from the model's own
        sample statements (``init="prior"``, falling back to the uniform rule for a chain
        whose draw fails or has no finite density); redrawn per chain until the log density
        is finite. Returns ``(discrete [C, M], flat [C, D], log_density [C])``."""
        if init not in ("uniform", "prior"):
            raise BayesdlError(f"init must be uniform or prior, got {init!r}")
        dtype = dtype or torch.get_default_dtype()
        num_values = torch.cat([torch.full((s.size,), s.num_values, device=rng.device)
                                for s in self.discrete]) if self.discrete else \
            torch.zeros(0, dtype=torch.long, device=rng.device)
        uniform = rng.uniform(0, INIT_DISCRETE_STREAM, (self.num_discrete,), dtype)
        discrete = (uniform * num_values).to(torch.long).minimum(num_values - 1)
        flat = log_density = None
        if init == "prior" and self.dim:
            try:
                flat = self.prior_draws(rng, dtype)
                log_density = self.log_density(flat, discrete)
            except Exception:  # noqa: BLE001 - e.g. an improper prior: the uniform rule takes over
                flat = log_density = None
        flat, log_density = uniform_starts(
            rng, self.dim, lambda candidate: self.log_density(candidate, discrete),
            INIT_CONTINUOUS_STREAM, radius, tries, dtype, flat, log_density)
        return discrete, flat, log_density
