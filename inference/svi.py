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

Mini-batches (``minibatch=uniform|dpp``, ``batch_size=B``): each step sees ``B`` of the
``N`` data points (every data array with ``N`` rows is subsampled; the model's plates
must be sized from the data), and each observed log-likelihood term is weighted by
``1 / P(i in batch)`` (``N / B`` for uniform batches, the k-DPP inclusion probabilities
for ``dpp``, diverse batches on the ``minibatch_features`` array), so the loss and its
gradient are unbiased for the full-data ones; priors and the guide stay unscaled.
Batches are drawn 256 at a time from a generator keyed by (seed, block), so a resumed
fit sees the same batches. The windowed loss mean above absorbs the extra noise.
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

from bayesdl.checkpoint import Checkpoint
from bayesdl.errors import BayesdlError
from bayesdl.inference.dpp import (
    DPPMiniBatchSampler,
    MiniBatch,
    UniformMiniBatchSampler,
    scale_observed,
    subsample_data,
)
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings

GUIDES = {"normal": AutoNormal, "mvn": AutoMultivariateNormal, "delta": AutoDelta}
MINIBATCH_KINDS = ("none", "uniform", "dpp")
MINIBATCH_BLOCK = 256  # mini-batches drawn at once (one batched k-DPP draw)


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
    minibatch: str = "none"
    batch_size: int = 0
    minibatch_features: str = ""


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


def check_svi_options(options: SVIOptions) -> None:
    """Bad option values are one-line errors, not an optimiser's traceback."""
    if not (math.isfinite(options.lr) and options.lr > 0):
        raise BayesdlError(f"svi: lr must be a positive number, got {options.lr}")
    for name in ("max_steps", "num_particles", "window", "patience"):
        if getattr(options, name) < 1:
            raise BayesdlError(f"svi: {name} must be >= 1, got {getattr(options, name)}")
    if options.reductions < 0 or not options.tol >= 0:
        raise BayesdlError(f"svi: reductions and tol must be >= 0, got {options.reductions}, "
                           f"{options.tol}")
    if options.minibatch not in MINIBATCH_KINDS:
        raise BayesdlError(f"svi: unknown minibatch {options.minibatch!r}; choose one of "
                           f"{', '.join(MINIBATCH_KINDS)}")
    if options.minibatch != "none" and options.batch_size < 1:
        raise BayesdlError(f"svi: minibatch={options.minibatch} needs --opt batch_size=B >= 1, "
                           f"got {options.batch_size}")


class MiniBatching:
    """Mini-batches of a model's data: ``batch(step)`` gives the step's subsampled model
    arguments, and ``model`` is the model with its observed terms weighted by the current
    batch's Horvitz-Thompson weights (unweighted before the first batch)."""

    def __init__(self, spec: ModelSpec, sampler: DPPMiniBatchSampler | UniformMiniBatchSampler,
                 num_items: int, seed: int, dtype: torch.dtype, device: torch.device):
        self.spec, self.sampler, self.num_items, self.seed = spec, sampler, num_items, seed
        self.dtype, self.device = dtype, device
        self.weights: torch.Tensor | None = None
        self._block, self._batches = -1, MiniBatch(torch.empty(0), torch.empty(0))

    def model(self, *args: Any, **kwargs: Any) -> Any:
        """The model, observed sites scaled by the current batch's weights."""
        if self.weights is None:
            return self.spec.model(*args, **kwargs)
        return scale_observed(self.spec.model, self.weights)(*args, **kwargs)

    def _draw_block(self, block: int) -> MiniBatch:
        seed = (self.seed * 0x9E3779B1 + block * 0x85EBCA77 + 1) % (2**63 - 1)
        if isinstance(self.sampler, DPPMiniBatchSampler):
            generator = torch.Generator(device=self.sampler.values.device).manual_seed(seed)
            return self.sampler.sample_many(MINIBATCH_BLOCK, generator)
        generator = torch.Generator().manual_seed(seed)
        drawn = [self.sampler.sample(generator) for _ in range(MINIBATCH_BLOCK)]
        return MiniBatch(torch.stack([b.indices for b in drawn]), torch.stack([b.weights for b in drawn]))

    def batch(self, step: int) -> dict[str, Any]:
        """Step ``step``'s model arguments; sets the weights ``model`` applies."""
        block, offset = divmod(step, MINIBATCH_BLOCK)
        if block != self._block:
            self._block, self._batches = block, self._draw_block(block)
        batch = MiniBatch(self._batches.indices[offset], self._batches.weights[offset])
        self.weights = batch.weights.to(device=self.device, dtype=self.dtype)
        return subsample_data(self.spec.data, batch, self.num_items)


