"""`svi`: stochastic variational inference with Trace_ELBO and Pyro's autoguides.

The guide is the model's own when it has one, else ``AutoNormal``; ``guide=mvn``
and ``guide=delta`` pick ``AutoMultivariateNormal`` and ``AutoDelta`` (MAP).

Stopping: Adam at a constant learning rate leaves the parameters wandering around the
optimum by about sqrt(lr) in their own units, and single-window comparisons of a
noisy loss fire by chance. So the loss is averaged over windows of ``window`` steps;
when ``patience`` windows in a row fail to beat the best window by ``tol`` (relative),
the learning rate is divided by 10; after ``reductions`` such cuts the next plateau
ends the fit (converged), as does ``max_steps`` (not converged). Draws come from the
fitted guide.
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
    patience: int = 3
    reductions: int = 2
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
    plateau = _Plateau(options.tol, max(options.patience, 1))
    lr, cuts, converged = options.lr, 0, False
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
            if step % window != window - 1:
                continue
            mean_loss = sum(losses[-window:]) / window
            bar.set_postfix(loss=f"{mean_loss:.4g}", lr=f"{lr:.2g}")
            if not plateau.update(mean_loss):
                continue
            if cuts == options.reductions:
                converged = True
                break
            lr, cuts = lr / 10, cuts + 1
            _set_learning_rate(svi.optim, lr)
            plateau = _Plateau(options.tol, max(options.patience, 1))
    return SVIFit(guide, losses, converged)


class _Plateau:
    """Counts windows that fail to beat the best window mean by ``tol`` (relative)."""

    def __init__(self, tol: float, patience: int):
        self.tol, self.patience = tol, patience
        self.best, self.stale = math.inf, 0

    def update(self, mean_loss: float) -> bool:
        """Record a window mean; True once ``patience`` windows in a row did not improve."""
        if mean_loss < self.best - self.tol * abs(self.best if math.isfinite(self.best) else 0):
            self.best, self.stale = mean_loss, 0
        else:
            self.stale += 1
        return self.stale >= self.patience


def _set_learning_rate(optim: pyro.optim.PyroOptim, lr: float) -> None:
    """Set ``lr`` on every per-parameter optimiser Pyro has made, and on later ones."""
    optim.pt_optim_args["lr"] = lr
    for optimiser in optim.optim_objs.values():
        for group in optimiser.param_groups:
            group["lr"] = lr


def latent_site_shapes(model: Callable[..., Any], data: dict[str, Any]) -> dict[str, tuple]:
    """Shapes of the model's unobserved sample sites, in execution order."""
    with poutine.block():
        trace = poutine.trace(model).get_trace(**data)
    return {n: tuple(s["value"].shape) for n, s in trace.iter_stochastic_nodes()
            if not s["is_observed"] and not site_is_subsample(s)}


def draw_from_guide(spec: ModelSpec, guide: Callable[..., Any], num: int) -> dict[str, torch.Tensor]:
    """``num`` joint draws of the latent sites from ``guide``.

    Only the guide is run (the model need not broadcast over a draw plate), vectorised
    when the guide allows it, else one draw at a time.
    """
    shapes = latent_site_shapes(spec.model, spec.data)
    names = list(shapes)
    try:
        out = Predictive(guide, num_samples=num, return_sites=names, parallel=True)(**spec.data)
    except Exception:  # noqa: BLE001 - a guide that does not vectorise draws one at a time
        out = Predictive(guide, num_samples=num, return_sites=names, parallel=False)(**spec.data)
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
