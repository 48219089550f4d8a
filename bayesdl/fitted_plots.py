"""Model plots of a saved run: the fitted network restored from the run directory, then drawn.

``bayesdl plot RUN --kind model`` calls :func:`plot_fitted_model`. For a run of the
built-in ``vae`` it writes ``reconstructions.png`` and ``samples.png`` (8x8 digit grids:
held-out digits above their reconstructions, decoder means at draws from p(z)); for
``sequence_regression`` it writes ``forecast.png`` (the series, the median forecast and
its 50%/90% bands from the posterior draws of the output layer). The networks are rebuilt
from ``settings.json`` (model arguments, data arguments, dtype) and their weights read
from ``guide_params.pt`` (Pyro's param-store state) with ``torch.load(weights_only=True)``:
only tensors and torch/Pyro constraint classes are accepted, nothing else is unpickled.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bayesdl.errors import BayesdlError
from bayesdl.options import convert_value

PLOTTED_MODELS = ("vae", "sequence_regression")


def _constraint_classes() -> list[type]:
    """Every constraint class of torch and Pyro: the only globals a param-store file may name."""
    import pyro.distributions.constraints as pyro_constraints
    import torch.distributions.constraints as torch_constraints

    classes = set()
    for module in (torch_constraints, pyro_constraints):
        for value in vars(module).values():
            if isinstance(value, type) and issubclass(value, torch_constraints.Constraint):
                classes.add(value)
            elif isinstance(value, torch_constraints.Constraint):
                classes.add(type(value))
    return sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}")


def load_param_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The parameters ``{name: tensor}`` (unconstrained, on the CPU) saved in a run's
    ``guide_params.pt``, loaded without unpickling anything but tensors and constraints."""
    path = Path(path)
    if not path.is_file():
        raise BayesdlError(f"no fitted parameters at {str(path)!r} (was the run made with --method svi?)")
    try:
        with torch.serialization.safe_globals(_constraint_classes()):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - the unpickler raises many types
        first = str(error).strip().splitlines()
        reason = next((line.strip() for line in first if "Unsupported global" in line), type(error).__name__)
        raise BayesdlError(f"{str(path)!r} is not a parameter file bayesdl can load safely: "
                           f"{reason}") from None
    params = state.get("params") if isinstance(state, dict) else None
    if not isinstance(params, dict) or not all(isinstance(v, torch.Tensor) for v in params.values()):
        raise BayesdlError(f"{str(path)!r} does not hold Pyro param-store parameters")
    return params


def _load_module(module: torch.nn.Module, prefix: str, params: dict[str, torch.Tensor], model: str) -> None:
    """Copy the parameters named ``prefix$$$...`` into ``module`` (all of them must be there)."""
    own = {name.split("$$$", 1)[1]: value for name, value in params.items()
           if name.startswith(prefix + "$$$")}
    try:
        module.load_state_dict(own, strict=True)
    except RuntimeError as error:
        reason = str(error).splitlines()[0] if str(error) else "parameters do not match"
        raise BayesdlError(f"the saved {prefix} parameters do not fit the {model} network "
                           f"rebuilt from settings.json: {reason}") from None


def _read_settings(run_dir: Path) -> dict[str, Any]:
    path = run_dir / "settings.json"
    if not path.is_file():
        raise BayesdlError(f"no settings.json in {str(run_dir)!r}; --kind model needs a run directory")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BayesdlError(f"cannot read {str(path)!r}: {error}") from None


def _typed(function, given: dict[str, Any], what: str) -> dict[str, Any]:
    """The entries of ``given`` that ``function`` takes, converted to its defaults' types."""
    out = {}
    for name, param in inspect.signature(function).parameters.items():
        if name in given and param.default is not inspect.Parameter.empty:
            kind = type(param.default)
            out[name] = convert_value(given[name], kind, f"{what} {name}") if kind in (bool, int, float) \
                else str(given[name])
    return out


