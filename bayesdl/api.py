"""The Python API: ``bayesdl.infer`` and ``bayesdl.load``.

``infer`` is the whole data flow of DESIGN.md in one call: model source -> ModelSpec ->
method -> Samples -> InferenceData (-> run directory when ``out`` is given).
"""

from __future__ import annotations

import dataclasses
import platform
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import arviz as az
import pyro
import torch

from bayesdl.checkpoint import (
    STATE_FILE,
    Checkpoint,
    check_same_request,
    read_request,
    run_request,
    save_tensors,
)
from bayesdl.convert import to_inference_data
from bayesdl.device import resolve_device, resolve_dtype, run_context
from bayesdl.errors import BayesdlError
from bayesdl.inference.methods import get_method
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings
from bayesdl.model_source import latent_site_names, load_model_spec, model_error, raised_in_model
from bayesdl.options import build_options
from bayesdl.plots import plot
from bayesdl.runs import choose_run_dir, partial_dir, write_run
from bayesdl.runs import load as load_run
from bayesdl.summary import summarize


def infer(
    model: str | Callable[..., Any],
    data: dict[str, Any] | str | Path | None = None,
    *,
    method: str = "nuts",
    chains: int = 4,
    warmup: int = 1000,
    draws: int = 1000,
    seed: int = 0,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float64",
    progress: bool = True,
    args: dict[str, Any] | None = None,
    predictive: bool = False,
    out: str | Path | None = None,
    checkpoint_every: int = 1000,
    resume: bool = False,
    init_from: str | Path | None = None,
    executor: str = "local",
    address: str | None = None,
    ray_tasks: int | None = None,
    allow_extra_data: bool = False,
    **options: Any,
) -> az.InferenceData:
    """Run ``method`` on ``model`` and return the posterior as ``arviz.InferenceData``.

    ``model`` is a Pyro callable, a built-in name (``"eight_schools"``) or
    ``"path/file.py:fn"``; ``data`` a dict of arrays or a CSV/JSON/NPZ path (built-ins
    bring their own); ``args`` sets model arguments (``{"centered": True}``); other
    keywords are the method's options (``jit=True``, ``guide="delta"``). Chain 0 is
    seeded ``seed`` and chain ``c`` ``chain_seed(seed, c)`` (listed in
    ``posterior.attrs["chain_seeds"]``). With ``out``, the run directory is written there.

    With ``out``, draws and sampler state are flushed to ``OUT.partial/`` every
    ``checkpoint_every`` iterations (0: never); ``resume=True`` with the same arguments
    continues from the last flush and gives the same draws as an uninterrupted run.
    ``init_from`` (a finished run) starts from its final sampler state, warm-up skipped.
    ``executor="ray"`` (CLI ``--backend ray``) runs groups of chains as Ray tasks
    (``address``: a cluster, else a local Ray on 127.0.0.1), ``ray_tasks`` of them
    (default: one per CPU, at most one per chain). A data key the model does not take
    is a `BayesdlError` unless ``allow_extra_data=True`` (then a warning; the key is dropped).
    """
    for name, value, low in (("chains", chains, 1), ("draws", draws, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BayesdlError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise BayesdlError(f"seed must be an integer from 0 to 2**32 - 1, got {seed!r}")
    run_method = get_method(method)
    method_options = build_options(run_method.options, options, method)
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    if init_from is not None:
        warmup = 0  # the finished run's warm-up is reused, not repeated
    if executor not in ("local", "ray"):
        raise BayesdlError(f"unknown executor {executor!r}; choose local or ray")
    if resume and out is None:
        raise BayesdlError("resume needs the run directory (out=...) of the interrupted run")
    run_dir = choose_run_dir(out, model_label(model), method, resume) if out is not None else None
    request = run_request(model, data, method, method_options, args, chains=chains, warmup=warmup,
                          draws=draws, seed=seed, device=None if device is None else str(device),
                          dtype=str(dtype).replace("torch.", ""), predictive=predictive,
                          checkpoint_every=checkpoint_every, executor=executor, address=address,
                          ray_tasks=ray_tasks, out=None if run_dir is None else str(run_dir),
                          init_from=None if init_from is None else str(init_from),
                          **({"allow_extra_data": True} if allow_extra_data else {}))
    checkpoint = None
    if run_dir is not None or init_from is not None:
        partial = partial_dir(run_dir) if run_dir is not None else None
        if resume:
            check_same_request(partial, request)
        checkpoint = Checkpoint(partial, checkpoint_every, init_from, request)
    settings = RunSettings(chains, warmup, draws, seed, torch_device, torch_dtype, progress,
                           checkpoint=checkpoint)
    started = time.perf_counter()
    with run_context(torch_device, torch_dtype):
        pyro.set_rng_seed(seed)
        spec = load_model_spec(model, data, args or {}, torch_device, torch_dtype,
                               allow_extra_data=allow_extra_data)
        if executor == "ray":
            from bayesdl.ray_backend import run_on_ray

            samples = run_on_ray(model, data, args or {}, method, method_options, settings,
                                 ray_tasks, address)
        else:
            samples = _run_method(run_method, spec, method_options, settings)
        pyro.set_rng_seed(seed)
        idata = to_inference_data(samples, spec, predictive=predictive)
    idata.posterior.attrs["wall_time_s"] = time.perf_counter() - started
    if run_dir is not None:
        record = _settings_record(spec.name, method, method_options, settings, args)
        record.update(executor=executor, init_from=request["init_from"],
                      checkpoint_events=checkpoint.events if checkpoint else [])
        save(idata, run_dir, record, samples, checkpoint.final if checkpoint else None)
        shutil.rmtree(partial_dir(run_dir), ignore_errors=True)
    return idata


def resume(run: str | Path, progress: bool = True, address: str | None = None) -> az.InferenceData:
    """Continue the interrupted run ``run`` (``RUN`` or ``RUN.partial``) from its last flush,
    with the arguments it was started with (``request.json``); ``address`` moves a Ray run."""
    path = Path(run)
    partial = path if path.name.endswith(".partial") else partial_dir(path)
    request = read_request(partial)
    if request.get("model") is None or request.get("data_kind") == "dict":
        raise BayesdlError(f"{str(partial)!r} was started from Python with a model or data "
                           "object; resume it from Python: infer(model, data, ..., resume=True)")
    request.pop("data_kind", None)
    model, data, method, options = (request.pop(k) for k in ("model", "data", "method", "options"))
    if address is not None:
        request["address"] = address
    return infer(model, data, method=method, progress=progress, resume=True, **request, **options)


def _run_method(run_method, spec, options, settings: RunSettings) -> Samples:
    try:
        return run_method.run(spec, options, settings)
    except BayesdlError:
        raise
    except Exception as error:
        if raised_in_model(spec, error):
            raise model_error(spec, error) from None
        if isinstance(error, (ValueError, RuntimeError)) and "initial" in str(error).lower():
            raise BayesdlError(f"{run_method.name} could not start: {error}") from None
        if not latent_site_names(spec):
            raise BayesdlError(f"model {spec.name!r} has no latent pyro.sample site: "
                               "there is nothing to infer") from None
        raise


def model_label(model: Any) -> str:
    """A short name for run directories: the built-in name, ``file-function`` or ``__name__``."""
    if callable(model):
        return getattr(model, "__name__", "model")
    text = str(model)
    if ":" in text:
        path, _, function = text.rpartition(":")
        return f"{Path(path).stem}-{function}"
    return Path(text).stem


def _settings_record(name: str, method: str, options: Any, settings: RunSettings,
                     args: dict[str, Any] | None) -> dict[str, Any]:
    return {
        "model": name, "method": method, "options": dataclasses.asdict(options),
        "args": args or {}, "chains": settings.chains, "warmup": settings.warmup,
        "draws": settings.draws, "seed": settings.seed, "device": str(settings.device),
        "dtype": str(settings.dtype).replace("torch.", ""),
        "versions": {"python": platform.python_version(), "torch": torch.__version__,
                     "pyro": pyro.__version__, "arviz": az.__version__},
    }


def save(idata: az.InferenceData, run_dir: Path, settings: dict[str, Any],
         samples: Samples | None = None, kernel_state: dict[str, Any] | None = None) -> Path:
    """Write the run directory (posterior.nc, summary.csv, trace.png, settings.json, and
    the final sampler state kernel_state.pt for ``--init-from``)."""

    def extra(tmp: Path) -> None:
        if kernel_state is not None:
            save_tensors(tmp / STATE_FILE, kernel_state)
        summarize(idata).to_csv(tmp / "summary.csv")
        plot(idata, "trace", tmp / "trace.png")
        if samples is not None and "guide_state" in samples.info:
            torch.save(samples.info["guide_state"], tmp / "guide_params.pt")
        if samples is not None and "svi_loss" in samples.info:
            losses = samples.info["svi_loss"]
            (tmp / "loss.csv").write_text("step,loss\n" + "".join(
                f"{i + 1},{loss!r}\n" for i, loss in enumerate(losses)))

    return write_run(run_dir, idata, settings, extra)


def load(run: str | Path) -> az.InferenceData:
    """The InferenceData saved in a run directory (or a ``posterior.nc`` file)."""
    return load_run(run)
