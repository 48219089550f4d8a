"""The wheel: built from the source tree, installed into a bare folder, imported from
there (not from the checkout or the editable install), with its bundled data.

The build runs on a copy of the source tree so that setuptools' ``build/`` and
``*.egg-info`` never land in the working checkout.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
IGNORE = shutil.ignore_patterns(".git", "build", "dist", "*.egg-info", "__pycache__", "runs",
                                ".pytest_cache", ".ruff_cache", "*.pyc")


@pytest.fixture(scope="module")
def wheel_install(tmp_path_factory):
    root = tmp_path_factory.mktemp("package")
    source = root / "source"
    shutil.copytree(REPO, source, ignore=IGNORE)
    wheels, target = root / "wheels", root / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", ".",
         "-w", str(wheels)], cwd=source, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    (wheel,) = wheels.glob("bayesdl-*.whl")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--target",
         str(target), str(wheel)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]
    return wheel, target


def test_wheel_contains_the_three_packages_and_the_bundled_data(wheel_install):
    wheel, _ = wheel_install
    names = set(zipfile.ZipFile(wheel).namelist())
    top_level = {name.split("/")[0] for name in names if not name.startswith("bayesdl-")}
    assert top_level == {"bayesdl"}  # no stray tests/, models/ or inference/ packages
    for module in ("bayesdl/cli.py", "bayesdl/models/__init__.py", "bayesdl/models/registry.py",
                   "bayesdl/inference/__init__.py", "bayesdl/inference/counter_rng.py"):
        assert module in names
    bundled = sorted(p.name for p in (REPO / "models" / "data").iterdir()
                     if p.suffix in (".json", ".csv"))
    assert "breast_cancer.csv" in bundled and len(bundled) >= 2
    for name in bundled:
        assert f"bayesdl/models/data/{name}" in names, name
    # every module of the source packages made it in
    for folder, package in (("models", "bayesdl/models"), ("inference", "bayesdl/inference"),
                            ("bayesdl", "bayesdl")):
        for source in (REPO / folder).glob("*.py"):
            assert f"{package}/{source.name}" in names, source
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "bayesdl = bayesdl.cli:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


CHECK = textwrap.dedent("""
    import json, sys
    import bayesdl, bayesdl.models, bayesdl.inference
    from bayesdl.models import get_builtin, REGISTRY
    data = get_builtin("logistic_regression").data()
    json_data = get_builtin("kidiq").data()
    print(json.dumps({
        "files": [bayesdl.__file__, bayesdl.models.__file__, bayesdl.inference.__file__],
        "X": list(data["X"].shape), "y": list(data["y"].shape),
        "y_values": sorted(set(data["y"].tolist())),
        "kidiq_keys": sorted(json_data),
        "models": sorted(REGISTRY),
        "methods": sorted(bayesdl.inference.METHODS),
    }))
""")


def test_installed_wheel_imports_from_its_own_folder(wheel_install, tmp_path):
    _, target = wheel_install
    env = dict(os.environ, PYTHONPATH=str(target), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", CHECK], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    for file in record["files"]:
        assert Path(file).resolve().is_relative_to(target.resolve()), file
    assert record["X"] == [569, 30] and record["y"] == [569]
    assert record["y_values"] == [0.0, 1.0]
    assert {"N", "kid_score", "mom_iq"} <= set(record["kidiq_keys"])
    assert {"eight_schools", "linear_regression", "logistic_regression"} <= set(record["models"])
    assert {"nuts", "mh", "svi"} <= set(record["methods"])
