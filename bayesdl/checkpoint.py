"""Checkpoints of a running inference: draws and sampler state flushed every N iterations.

A run in progress keeps ``RUN.partial/`` beside the directory it will become
(:func:`bayesdl.runs.partial_dir`)::

    request.json                       how the run was asked for (``bayesdl infer --resume``)
    draws-000000000-000001000.npz      unconstrained draws 0..999 and their stats (append-only)
    state-000002000.pt                 the sampler state after 2000 iterations (the last two kept)
    events.jsonl                       one line per start, flush and resume (host, pid, step)
    chains-000000-000002/              the same, per group of chains, for ``--backend ray``

Every file is written under a temporary name, synced and renamed, so ``kill -9`` leaves
the old file or the new one, never half of one; a state file names the iteration it
belongs to, and resume takes the newest state plus the draw chunks it covers. Random
numbers are counter-based (:mod:`bayesdl.inference.counter_rng`), so a resumed run
repeats the uninterrupted one draw for draw.

Kernel states are NamedTuples of tensors and plain values. ``torch.save`` of a
NamedTuple needs pickle, so states are stored as nested dicts of tensors and numbers
(loaded with ``weights_only=True``); NamedTuple classes are found again by name in the
running kernel's own state or in bayesdl's modules, never imported from the file.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import socket
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from bayesdl.errors import BayesdlError

KIND = "__bayesdl_kind__"
STATE_FILE = "kernel_state.pt"  # the final sampler state, kept in a finished run (--init-from)
_CHUNK = re.compile(r"draws-(\d{9})-(\d{9})\.npz$")
_STATE = re.compile(r"state-(\d{9})\.pt$")


# ----------------------------------------------------------------- state <-> plain data
def encode_state(value: Any, where: str = "state") -> Any:
    """``value`` (nested NamedTuples, tuples, lists, str-keyed dicts, tensors, numbers,
    strings, None) as dicts/lists of CPU tensors and numbers that ``torch.load(...,
    weights_only=True)`` reads back."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, torch.dtype):
        return {KIND: "dtype", "name": str(value).removeprefix("torch.")}
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        cls = type(value)
        return {KIND: "namedtuple", "module": cls.__module__, "name": cls.__qualname__,
                "fields": {f: encode_state(getattr(value, f), f"{where}.{f}") for f in cls._fields}}
    if isinstance(value, (tuple, list)):
        return {KIND: type(value).__name__,
                "items": [encode_state(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {KIND: "dict", "items": {k: encode_state(v, f"{where}.{k}") for k, v in value.items()}}
    raise BayesdlError(f"cannot checkpoint {where}: a {type(value).__name__} (sampler states may "
                       "hold tensors, numbers, strings, None and tuples of them)")


def _namedtuple_classes(template: Any, found: dict[tuple[str, str], type] | None = None) -> dict:
    """The NamedTuple classes inside ``template``, by (module, qualname)."""
    found = {} if found is None else found
    if isinstance(template, tuple):
        if hasattr(type(template), "_fields"):
            found[(type(template).__module__, type(template).__qualname__)] = type(template)
        for item in template:
            _namedtuple_classes(item, found)
    elif isinstance(template, list):
        for item in template:
            _namedtuple_classes(item, found)
    elif isinstance(template, dict):
        for item in template.values():
            _namedtuple_classes(item, found)
    return found


def _namedtuple_class(module: str, name: str, known: dict) -> type:
    if (module, name) in known:
        return known[(module, name)]
    if module == "bayesdl" or module.startswith("bayesdl."):
        try:
            cls: Any = importlib.import_module(module)
            for part in name.split("."):
                cls = getattr(cls, part)
        except (ImportError, AttributeError):
            cls = None
        if isinstance(cls, type) and issubclass(cls, tuple) and hasattr(cls, "_fields"):
            return cls
    raise BayesdlError(f"checkpoint names an unknown state type {module}.{name}")


def decode_state(value: Any, device: torch.device | str = "cpu", template: Any = None,
                 _known: dict | None = None) -> Any:
    """Inverse of :func:`encode_state`; tensors go to ``device``."""
    known = _namedtuple_classes(template) if _known is None else _known
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if not isinstance(value, dict):
        return value
    kind = value.get(KIND)
    if kind == "namedtuple":
        cls = _namedtuple_class(value["module"], value["name"], known)
        if set(cls._fields) != set(value["fields"]):
            raise BayesdlError(f"checkpoint fields of {value['name']} do not match this version")
        return cls(**{f: decode_state(v, device, None, known) for f, v in value["fields"].items()})
    if kind in ("tuple", "list"):
        items = [decode_state(v, device, None, known) for v in value["items"]]
        return tuple(items) if kind == "tuple" else items
    if kind == "dict":
        return {k: decode_state(v, device, None, known) for k, v in value["items"].items()}
    if kind == "dtype":
        return getattr(torch, value["name"])
    raise BayesdlError(f"checkpoint holds an unknown entry {kind!r}")


def structure_mismatch(saved: Any, template: Any, where: str = "state") -> str | None:
    """Where ``saved`` and ``template`` differ in type, tensor shape or dtype (None if not)."""
    if isinstance(template, torch.Tensor):
        if not isinstance(saved, torch.Tensor):
            return where
        if saved.shape != template.shape or saved.dtype != template.dtype:
            return f"{where} (shape {tuple(saved.shape)} {saved.dtype}, this run " \
                   f"{tuple(template.shape)} {template.dtype})"
        return None
    if type(saved) is not type(template):
        return where
    if isinstance(template, tuple) and hasattr(type(template), "_fields"):
        pairs = [(f"{where}.{f}", getattr(saved, f), getattr(template, f)) for f in template._fields]
    elif isinstance(template, (tuple, list)):
        if len(saved) != len(template):  # e.g. warm-up windows of another length: no tensors
            return where if _has_tensor(saved) or _has_tensor(template) else None
        pairs = [(f"{where}[{i}]", s, t) for i, (s, t) in enumerate(zip(saved, template, strict=True))]
    elif isinstance(template, dict):
        if set(saved) != set(template):
            return where
        pairs = [(f"{where}.{k}", saved[k], template[k]) for k in template]
    else:
        return None
    for name, s, t in pairs:
        if (found := structure_mismatch(s, t, name)) is not None:
            return found
    return None


def _has_tensor(value: Any) -> bool:
    found: list[bool] = []
    map_tensors(value, lambda t: found.append(True) or t)
    return bool(found)


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to every tensor (works on encoded and live states)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple) and hasattr(type(value), "_fields"):
        return type(value)(*(map_tensors(v, fn) for v in value))
    if isinstance(value, (tuple, list)):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


def concat_states(parts: list[Any]) -> Any:
    """Encoded states of consecutive chain groups joined along the chain dim (every tensor
    leaf of a batched kernel's state leads with the chain); other values must agree."""
    first = parts[0]
    if isinstance(first, torch.Tensor):
        return torch.cat(parts, dim=0)
    if isinstance(first, dict):
        return {k: concat_states([p[k] for p in parts]) for k in first}
    if isinstance(first, list):
        return [concat_states([p[i] for p in parts]) for i in range(len(first))]
    if any(p != first for p in parts[1:]):
        raise BayesdlError("chain groups finished in different sampler states; cannot merge them")
    return first


# ----------------------------------------------------------------- files
def _write_atomic(path: Path, write: Callable[[Any], None]) -> None:
    """Write ``path`` through a synced temporary file in the same folder, then rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_tensors(path: Path, payload: dict[str, Any]) -> None:
    """``torch.save`` of plain data (dicts, lists, tensors, numbers), atomically."""
    _write_atomic(path, lambda handle: torch.save(payload, handle))


def load_tensors(path: Path) -> dict[str, Any]:
    """Read a file written by :func:`save_tensors` (``weights_only=True``: no code runs)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - torch.load raises many types on bad files
        raise BayesdlError(f"{str(path)!r} is not a readable checkpoint: "
                           f"{str(error).splitlines()[0]}") from None


class Restart(NamedTuple):
    """Where a kernel run picks up: ``steps_done`` iterations behind it, of which the first
    ``num_warmup`` were warm-up, and the draws so far (``[C, n, D]``, stats ``[C, n]``)."""

    steps_done: int
    num_warmup: int
    state: Any
    draws: torch.Tensor | None
    stats: dict[str, torch.Tensor]


class Checkpoint:
    """A run's checkpoint folder (``directory``, None for none) flushed every ``every``
    iterations, and optionally a finished run to start from (``init_from``).

    ``chains=(first, stop)`` picks the chains of a group out of an ``init_from`` state.
    After the run, ``final`` holds the encoded final sampler state and ``events`` what
    happened (both go into the finished run directory).
    """

    def __init__(self, directory: str | Path | None, every: int = 1000,
                 init_from: str | Path | None = None, request: dict[str, Any] | None = None,
                 chains: tuple[int, int] | None = None):
        if isinstance(every, bool) or not isinstance(every, int) or every < 0:
            raise BayesdlError(f"checkpoint_every must be an integer >= 0, got {every!r}")
        self.directory = Path(directory) if directory is not None else None
        self.every = every
        self.init_from = Path(init_from) if init_from is not None else None
        self.request = request
        self.chains = chains
        self.final: dict[str, Any] | None = None
        self.events: list[dict[str, Any]] = []
        if self.init_from is not None and not (self.init_from / STATE_FILE).is_file():
            raise BayesdlError(f"--init-from {str(self.init_from)!r}: no {STATE_FILE} there "
                               "(expected a finished run directory of a batched MCMC method)")

    # -- bookkeeping
    def due(self, steps_done: int) -> bool:
        """Whether to flush after ``steps_done`` iterations."""
        return self.directory is not None and self.every > 0 and steps_done % self.every == 0

    def open(self) -> Path:
        """Create the folder (and its request.json) if need be."""
        assert self.directory is not None
        self.directory.mkdir(parents=True, exist_ok=True)
        if self.request is not None and not (self.directory / "request.json").exists():
            text = json.dumps(self.request, indent=2, default=str) + "\n"
            _write_atomic(self.directory / "request.json", lambda h: h.write(text.encode()))
        return self.directory

    def log(self, event: str, **fields: Any) -> None:
        """Record ``event`` (in memory, and in events.jsonl once the folder exists)."""
        record = {"event": event, **fields, "host": socket.gethostname(), "pid": os.getpid()}
        if self.chains is not None:
            record["chains"] = list(self.chains)
        self.events.append(record)
        if self.directory is not None and self.directory.is_dir():
            with open(self.directory / "events.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")

    def _latest_state(self) -> dict[str, Any] | None:
        if self.directory is None or not self.directory.is_dir():
            return None
        files = sorted(p for p in self.directory.iterdir() if _STATE.match(p.name))
        for path in reversed(files):
            try:
                return load_tensors(path)
            except BayesdlError:
                continue  # a file cut short by a crash mid-write of an older version
        return None

    def _save_state(self, steps_done: int, payload: dict[str, Any]) -> None:
        directory = self.open()
        save_tensors(directory / f"state-{steps_done:09d}.pt", {"steps_done": steps_done, **payload})
        old = sorted(p for p in directory.iterdir() if _STATE.match(p.name))
        for path in old[:-2]:
            path.unlink(missing_ok=True)

    # -- any method: a payload of plain data (SVI)
    def save_payload(self, steps_done: int, payload: dict[str, Any]) -> None:
        """Flush a method's own state (plain data) after ``steps_done`` iterations."""
        self._save_state(steps_done, {"payload": payload})
        self.log("flush", steps=steps_done)

    def restore_payload(self) -> dict[str, Any] | None:
        """The newest payload saved by :meth:`save_payload`, or None."""
        saved = self._latest_state()
        if saved is None:
            return None
        if "payload" not in saved:
            raise BayesdlError(f"checkpoint {str(self.directory)!r} was written by another method")
        self.log("resume", steps=saved["steps_done"])
        return {"steps_done": saved["steps_done"], **saved["payload"]}

    # -- batched kernels (called by inference/driver.py::run_kernel)
    def restore(self, template: Any, num_warmup: int, num_draws: int) -> Restart | None:
        """The state to continue from: this folder's newest flush, else the final state of
        ``init_from`` (warm-up skipped), else None (start afresh)."""
        device = _device_of(template)
        saved = self._latest_state()
        if saved is not None:
            if "kernel" not in saved:
                raise BayesdlError(f"checkpoint {str(self.directory)!r} was written by another method")
            if saved["num_draws"] != num_draws or (self.init_from is None
                                                   and saved["num_warmup"] != num_warmup):
                raise BayesdlError(f"checkpoint {str(self.directory)!r} is for {saved['num_warmup']} "
                                   f"warm-up + {saved['num_draws']} draws, not {num_warmup} + {num_draws}")
            state = self._decoded(saved["kernel"], template, device, self.directory)
            draws, stats = self._read_chunks(saved["steps_done"] - saved["num_warmup"], device)
            self.log("resume", steps=saved["steps_done"])
            return Restart(saved["steps_done"], saved["num_warmup"], state, draws, stats)
        if self.init_from is not None:
            saved = load_tensors(self.init_from / STATE_FILE)
            encoded = saved["kernel"]
            if self.chains is not None:
                first, stop = self.chains
                encoded = map_tensors(encoded, lambda t: t[first:stop])
            state = self._decoded(encoded, template, device, self.init_from)
            steps = int(saved["steps_done"])
            self.log("init_from", run=str(self.init_from), steps=steps)
            return Restart(steps, steps, state, None, {})
        return None

    def _decoded(self, encoded: Any, template: Any, device: torch.device, source: Path | None) -> Any:
        state = decode_state(encoded, device, template)
        if (where := structure_mismatch(state, template)) is not None:
            raise BayesdlError(f"the sampler state in {str(source)!r} does not fit this run ({where} "
                               "differs): same model, method, options and chains are needed")
        return state

    def _read_chunks(self, num_done: int, device: torch.device) -> tuple[torch.Tensor | None, dict]:
        if num_done <= 0:
            return None, {}
        assert self.directory is not None
        ranges = sorted((int(m[1]), int(m[2]), p) for p in self.directory.iterdir()
                        if (m := _CHUNK.match(p.name)))
        draws, stats, at = [], {}, 0
        for start, stop, path in ranges:
            if stop > num_done or start != at:
                continue
            with np.load(path, allow_pickle=False) as chunk:
                draws.append(torch.from_numpy(chunk["draws"]))
                for key in chunk.files:
                    if key.startswith("stat_"):
                        stats.setdefault(key[5:], []).append(torch.from_numpy(chunk[key]))
            at = stop
        if at != num_done:
            raise BayesdlError(f"checkpoint {str(self.directory)!r} lacks draws {at}..{num_done - 1}")
        return (torch.cat(draws, 1).to(device),
                {k: torch.cat(v, 1).to(device) for k, v in stats.items()})

    def flush(self, steps_done: int, num_warmup: int, num_draws: int, state: Any,
              draws: torch.Tensor, stats: dict[str, torch.Tensor], first_draw: int) -> None:
        """Append draws ``first_draw..`` (``[C, n, D]``) and save the state after ``steps_done``."""
        directory = self.open()
        if draws.shape[1] > 0:
            arrays = {"draws": draws.detach().cpu().numpy(),
                      **{f"stat_{k}": v.detach().cpu().numpy() for k, v in stats.items()}}
            name = f"draws-{first_draw:09d}-{first_draw + draws.shape[1]:09d}.npz"
            _write_atomic(directory / name, lambda handle: np.savez(handle, **arrays))
        self._save_state(steps_done, {"num_warmup": num_warmup, "num_draws": num_draws,
                                      "kernel": encode_state(state)})
        self.log("flush", steps=steps_done, draws=first_draw + draws.shape[1])

    def finish(self, state: Any, steps_done: int) -> None:
        """Keep the final sampler state (saved as ``kernel_state.pt`` with the run)."""
        self.final = {"steps_done": steps_done, "kernel": encode_state(state)}


def _device_of(state: Any) -> torch.device:
    found: list[torch.device] = []
    map_tensors(state, lambda t: found.append(t.device) or t)
    return found[0] if found else torch.device("cpu")


def check_encodable(state: Any) -> None:
    """Fail at the start, not at the first flush, when a state cannot be checkpointed."""
    encode_state(state)


def read_request(partial: Path) -> dict[str, Any]:
    """The ``request.json`` of a checkpoint folder."""
    path = partial / "request.json"
    if not path.is_file():
        raise BayesdlError(f"nothing to resume at {str(partial)!r} (no request.json; a run "
                           "writes it at its first checkpoint)")
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise BayesdlError(f"{str(path)!r} is not readable: {error}") from None


def run_request(model: Any, data: Any, method: str, options: Any, args: dict[str, Any] | None,
                **fields: Any) -> dict[str, Any]:
    """How a run was asked for, as JSON data (``request.json``): enough for
    ``bayesdl infer --resume`` to ask again when model and data are names or paths."""
    by_name = isinstance(model, (str, os.PathLike))
    record = {
        "model": str(model) if by_name else None,
        "data": str(data) if isinstance(data, (str, os.PathLike)) else None,
        "data_kind": "none" if data is None else "path" if isinstance(data, (str, os.PathLike))
        else "dict",
        "method": method, "options": dataclasses.asdict(options), "args": args or {}, **fields,
    }
    return json.loads(json.dumps(record, default=str))


_MAY_CHANGE = ("checkpoint_every", "address", "device")


def check_same_request(partial: Path, request: dict[str, Any]) -> None:
    """A resumed run must be asked for as the interrupted one was (else other draws)."""
    saved = read_request(partial)
    for key in sorted(set(saved) | set(request)):
        if key not in _MAY_CHANGE and saved.get(key) != request.get(key):
            raise BayesdlError(f"cannot resume {str(partial)!r}: {key} was {saved.get(key)!r}, "
                               f"now {request.get(key)!r}")
