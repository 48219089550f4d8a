"""From what the user names (a callable, a built-in, ``file.py:fn``) to a `ModelSpec`.

Loads the model, reads or generates its data, applies ``--arg`` settings, checks the
data against the model, moves it to the run's device and dtype, and runs the model
once so that a model that raises is reported before any sampling starts.
"""

from __future__ import annotations

import importlib.util
import inspect
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyro import poutine

from bayesdl.data_files import check_finite, read_data_file
from bayesdl.data_schema import validate_data
from bayesdl.errors import BayesdlError
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.models import get_builtin
from bayesdl.options import convert_value, guess_value


def load_model_spec(model: str | Callable[..., Any], data: Any, args: dict[str, Any],
                    device: torch.device, dtype: torch.dtype, *,
                    allow_extra_data: bool = False) -> ModelSpec:
    """Build the `ModelSpec` for ``model`` with ``data`` (dict, file path or None).

    A data key the model does not take is an error, unless ``allow_extra_data``: then a
    warning, and the key is dropped.
    """
    if callable(model):
        return _spec_from_function(model, getattr(model, "__name__", "model"),
                                   getattr(model, "guide", None), data, args, device, dtype,
                                   allow_extra_data)
    if not isinstance(model, str) or not model:
        raise BayesdlError(f"model must be a Pyro callable, a built-in name or file.py:fn, got {model!r}")
    if ":" in model or model.endswith(".py"):
        function, guide, name = _load_from_file(model)
        return _spec_from_function(function, name, guide, data, args, device, dtype,
                                   allow_extra_data)
    return _spec_from_builtin(model, data, args, device, dtype, allow_extra_data)


