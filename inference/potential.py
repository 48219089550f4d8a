"""A Pyro model's log density on unconstrained space, flat and batched over chains.

``BatchedPotential`` gets the model's sites and bijections from Pyro's
``initialize_model`` and evaluates ``log p(x) + log|det J|`` for a ``[C, D]`` tensor of
flat unconstrained positions in one call (``torch.func.vmap`` over a trace of the
conditioned model), so every chain advances together on CPU or GPU. Pyro's own
``potential_fn`` cannot be vmapped (its enumeration handler reads ``.data``), which
is why the trace is evaluated here.
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer.mcmc.util import initialize_model
from pyro.poutine.util import site_is_subsample
from torch import fx
from torch.func import grad_and_value, vmap

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.graph_algebra import simplify_algebra
from bayesdl.inference.traced_potential import (
    TracedGradient,
    agrees,
    compile_graph,
    nan_log_density_to_minus_inf,
    output_graph,
    static_runtime,
    torchscript_module,
    trace_graph,
    value_graph,
)

INIT_STREAM = 1_000_003


class BatchedPotential:
    """Flat unconstrained log density of a Pyro model, for ``[C, D]`` positions at once."""

    def __init__(self, model: Callable[..., Any], data: dict[str, Any]):
        self.model = model
        self.data = data
        with pyro.validation_enabled(False), poutine.block():
            _, _, transforms, trace = initialize_model(model, model_kwargs=data)
        self.trace = trace
        self.latent_sites = [
            name
            for name, site in trace.iter_stochastic_nodes()
            if not site["is_observed"] and not site_is_subsample(site)
        ]
        discrete = [
            n for n in self.latent_sites if trace.nodes[n]["fn"].support.is_discrete
        ]
        if discrete:
            raise BayesdlError(
                f"latent site(s) {', '.join(discrete)} are discrete; this method samples "
                "continuous sites only (use --method nuts, which enumerates them)"
            )
        self.transforms = {name: transforms[name] for name in self.latent_sites}
        self.constrained_shapes = {
            n: tuple(trace.nodes[n]["value"].shape) for n in self.latent_sites
        }
        self.shapes = {
            n: tuple(self.transforms[n](trace.nodes[n]["value"]).shape) for n in self.latent_sites
        }
        self.sizes = [math.prod(self.shapes[n]) for n in self.latent_sites]
        self.dim = sum(self.sizes)
        self._fast_value = self._fast_grad = None  # traced graphs, see accelerate()
        self._fast_shape: torch.Size | None = None
        self.gradient_graph: torch.fx.GraphModule | None = None  # flat -> (grad, log p)
        self.traced_gradient: TracedGradient | None = None  # the same, run by TorchScript
        self._batched_log_density = vmap(self._log_density_one)
        self._batched_grad = vmap(grad_and_value(self._log_density_one))
        self._probe_vmap()

    def _probe_vmap(self) -> None:
        """Use vmap when the model allows it; else fall back to a loop over chains."""
        probe = self.ravel(
            {n: self.transforms[n](self.trace.nodes[n]["value"])[None] for n in self.latent_sites}
        )
        try:
            with pyro.validation_enabled(False), poutine.block():
                self._batched_log_density(probe)
                self._batched_grad(probe)
        except Exception as error:  # noqa: BLE001 - any vmap limitation selects the fallback
            warnings.warn(
                "this model cannot be vectorised over chains with torch.func.vmap "
                f"({type(error).__name__}: {str(error).splitlines()[0][:120]}); "
                "chains are evaluated one at a time, which is slower",
                stacklevel=3,
            )
            self._batched_log_density = self._loop_log_density
            self._batched_grad = self._loop_grad

    def _loop_log_density(self, flat: torch.Tensor) -> torch.Tensor:
        return torch.stack([self._log_density_one(row) for row in flat])

    def _loop_grad(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        values, grads = [], []
        for row in flat:
            row = row.detach().requires_grad_(True)
            value = self._log_density_one(row)
            (grad,) = torch.autograd.grad(value, row)
            values.append(value.detach())
            grads.append(grad)
        return torch.stack(grads), torch.stack(values)

    # ----------------------------------------------------------------- layout
    def unravel(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split ``[..., D]`` flat positions into ``{site: [..., *shape]}``."""
        batch = flat.shape[:-1]
        parts = torch.split(flat, self.sizes, dim=-1)
        return {
            name: part.reshape((*batch, *self.shapes[name]))
            for name, part in zip(self.latent_sites, parts, strict=True)
        }

    def ravel(self, values: dict[str, torch.Tensor], batch_ndim: int = 1) -> torch.Tensor:
        """Join ``{site: [*batch, *shape]}`` unconstrained values into ``[*batch, D]``."""
        parts = []
        for name in self.latent_sites:
            value = values[name]
            parts.append(value.reshape(*value.shape[:batch_ndim], -1))
        return torch.cat(parts, dim=-1)

    def constrain(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Map ``[..., D]`` unconstrained positions to constrained site values."""
        return {
            name: self.transforms[name].inv(value) for name, value in self.unravel(flat).items()
        }

    # ----------------------------------------------------------------- density
    def _log_density_one(self, flat: torch.Tensor) -> torch.Tensor:
        unconstrained = self.unravel(flat)
        constrained = {}
        log_jacobian = flat.new_zeros(())
        for name, value in unconstrained.items():
            inverse = self.transforms[name].inv
            constrained[name] = inverse(value)
            log_jacobian = log_jacobian + inverse.log_abs_det_jacobian(
                value, constrained[name]
            ).sum()
        conditioned = poutine.condition(self.model, data=constrained)
        trace = poutine.trace(conditioned).get_trace(**self.data)
        return trace.log_prob_sum() + log_jacobian

    def log_density(self, flat: torch.Tensor) -> torch.Tensor:
        """``log p`` (+ log-Jacobian) at ``[C, D]`` positions, as ``[C]``; NaN becomes -inf."""
        if self._fast_value is not None and flat.shape == self._fast_shape:
            return self._fast_value(flat)  # the traced graph maps NaN to -inf itself
        with pyro.validation_enabled(False), poutine.block():
            value = self._batched_log_density(flat)
        return torch.where(torch.isnan(value), -math.inf, value)

    def log_density_and_grad(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(log p [C], grad [C, D])`` at ``[C, D]`` positions."""
        if self._fast_grad is not None and flat.shape == self._fast_shape:
            grad, value = self._fast_grad(flat)  # NaN already -inf (see log_density)
            return value, grad
        with pyro.validation_enabled(False), poutine.block():
            grad, value = self._batched_grad(flat)
        return torch.where(torch.isnan(value), -math.inf, value), grad

    def accelerate(self, example: torch.Tensor, evaluation: str = "auto") -> bool:
        """Trace the model's log density and gradient for positions shaped like ``example``
        so that later calls with that shape skip Pyro (other shapes still run the model).

        ``evaluation``: ``"eager"`` keeps running the model each call; ``"trace"`` traces
        it once into a lean graph (:mod:`~bayesdl.inference.traced_potential`), checked
        against the model at random points, and runs it with TorchScript; ``"compile"``
        does the same and keeps the graph (``gradient_graph``) for a kernel to compile
        with Inductor (:meth:`compiled_log_density_and_grad`, or NUTS's compiled transition);
        ``"auto"`` traces and falls back to the model silently. Returns whether the
        traced graphs are in use.
        """
        if evaluation not in ("auto", "eager", "trace", "compile"):
            raise BayesdlError(
                f"unknown potential evaluation {evaluation!r}; choose auto, eager, trace or compile")
        self._fast_value = self._fast_grad = self.gradient_graph = self.traced_gradient = None
        if evaluation == "eager" or self._batched_grad == self._loop_grad:
            return False
        try:
            with pyro.validation_enabled(False), poutine.block():
                grad_graph = trace_graph(self._batched_grad, example)
            forward = value_graph(grad_graph)  # before _traced edits the graph in place
        except Exception:  # noqa: BLE001 - any tracing limitation means: run the model
            grad_graph = forward = None
        traced_grad = grad_graph and self._traced(self._batched_grad, example, grad_graph)
        traced_value = forward and self._traced(self._batched_log_density, example, forward)
        if traced_grad is None or traced_value is None:
            if evaluation != "auto":
                warnings.warn("the traced potential disagrees with the model (it branches on "
                              "latent values or draws random numbers); running the model "
                              "itself", stacklevel=2)
            return False
        self._fast_shape, self._example = example.shape, example
        self._fast_value, self._fast_grad = traced_value[0], traced_grad[0]
        self.traced_gradient = traced_grad[2]
        if evaluation == "compile":
            self.gradient_graph = traced_grad[1]
        return True

    def compiled_log_density_and_grad(self) -> Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        """``log_density_and_grad`` with the traced graph compiled by Inductor for the
        traced shape (a few seconds once; then each call is a few fused kernels). Falls
        back, with a warning, to the TorchScript graph if compilation fails."""
        if self.gradient_graph is None:
            return self.log_density_and_grad
        example = torch.zeros_like(self._example)
        try:
            compiled = compile_graph(self.gradient_graph, [example])
        except Exception as error:  # noqa: BLE001 - any compiler failure: keep TorchScript
            warnings.warn(f"compiling the potential failed ({type(error).__name__}: "
                          f"{str(error).splitlines()[0][:160] if str(error) else ''}); "
                          "running the traced graph with TorchScript", stacklevel=2)
            return self.log_density_and_grad
        shape, fallback = self._fast_shape, self.log_density_and_grad

        def log_density_and_grad(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            if flat.shape != shape:
                return fallback(flat)
            grad, value = compiled(flat)
            return torch.where(torch.isnan(value), -math.inf, value), grad

        return log_density_and_grad

    def _traced(self, function: Callable, example: torch.Tensor, graph: fx.GraphModule):
        """``(fast, graph, traced)`` for ``graph`` (``function`` traced at ``example``) if
        it matches ``function`` at random points, else None: the graph run by
        TorchScript's Static Runtime, the graph kept for compiling, and the TorchScript
        module of the first."""

        def reference(flat: torch.Tensor):
            with pyro.validation_enabled(False), poutine.block():
                return function(flat)

        generator = torch.Generator(device="cpu").manual_seed(0)
        points = [example] + [
            (example + torch.randn(example.shape, generator=generator, dtype=example.dtype, device="cpu")
             .to(example.device) * scale) for scale in (0.5, 1.5, 3.0)
        ]
        try:
            # the graph run by TorchScript may fold the data's values into its code;
            # the one kept for compiling may not (its code keys Inductor's cache)
            scripted = copy.deepcopy(graph)
            simplify_algebra(scripted, values=True)
            scripted.recompile()
            nan_log_density_to_minus_inf(graph)
            nan_log_density_to_minus_inf(scripted)
            module = torchscript_module(scripted, example)
            fast = static_runtime(torch.jit.freeze(copy.deepcopy(module).eval()), example)
            if not agrees(fast, reference, points):
                return None
        except Exception:  # noqa: BLE001 - any tracing limitation means: run the model
            return None

        def split() -> tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]:
            return (torchscript_module(output_graph(scripted, 0), example),
                    torchscript_module(output_graph(scripted, -1), example))

        return fast, graph, TracedGradient(module, example.shape, split)

    # ----------------------------------------------------------------- start
    def initial_positions(
        self, rng: ChainRNG, radius: float = 2.0, tries: int = 100, dtype: torch.dtype | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Uniform(-radius, radius) starts on unconstrained space (Stan's rule), redrawn
        per chain until the log density is finite. Returns ``(positions, log_density)``."""
        return uniform_starts(rng, self.dim, self.log_density, INIT_STREAM, radius, tries,
                              dtype or torch.get_default_dtype())


def uniform_starts(rng: ChainRNG, dim: int, log_density_fn: Callable[[torch.Tensor], torch.Tensor],
                   stream: int, radius: float = 2.0, tries: int = 100,
                   dtype: torch.dtype = torch.float64, position: torch.Tensor | None = None,
                   log_density: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stan's start rule, per chain: Uniform(-radius, radius) on unconstrained space,
    redrawn (streams ``stream + attempt``) for every chain whose log density is not
    finite. ``position``/``log_density``, when given, are kept for chains where finite."""
    for attempt in range(tries):
        candidate = (2 * rng.uniform(0, stream + attempt, (dim,), dtype) - 1) * radius
        candidate_log_density = log_density_fn(candidate)
        if position is None:
            position, log_density = candidate, candidate_log_density
        else:
            redo = ~torch.isfinite(log_density)
            position = torch.where(redo[:, None], candidate, position)
            log_density = torch.where(redo, candidate_log_density, log_density)
        if bool(torch.isfinite(log_density).all()):
            return position, log_density
    bad = (~torch.isfinite(log_density)).nonzero().flatten().tolist()
    raise BayesdlError(
        f"the model's log density is -inf or NaN at every start tried for chain(s) "
        f"{bad[:10]} ({tries} uniform draws in [-{radius}, {radius}] on unconstrained space)"
    )