def _observed_array(spec: ModelSpec) -> tuple[str, int]:
    """The data key of the model's observed array with one row per data point, and N."""
    with poutine.block():
        trace = poutine.trace(spec.model).get_trace(**spec.data)
    for site in trace.nodes.values():
        if site["type"] != "sample" or not site["is_observed"] or site_is_subsample(site):
            continue
        for key, value in spec.data.items():
            if torch.is_tensor(value) and value.dim() >= 1 and (
                    value is site["value"] or (value.shape == site["value"].shape
                                               and bool((value == site["value"]).all()))):
                return key, value.shape[0]
    raise BayesdlError("svi: mini-batches need a model whose observed site is a data array "
                       "with one row per data point; this model has none")


def _features(spec: ModelSpec, name: str, observed: str, num_items: int) -> torch.Tensor:
    """The DPP's features: data array ``name``, else the first 2-D float array with
    ``num_items`` rows, else the observed array (as one column)."""
    if name:
        value = spec.data.get(name)
        if not torch.is_tensor(value) or value.dim() not in (1, 2) or value.shape[0] != num_items:
            raise BayesdlError(f"svi: minibatch_features={name!r} must name a data array of shape "
                               f"[{num_items}] or [{num_items}, F]; data arrays: "
                               f"{', '.join(k for k, v in spec.data.items() if torch.is_tensor(v))}")
    else:
        value = next((v for v in spec.data.values() if torch.is_tensor(v) and v.dim() == 2
                      and v.shape[0] == num_items and v.is_floating_point()), spec.data[observed])
    return value.to(torch.float64).reshape(num_items, -1)


def make_minibatching(spec: ModelSpec, options: SVIOptions, seed: int) -> MiniBatching | None:
    """The mini-batching ``options`` ask for (None for full-batch fits), checked: the
    batch fits the data and the model's plates follow the data's size."""
    check_svi_options(options)
    if options.minibatch == "none":
        return None
    observed, n = _observed_array(spec)
    if options.batch_size > n:
        raise BayesdlError(f"svi: batch_size={options.batch_size} exceeds the {n} data points")
    if options.minibatch == "uniform":
        sampler: DPPMiniBatchSampler | UniformMiniBatchSampler = UniformMiniBatchSampler(
            n, options.batch_size)
    else:
        sampler = DPPMiniBatchSampler(_features(spec, options.minibatch_features, observed, n),
                                      options.batch_size)
    y = spec.data[observed]
    dtype = y.dtype if y.is_floating_point() else torch.get_default_dtype()
    batching = MiniBatching(spec, sampler, n, seed, dtype, y.device)
    _check_plates_follow_data(spec, batching.batch(0), options.batch_size)
    batching.weights = None
    return batching


def _check_plates_follow_data(spec: ModelSpec, batch_data: dict[str, Any], batch_size: int) -> None:
    """The model runs on a mini-batch, its latent sites keep their full-data shapes and each
    observed site's batch shape ends in the data-point dimension (where the weights go)."""
    full = latent_site_shapes(spec.model, spec.data)
    try:
        with poutine.block():
            trace = poutine.trace(spec.model).get_trace(**batch_data)
    except Exception as error:  # noqa: BLE001 - any failure means the model fixes its own size
        raise BayesdlError("svi: the model fails on a mini-batch; size its plates from the data "
                           f"(pyro.plate('obs', y.shape[0])): {str(error).splitlines()[0]}") from None
    part = {n: tuple(s["value"].shape) for n, s in trace.iter_stochastic_nodes()
            if not s["is_observed"] and not site_is_subsample(s)}
    changed = [name for name in full if part.get(name) != full[name]]
    if changed:
        raise BayesdlError(f"svi: mini-batches change the shape of latent site(s) {', '.join(changed)}; "
                           "only models whose latent variables are global can be mini-batched")
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or not site["is_observed"] or site_is_subsample(site):
            continue
        if tuple(site["fn"].batch_shape)[-1:] != (batch_size,):
            raise BayesdlError(f"svi: observed site {name!r} has batch shape {tuple(site['fn'].batch_shape)} "
                               f"on a batch of {batch_size}; size its plates from the data "
                               "(pyro.plate('obs', y.shape[0])), data points rightmost, no .to_event")