# ----------------------------------------------------------------- sources
def _load_from_file(source: str) -> tuple[Callable[..., Any], Callable[..., Any] | None, str]:
    path_text, _, function_name = source.rpartition(":") if ":" in source else (source, "", "model")
    function_name = function_name or "model"
    path = Path(path_text)
    if path.is_dir():
        raise BayesdlError(f"model file {path_text!r} is a directory, not a .py file")
    if not path.is_file():
        raise BayesdlError(f"model file {path_text!r} does not exist")
    module_name = f"bayesdl_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise BayesdlError(f"model file {path_text!r} cannot be imported (is it a .py file?)")
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as error:
        where = f" at line {error.lineno}" if error.lineno else ""
        raise BayesdlError(f"model file {path_text!r} has a syntax error{where}: {error.msg}") from None
    except Exception as error:  # noqa: BLE001 - any import failure is reported in one line
        raise BayesdlError(
            f"model file {path_text!r} raised {type(error).__name__} on import: {error}"
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        defined = [n for n, v in vars(module).items()
                   if inspect.isfunction(v) and v.__module__ == module_name]
        raise BayesdlError(
            f"model file {path_text!r} has no function {function_name!r} "
            f"(it defines: {', '.join(defined) or 'no functions'})"
        )
    guide = getattr(module, f"{function_name}_guide", None) or getattr(module, "guide", None)
    return function, guide if callable(guide) else None, f"{path.stem}:{function_name}"


def _spec_from_builtin(name: str, data: Any, args: dict[str, Any], device, dtype,
                       allow_extra_data: bool = False) -> ModelSpec:
    builtin = get_builtin(name)
    model_args, data_args = builtin.model_args(), builtin.data_args()
    unknown = [k for k in args if k not in model_args and k not in data_args]
    if unknown:
        known = {**model_args, **data_args}
        listing = ", ".join(f"{k}={v!r}" for k, v in known.items()) or "none"
        raise BayesdlError(f"model {name!r} has no argument {unknown[0]!r}; its arguments: {listing}")
    typed_model_args = {k: convert_value(v, type(model_args[k]), f"argument {k!r}")
                        for k, v in args.items() if k in model_args}
    typed_data_args = {k: convert_value(v, type(data_args[k]), f"argument {k!r}")
                       for k, v in args.items() if k in data_args}
    if data is None:
        raw = builtin.data(**typed_data_args)
    else:
        if typed_data_args:
            raise BayesdlError(f"argument(s) {', '.join(typed_data_args)} set generated data; "
                               "they cannot be combined with --data")
        raw = _read_data(data)
    raw = _drop_extra(raw, list(builtin.schema), name, allow_extra_data)
    checked = validate_data(raw, builtin.schema, name)
    tensors = _to_tensors(checked, device, dtype)
    coords = builtin.coords(checked) if builtin.coords else {}
    spec = ModelSpec(builtin.model, {**tensors, **typed_model_args}, builtin.guide, name,
                     dict(builtin.dims), coords)
    check_model_runs(spec)
    return spec


def _spec_from_function(function: Callable[..., Any], name: str, guide, data: Any,
                        args: dict[str, Any], device, dtype,
                        allow_extra_data: bool = False) -> ModelSpec:
    raw = {} if data is None else _read_data(data)
    parameters = inspect.signature(function).parameters
    takes_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    if not takes_any:
        unknown = [k for k in args if k not in parameters]
        if unknown:
            raise BayesdlError(f"model {name!r} has no argument {unknown[0]!r}; "
                               f"it takes {', '.join(parameters) or 'no arguments'}")
        named = [n for n, p in parameters.items() if p.kind is not p.VAR_POSITIONAL]
        raw = _drop_extra(raw, named, name, allow_extra_data)
    merged = {**raw, **{k: guess_value(v) for k, v in args.items()}}
    missing = [n for n, p in parameters.items()
               if p.default is inspect.Parameter.empty and n not in merged
               and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if missing:
        raise BayesdlError(f"model {name!r} needs data {', '.join(map(repr, missing))}; "
                           "give it with --data FILE (or data= in Python)")
    spec = ModelSpec(function, _to_tensors(merged, device, dtype), guide, name)
    check_model_runs(spec)
    return spec


# ----------------------------------------------------------------- data
def _read_data(data: Any) -> dict[str, Any]:
    if isinstance(data, (str, Path)):
        return read_data_file(data)
    if not isinstance(data, dict):
        raise BayesdlError(f"data must be a dict or a file path, got {type(data).__name__}")
    out = {}
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            out[key] = value
            if value.is_floating_point() and not torch.isfinite(value).all():
                raise BayesdlError(f"data: {key!r} holds NaN or Inf")
        elif isinstance(value, (list, tuple)):
            try:
                out[key] = np.asarray(value, dtype=float)
            except (TypeError, ValueError):
                raise BayesdlError(f"data: {key!r} is not a rectangular array of numbers") from None
        else:
            out[key] = value
    check_finite({k: v for k, v in out.items() if not isinstance(v, torch.Tensor)})
    return out


def _drop_extra(data: dict[str, Any], accepted: list[str], name: str,
                allow: bool) -> dict[str, Any]:
    """``data`` without keys outside ``accepted``: an error, or with ``allow`` a warning."""
    extra = [k for k in data if k not in accepted]
    if extra and not allow:
        raise BayesdlError(
            f"data key(s) {', '.join(map(repr, extra))} are not used by model {name!r} "
            f"(it takes: {', '.join(accepted) or 'no data'}); remove them or pass "
            "--allow-extra-data (allow_extra_data=True in Python)")
    if extra:
        warnings.warn(f"model {name!r} does not use data {', '.join(map(repr, extra))}; ignored",
                      stacklevel=3)
    return {k: v for k, v in data.items() if k in accepted}


def _to_tensors(data: dict[str, Any], device: torch.device, dtype: torch.dtype) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, torch.Tensor):
            out[key] = value.to(device=device, dtype=dtype) if value.is_floating_point() \
                else value.to(device)
        elif isinstance(value, np.ndarray):
            if value.dtype.kind in "iub" and value.ndim == 0:
                out[key] = int(value)
            elif value.dtype.kind in "fiub":
                out[key] = torch.as_tensor(value, dtype=dtype, device=device)
            else:
                raise BayesdlError(f"data {key!r} has dtype {value.dtype}, not numeric")
        elif isinstance(value, float) and value.is_integer() and key[:1].isupper():
            out[key] = int(value)  # sizes such as N or J written as 8.0
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------- checks
def check_model_runs(spec: ModelSpec) -> None:
    """Run the model once on its data; a failure becomes a one-line BayesdlError."""
    try:
        with poutine.block():
            poutine.trace(spec.model).get_trace(**spec.data)
    except BayesdlError:
        raise
    except Exception as error:  # noqa: BLE001 - a model may raise anything
        raise model_error(spec, error) from None


def latent_site_names(spec: ModelSpec) -> list[str]:
    """The model's unobserved ``pyro.sample`` sites (what a method infers)."""
    with poutine.block():
        trace = poutine.trace(spec.model).get_trace(**spec.data)
    return [name for name, site in trace.nodes.items() if site["type"] == "sample"
            and not site["is_observed"] and type(site["fn"]).__name__ != "_Subsample"]


def model_error(spec: ModelSpec, error: BaseException) -> BayesdlError:
    """A one-line error naming the model, the exception and the model's line."""
    location = ""
    source = _source_file(spec.model)
    for frame in reversed(traceback.extract_tb(error.__traceback__)):
        if source and frame.filename == source:
            location = f" (line {frame.lineno})"
            break
    message = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return BayesdlError(f"model {spec.name!r} raised {type(error).__name__}{location}: {message}")


def raised_in_model(spec: ModelSpec, error: BaseException) -> bool:
    """Whether the model's own code is among the frames that raised ``error``."""
    source = _source_file(spec.model)
    return bool(source) and any(f.filename == source for f in traceback.extract_tb(error.__traceback__))


def _source_file(function: Callable[..., Any]) -> str | None:
    try:
        return inspect.getsourcefile(inspect.unwrap(function))
    except TypeError:
        return None


__all__ = ["load_model_spec", "check_model_runs", "latent_site_names", "model_error",
           "raised_in_model"]
