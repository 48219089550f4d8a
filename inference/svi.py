"""`svi`: stochastic variational inference with Trace_ELBO and Pyro's autoguides.

The guide is the model's own when it has one, else ``AutoNormal``; ``guide=mvn``
and ``guide=delta`` pick ``AutoMultivariateNormal`` and ``AutoDelta`` (MAP). Fitting
stops when the mean loss of the last window differs from the window before by less
than ``tol`` (relative), or after ``max_steps``. Draws come from the fitted guide.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from pyro import poutine
from pyro.infer import SVI, Predictive, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoMultivariateNormal, AutoNormal
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from bayesdl.errors import BayesdlError
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings

GUIDES = {"normal": AutoNormal, "mvn": AutoMultivariateNormal, "delta": AutoDelta}


@dataclass
class SVIOptions:
    """Options of ``--method svi``. ``guide``: auto | model | normal | mvn | delta."""

    guide: str = "auto"
    lr: float = 0.01
    max_steps: int = 20000
    tol: float = 1e-4
    window: int = 200
    num_particles: int = 1


@dataclass
class SVIFit:
    """A fitted guide, its loss history (negative ELBO per step) and how fitting ended."""

    guide: Callable[..., Any]
    losses: list[float]
    converged: bool


def make_guide(model: Callable[..., Any], own_guide: Callable[..., Any] | None,
               choice: str) -> Callable[..., Any]:
    """The guide named by ``choice`` for ``model``."""
    if choice in ("auto", "model"):
        if own_guide is not None:
            return own_guide
        if choice == "model":
            raise BayesdlError("--opt guide=model: this model has no guide of its own")
        return AutoNormal(model)
    if choice not in GUIDES:
        raise BayesdlError(
            f"unknown guide {choice!r}; choose one of auto, model, {', '.join(GUIDES)}"
        )
    return GUIDES[choice](model)


def fit_svi(spec: ModelSpec, options: SVIOptions, seed: int = 0,
            progress: bool = True) -> SVIFit:
    """Fit a guide to ``spec`` by maximising the ELBO with Adam."""
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = make_guide(spec.model, spec.guide, options.guide)
    svi = SVI(spec.model, guide, pyro.optim.Adam({"lr": options.lr}),
              Trace_ELBO(num_particles=options.num_particles))
    losses: list[float] = []
    converged = False
    window = max(options.window, 1)
    bar = tqdm(total=options.max_steps, desc="svi", disable=not progress, leave=False,
               dynamic_ncols=True, mininterval=0.5)
    with bar:
        for step in range(options.max_steps):
            losses.append(svi.step(**spec.data))  # Pyro returns the loss as a float
            bar.update(1)
            if not math.isfinite(losses[-1]):
                raise BayesdlError(f"svi: the ELBO became {losses[-1]} at step {step + 1}; "
                                   "try a smaller --opt lr")
            if step % window == window - 1 and len(losses) >= 2 * window:
                recent = sum(losses[-window:]) / window
                before = sum(losses[-2 * window:-window]) / window
                bar.set_postfix(loss=f"{recent:.4g}")
                if abs(recent - before) <= options.tol * max(abs(before), 1e-12):
                    converged = True
                    break
    return SVIFit(guide, losses, converged)


def latent_site_shapes(model: Callable[..., Any], data: dict[str, Any]) -> dict[str, tuple]:
    """Shapes of the model's unobserved sample sites, in execution order."""
    with poutine.block():
        trace = poutine.trace(model).get_trace(**data)
    return {n: tuple(s["value"].shape) for n, s in trace.iter_stochastic_nodes()
            if not s["is_observed"] and not site_is_subsample(s)}


def draw_from_guide(spec: ModelSpec, guide: Callable[..., Any], num: int) -> dict[str, torch.Tensor]:
    """``num`` joint draws of the latent sites from ``guide`` (vectorised when possible)."""
    shapes = latent_site_shapes(spec.model, spec.data)
    names = list(shapes)
    try:
        out = Predictive(spec.model, guide=guide, num_samples=num, return_sites=names,
                         parallel=True)(**spec.data)
    except Exception:  # noqa: BLE001 - a model that does not vectorise draws one at a time
        out = Predictive(spec.model, guide=guide, num_samples=num, return_sites=names,
                         parallel=False)(**spec.data)
    # a vectorised Predictive adds singleton plate dims: restore each site's own shape
    return {n: out[n].detach().reshape(num, *shapes[n]) for n in names}


def run_svi(spec: ModelSpec, options: SVIOptions, settings: RunSettings) -> Samples:
    """Fit the guide, then draw ``chains x draws`` from it as ``Samples``."""
    started = time.perf_counter()
    fit = fit_svi(spec, options, seed=settings.seed, progress=settings.progress)
    flat = draw_from_guide(spec, fit.guide, settings.chains * settings.draws)
    draws = {k: v.reshape(settings.chains, settings.draws, *v.shape[1:]) for k, v in flat.items()}
    return Samples(draws, {}, {
        "method": "svi", "seed": settings.seed, "sampling_time_s": time.perf_counter() - started,
        "svi_loss": fit.losses, "svi_converged": fit.converged, "svi_steps": len(fit.losses),
        "guide_state": pyro.get_param_store().get_state(),
    })
