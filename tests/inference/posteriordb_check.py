"""The posteriordb reference comparison of ``tests/models/test_posteriordb.py``, for our
batched kernels (imported from there by path: the test folders are not packages).

Criteria are the ones NUTS meets there: every reference mean within 4 combined MCSE,
every reference sd within 10%.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest

import bayesdl

_spec = importlib.util.spec_from_file_location(
    "bayesdl_test_posteriordb", Path(__file__).resolve().parents[1] / "models" / "test_posteriordb.py"
)
posteriordb = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = posteriordb  # dataclasses look their module up there
_spec.loader.exec_module(posteriordb)


def check_kernel_against_reference(model: str, reference: str, method: str, chains: int,
                                   warmup: int, draws: int, seed: int = posteriordb.SEED,
                                   **options: Any) -> None:
    """Run ``method`` on the built-in ``model`` (all chains in one batch) and compare."""
    if not posteriordb.REFERENCE_DIR.is_dir():
        pytest.skip(f"posteriordb reference files not found at {posteriordb.REFERENCE_DIR}")
    idata = bayesdl.infer(model, method=method, chains=chains, warmup=warmup, draws=draws,
                          seed=seed, progress=False, **options)
    rows = posteriordb.compare([idata], posteriordb.load_reference(reference))
    table = "\n".join(
        f"{r['name']:>10}: mean {r['mean']:.4g} vs {r['ref_mean']:.4g} (z {r['z']:+.2f}), "
        f"sd {r['sd']:.4g} vs {r['ref_sd']:.4g} ({r['sd_rel']:+.1%})" for r in rows
    )
    print(f"{model} with {method}: worst |z| {max(abs(r['z']) for r in rows):.2f}, worst |sd error| "
          f"{max(abs(r['sd_rel']) for r in rows):.1%}, "
          f"{idata.posterior.attrs['wall_time_s']:.0f} s\n{table}")
    bad_mean = [r["name"] for r in rows if abs(r["z"]) > posteriordb.Z_MAX]
    bad_sd = [r["name"] for r in rows if abs(r["sd_rel"]) > posteriordb.SD_RTOL]
    assert not bad_mean and not bad_sd, f"{model}/{method}: means off {bad_mean}, sds off {bad_sd}\n{table}"

