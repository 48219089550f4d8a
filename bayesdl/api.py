"""The Python API: ``bayesdl.infer`` and ``bayesdl.load``.

``infer`` is the whole data flow of DESIGN.md in one call: model source -> ModelSpec ->
method -> Samples -> InferenceData (-> run directory when ``out`` is given).
"""

from __future__ import annotations

import dataclasses
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import arviz as az
import pyro
import torch

from bayesdl.convert import to_inference_data
from bayesdl.device import resolve_device, resolve_dtype, run_context
from bayesdl.errors import BayesdlError
from bayesdl.inference.methods import get_method
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings
from bayesdl.model_source import load_model_spec, model_error, raised_in_model
from bayesdl.options import build_options
from bayesdl.plots import plot
from bayesdl.runs import choose_run_dir, write_run
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
    **options: Any,
) -> az.InferenceData:
    """Run ``method`` on ``model`` and return the posterior as ``arviz.InferenceData``.

    ``model`` is a Pyro callable, a built-in name (``"eight_schools"``) or
    ``"path/file.py:fn"``; ``data`` a dict of arrays or a CSV/JSON/NPZ path (built-ins
    bring their own); ``args`` sets model arguments (``{"centered": True}``); other
    keywords are the method's options (``jit=True``, ``guide="delta"``). Chain 0 is
    seeded ``seed`` and chain ``c`` ``chain_seed(seed, c)`` (listed in
    ``posterior.attrs["chain_seeds"]``). With ``out``, the run directory is written there.
    """
    for name, value, low in (("chains", chains, 1), ("draws", draws, 1), ("warmup", warmup, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BayesdlError(f"{name} must be an integer >= {low}, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise BayesdlError(f"seed must be a non-negative integer, got {seed!r}")
    run_method = get_method(method)
    method_options = build_options(run_method.options, options, method)
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    run_dir = choose_run_dir(out, model_label(model), method) if out is not None else None
    settings = RunSettings(chains, warmup, draws, seed, torch_device, torch_dtype, progress)
    started = time.perf_counter()
    with run_context(torch_device, torch_dtype):
        pyro.set_rng_seed(seed)
        spec = load_model_spec(model, data, args or {}, torch_device, torch_dtype)
        samples = _run_method(run_method, spec, method_options, settings)
        pyro.set_rng_seed(seed)
        idata = to_inference_data(samples, spec, predictive=predictive)
    idata.posterior.attrs["wall_time_s"] = time.perf_counter() - started
    if run_dir is not None:
        save(idata, run_dir, _settings_record(spec.name, method, method_options, settings, args),
             samples)
    return idata


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
         samples: Samples | None = None) -> Path:
    """Write the run directory (posterior.nc, summary.csv, trace.png, settings.json)."""

    def extra(tmp: Path) -> None:
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