def plot_fitted_model(run: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Write the model plots of run directory ``run`` into ``out_dir`` (default: the run);
    returns the paths written. See the module docstring for what each model gets."""
    import pyro

    run_dir = Path(run)
    if not run_dir.is_dir():
        raise BayesdlError(f"--kind model needs a run directory, got {str(run)!r}")
    settings = _read_settings(run_dir)
    model = settings.get("model") or settings.get("trainer")
    if model not in PLOTTED_MODELS:
        raise BayesdlError(f"--kind model draws runs of {' and '.join(PLOTTED_MODELS)}; "
                           f"this run is of {model!r}")
    dtype = torch.float32 if settings.get("dtype") == "float32" else torch.float64
    args = settings.get("args") or {}
    params = load_param_state(run_dir / "guide_params.pt")
    out = Path(out_dir) if out_dir is not None else run_dir
    try:
        out.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".model-plots.", suffix=".tmp", dir=out))
    except OSError as error:
        raise BayesdlError(f"cannot write into {str(out)!r}: {error.strerror or error}") from None
    try:  # drawn in a hidden folder, then moved into place: no half-written PNG is left
        with torch.random.fork_rng(devices=[]):
            pyro.clear_param_store()
            try:
                drawn = (_vae_plots(args, params, dtype, tmp) if model == "vae"
                         else _forecast_plot(run_dir, args, params, dtype, tmp))
            finally:
                pyro.clear_param_store()
        written = []
        for path in drawn:
            os.replace(path, out / path.name)
            written.append(out / path.name)
        return written
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _vae_plots(args: dict[str, Any], params: dict[str, torch.Tensor], dtype: torch.dtype,
               out: Path) -> list[Path]:
    from bayesdl.model_plots import vae_pngs

    net, x_test = restore_vae(args, params, dtype)
    torch.manual_seed(0)
    return vae_pngs(net, x_test, out)


def restore_vae(args: dict[str, Any], params: dict[str, torch.Tensor], dtype: torch.dtype = torch.float64):
    """``(VAE, held-out digits)`` of a ``vae`` run: the network rebuilt from the run's
    ``args`` (settings.json) with the fitted ``params`` (:func:`load_param_state`)."""
    from bayesdl.models.vae import digits_data, get_vae

    model_args = _typed(get_vae, args, "vae argument")
    data_args = {k: v for k, v in _typed(digits_data, args, "vae data argument").items() if k != "split"}
    x_test = torch.as_tensor(digits_data("test", **data_args)["x"], dtype=dtype)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = get_vae(x_test, **model_args)
    for prefix, module in (("vae_encoder", net.encoder), ("vae_decoder", net.decoder),
                           ("vae_prior", net.prior)):
        if any(True for _ in module.parameters()):
            _load_module(module, prefix, {k: v.to(dtype) for k, v in params.items()}, "vae")
    return net, x_test


def _forecast_plot(run_dir: Path, args: dict[str, Any], params: dict[str, torch.Tensor],
                   dtype: torch.dtype, out: Path) -> list[Path]:
    from bayesdl.model_plots import forecast_png
    from bayesdl.models.sequence_regression import (
        forecast,
        get_features,
        load_series,
        sequence_data,
        sequence_regression,
    )
    from bayesdl.runs import load

    model_args = _typed(sequence_regression, args, "sequence_regression argument")
    data_args = _typed(sequence_data, args, "sequence_regression data argument")
    window = data_args.pop("window", 20)
    values = load_series(**data_args)
    mean, sd = float(values.mean()), float(values.std())
    scaled = torch.as_tensor((values - mean) / sd, dtype=dtype)
    cell, hidden = model_args.get("cell", "lstm"), model_args.get("hidden", 16)
    net = get_features(scaled.new_zeros(1, window), cell, hidden)
    if cell != "linear":
        _load_module(net, "seq_features", {k: v.to(dtype) for k, v in params.items()}, "sequence_regression")
    posterior = load(run_dir).posterior
    missing = [name for name in ("w", "b", "sigma") if name not in posterior]
    if missing:
        raise BayesdlError(f"posterior.nc of {str(run_dir)!r} has no draws of {', '.join(missing)}")
    draws = {name: torch.as_tensor(np.asarray(posterior[name]), dtype=dtype).flatten(0, 1)
             for name in ("w", "b", "sigma")}
    horizon = max(20, 2 * window)
    shown = scaled[-max(5 * window, 100):]
    paths = forecast(net, shown, horizon, draws, generator=torch.Generator().manual_seed(0))
    series = data_args.get("series", "sine")
    return [forecast_png(shown * sd + mean, paths * sd + mean, out / "forecast.png",
                         title=f"{series}: {horizon}-step forecast, {paths.shape[0]} posterior draws")]
