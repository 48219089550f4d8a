"""Run directories: written whole or not at all, and read back.

A run directory holds ``posterior.nc`` (NetCDF), ``summary.csv``, ``trace.png`` and
``settings.json``. Everything is written into a hidden temporary directory beside
the target and renamed into place at the end, so an interrupted run never leaves a
half-written file and never touches an earlier run.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import arviz as az

from bayesdl.errors import BayesdlError


def partial_dir(run_dir: str | Path) -> Path:
    """Where a run in progress keeps its checkpoints: ``RUN.partial`` beside ``RUN``."""
    path = Path(run_dir)
    return path.with_name(path.name + ".partial")


def choose_run_dir(out: str | Path | None, model: str, method: str, resume: bool = False) -> Path:
    """``out`` if new, else ``runs/<model>-<method>[-N]`` (never an existing directory, nor
    one whose checkpoints ``RUN.partial`` exist unless ``resume``)."""
    if out is not None:
        path = Path(out)
        if path.exists():
            raise BayesdlError(f"output directory {str(path)!r} already exists; "
                               "choose a new --out (earlier runs are never overwritten)")
        if resume and not partial_dir(path).is_dir():
            raise BayesdlError(f"nothing to resume: no checkpoint folder {str(partial_dir(path))!r}")
        if not resume and partial_dir(path).exists():
            raise BayesdlError(f"an interrupted run of {str(path)!r} is in {str(partial_dir(path))!r}; "
                               "continue it with --resume or remove that folder")
        return path
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in model)
    base = Path("runs") / f"{safe}-{method}"
    path, n = base, 2
    while path.exists() or partial_dir(path).exists():
        path, n = Path(f"{base}-{n}"), n + 1
    return path


def write_directory(path: Path, write_files: Callable[[Path], None], what: str = "run") -> Path:
    """Create the directory ``path`` whole or not at all: ``write_files(tmp_dir)`` fills a
    hidden sibling, which is renamed to ``path`` only when everything is written."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=parent))
    except OSError as error:
        raise BayesdlError(f"cannot write the output directory {str(path)!r}: "
                           f"{error.strerror or error}") from None
    try:
        umask = os.umask(0)
        os.umask(umask)
        tmp.chmod(0o777 & ~umask)  # mkdtemp's 0700 would hide the result from others
        write_files(tmp)
        if path.exists():
            raise BayesdlError(f"output directory {str(path)!r} appeared while running; "
                               f"the {what} was not written")
        os.replace(tmp, path)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BayesdlError(f"cannot write {str(path)!r}: {error.strerror or error}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def write_run(path: Path, idata: az.InferenceData | None, settings: dict[str, Any],
              write_files) -> Path:
    """Write a run into ``path`` atomically; ``write_files(tmp_dir)`` adds the rest
    (``idata=None``: no posterior.nc, as for ``bayesdl train``)."""

    def write_all(tmp: Path) -> None:
        if idata is not None:
            idata.to_netcdf(str(tmp / "posterior.nc"))
        (tmp / "settings.json").write_text(json.dumps(settings, indent=2, default=str) + "\n")
        write_files(tmp)

    return write_directory(path, write_all)


def load(run: str | Path) -> az.InferenceData:
    """The InferenceData of a run directory (or of a ``.nc`` file)."""
    path = Path(run)
    if path.is_dir():
        path = path / "posterior.nc"
    if not path.exists():
        raise BayesdlError(f"no run at {str(run)!r} (expected a run directory or a .nc file)")
    try:
        return az.from_netcdf(str(path))
    except Exception as error:  # noqa: BLE001 - netCDF readers raise many types
        raise BayesdlError(f"{str(path)!r} is not a readable NetCDF posterior: {error}") from None