def fit_svi(spec: ModelSpec, options: SVIOptions, seed: int = 0,
            progress: bool = True, checkpoint: Checkpoint | None = None) -> SVIFit:
    """Fit a guide to ``spec`` by maximising the ELBO with Adam.

    With ``checkpoint``, parameters, Adam's moments, the loss history, the stopping
    rule's counters and torch's RNG state are flushed every ``checkpoint.every`` steps,
    and a fit with a flush behind it continues from there exactly.
    """
    batching = make_minibatching(spec, options, seed)
    pyro.clear_param_store()
    pyro.set_rng_seed(seed)
    guide = make_guide(spec.model, spec.guide, options.guide)
    svi = SVI(spec.model if batching is None else batching.model, guide, pyro.optim.Adam({"lr": options.lr}),
              Trace_ELBO(num_particles=options.num_particles))
    losses: list[float] = []
    plateau = _Plateau(options.tol, max(options.patience, 1))
    lr, cuts, converged = options.lr, 0, False
    window = max(options.window, 1)
    first = 0
    saved = checkpoint.restore_payload() if checkpoint is not None else None
    if saved is not None:
        first, losses, lr, cuts = _restore_fit(svi, spec, saved)
        plateau.best, plateau.stale = saved["best"], saved["stale"]
    bar = tqdm(total=options.max_steps, initial=first, desc="svi", disable=not progress,
               leave=False, dynamic_ncols=True, mininterval=0.5)
    with bar:
        for step in range(first, options.max_steps):
            if checkpoint is not None and step > first and checkpoint.due(step):
                checkpoint.save_payload(step, _fit_payload(svi, losses, lr, cuts, plateau))
            data = spec.data if batching is None else batching.batch(step)
            losses.append(svi.step(**data))  # Pyro returns the loss as a float
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


def _fit_payload(svi: SVI, losses: list[float], lr: float, cuts: int, plateau: _Plateau) -> dict:
    """Everything the fit loop carries from one step to the next, as plain data."""
    params = {name: value.detach().cpu().clone()
              for name, value in pyro.get_param_store().named_parameters()}
    payload = {"params": params, "optim": svi.optim.get_state(), "rng": torch.get_rng_state(),
               "losses": torch.tensor(losses, dtype=torch.float64), "lr": lr, "cuts": cuts,
               "best": plateau.best, "stale": plateau.stale}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        payload["cuda_rng"] = torch.cuda.get_rng_state_all()
    return payload


def _restore_fit(svi: SVI, spec: ModelSpec, saved: dict) -> tuple[int, list[float], float, int]:
    """Put a saved fit back: the guide and model create their parameters (one ELBO
    evaluation), their values and Adam's state are overwritten, then the RNG state."""
    svi.evaluate_loss(**spec.data)
    store = dict(pyro.get_param_store().named_parameters())
    if set(store) != set(saved["params"]):
        raise BayesdlError("svi checkpoint: its parameters do not match this model and guide")
    with torch.no_grad():
        for name, value in saved["params"].items():
            store[name].copy_(value)
    svi.optim.set_state(saved["optim"])
    _set_learning_rate(svi.optim, saved["lr"])
    torch.set_rng_state(saved["rng"])
    if "cuda_rng" in saved:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    return saved["steps_done"], saved["losses"].tolist(), saved["lr"], saved["cuts"]


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
    fit = fit_svi(spec, options, seed=settings.seed, progress=settings.progress,
                  checkpoint=settings.checkpoint)
    flat = draw_from_guide(spec, fit.guide, settings.chains * settings.draws)
    draws = {k: v.reshape(settings.chains, settings.draws, *v.shape[1:]) for k, v in flat.items()}
    return Samples(draws, {}, {
        "method": "svi", "seed": settings.seed, "sampling_time_s": time.perf_counter() - started,
        "svi_loss": fit.losses, "svi_converged": fit.converged, "svi_steps": len(fit.losses),
        "svi_minibatch": options.minibatch, "svi_batch_size": options.batch_size,
        "guide_state": _detached_state(),
    })


def _detached_state() -> dict:
    """The param store's state with plain tensors (a model's own modules hold weak
    references that cannot be pickled)."""
    state = pyro.get_param_store().get_state()
    state["params"] = {name: value.detach().clone() for name, value in state["params"].items()}
    return state
