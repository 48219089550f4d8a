"""The ``bayesdl`` command line: a run writes exactly its four files; summary, plot,
models and methods work; every bad input is exit code 2 with one line on stderr that
names the problem, no traceback, and nothing written.

One real process runs the full ``infer`` (and a few errors run as processes too, to
see the exit code and stderr a shell sees); the other cases call ``bayesdl.cli.main``
in-process, which is the same code without the ~4 s of importing torch each time.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

from bayesdl.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
RUN_FILES = ["kernel_state.pt", "posterior.nc", "settings.json", "summary.csv", "trace.png"]
EIGHT = {"J": 8, "y": [28, 8, -3, 7, -1, 1, 18, 12], "sigma": [15, 10, 16, 11, 9, 11, 10, 18]}


def subprocess_env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env.pop("PYTHONWARNINGS", None)
    return env


def run_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bayesdl", *args], cwd=cwd, capture_output=True,
                          text=True, env=subprocess_env(), timeout=300)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    """``main(args)`` in-process: (exit code, stdout, stderr)."""
    showwarning = warnings.showwarning
    try:
        code = main(args)
    except SystemExit as exit_:  # argparse's errors and --help
        code = exit_.code
    finally:
        warnings.showwarning = showwarning
    out, err = capsys.readouterr()
    return code, out, err


def listing(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*"))


# ----------------------------------------------------------------- a real run
@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def infer_run(workdir):
    """``bayesdl infer eight_schools --method mh ... --json`` as a user's shell runs it."""
    before = listing(workdir)
    result = run_process(["infer", "eight_schools", "--method", "mh", "--chains", "4",
                          "--warmup", "200", "--draws", "200", "--out", "OUT", "--json"], workdir)
    return result, before


def test_infer_writes_the_run_directory_and_nothing_else(infer_run, workdir):
    result, before = infer_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    out = workdir / "OUT"
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES
    assert (out / "trace.png").read_bytes()[:8] == PNG_MAGIC
    # nothing else appeared beside it (no hidden temp directory left behind)
    assert sorted(set(listing(workdir)) - set(before)) == sorted(
        ["OUT"] + [f"OUT/{name}" for name in RUN_FILES])
    settings = json.loads((out / "settings.json").read_text())
    assert settings["model"] == "eight_schools" and settings["method"] == "mh"
    assert (settings["chains"], settings["warmup"], settings["draws"], settings["seed"]) == (
        4, 200, 200, 0)
    assert settings["device"] in ("cpu", "cuda")
    summary_csv = (out / "summary.csv").read_text().splitlines()
    assert summary_csv[0].startswith(",mean,sd")
    assert any(line.startswith("theta[Choate],") for line in summary_csv)


def test_infer_json_is_parseable(infer_run, workdir):
    result, _ = infer_run
    record = json.loads(result.stdout)
    assert set(record) == {"summary", "warnings", "run_dir"}
    assert Path(record["run_dir"]) == Path("OUT")
    assert {"mu", "tau", "theta[Choate]", "theta_trans[Mt. Hermon]"} <= set(record["summary"])
    assert {"mean", "sd", "r_hat", "ess_bulk"} <= set(record["summary"]["mu"])
    assert isinstance(record["warnings"], list)
    # the posterior mean of mu for eight schools is about 4.4 (sd 3.3); mh, 800 draws
    assert -5 < record["summary"]["mu"]["mean"] < 14


def test_summary_text_and_json(infer_run, workdir, capsys):
    code, out, err = run_cli(["summary", str(workdir / "OUT")], capsys)
    assert code == 0, err
    header = out.splitlines()[0].split()
    assert header[:2] == ["mean", "sd"] and "r_hat" in header
    assert any(line.startswith("theta[Choate]") for line in out.splitlines())
    code, out, _ = run_cli(["summary", str(workdir / "OUT" / "posterior.nc"), "--json"], capsys)
    assert code == 0
    assert "mu" in json.loads(out)["summary"]


@pytest.mark.parametrize("kind", ["trace", "rank", "forest", "pair"])
def test_plot_kinds(infer_run, workdir, tmp_path, capsys, kind):
    target = tmp_path / f"{kind}.png"
    args = ["plot", str(workdir / "OUT"), "--kind", kind, "--out", str(target)]
    if kind == "pair":
        args += ["--var", "mu", "--var", "tau"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert target.read_bytes()[:8] == PNG_MAGIC
    assert out.strip() == f"wrote {target}"
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{kind}.png"]  # no temp file


def test_plot_defaults_to_the_run_directory(infer_run, workdir, tmp_path, capsys):
    run = tmp_path / "copy"
    shutil.copytree(workdir / "OUT", run)
    code, _, err = run_cli(["plot", str(run), "--kind", "forest"], capsys)
    assert code == 0, err
    assert (run / "forest.png").read_bytes()[:8] == PNG_MAGIC


def test_plot_energy_on_an_mh_run_is_an_error(infer_run, workdir, capsys):
    before = listing(workdir)
    code, out, err = run_cli(["plot", str(workdir / "OUT"), "--kind", "energy"], capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("bayesdl: error:")
    assert "energy" in err and "Traceback" not in err
    assert listing(workdir) == before  # no energy.png, no temp file


def test_plot_unknown_variable(infer_run, workdir, capsys):
    code, _, err = run_cli(["plot", str(workdir / "OUT"), "--var", "nope"], capsys)
    assert code == 2 and "no variable 'nope'" in err and err.count("\n") == 1


def test_infer_text_output_and_default_run_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    args = ["infer", "eight_schools", "--method", "mh", "--chains", "2", "--warmup", "30",
            "--draws", "20"]
    code, out, err = run_cli(args, capsys)
    assert code == 0, err
    assert "wrote runs/eight_schools-mh/" in out
    assert any(line.split()[:1] == ["mu"] for line in out.splitlines())
    code, out, _ = run_cli(args, capsys)  # a second run never overwrites the first
    assert code == 0 and "wrote runs/eight_schools-mh-2/" in out
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["eight_schools-mh",
                                                                     "eight_schools-mh-2"]


# ----------------------------------------------------------------- listings and help
def test_models_json(capsys):
    code, out, _ = run_cli(["models", "--json"], capsys)
    assert code == 0
    rows = json.loads(out)
    by_name = {row["name"]: row for row in rows}
    assert {"eight_schools", "linear_regression", "logistic_regression"} <= set(by_name)
    assert by_name["eight_schools"]["args"] == {"centered": False}
    assert "noise" in by_name["linear_regression"]["args"]
    assert all(row["description"] for row in rows)
    code, out, _ = run_cli(["models"], capsys)
    assert code == 0 and "eight_schools" in out


def test_methods(capsys):
    code, out, _ = run_cli(["methods"], capsys)
    assert code == 0
    for name in ("nuts", "hmc", "mh", "svi"):
        assert any(line.startswith(name) for line in out.splitlines())
    assert "target_accept" in out and "guide=auto" in out
    code, out, _ = run_cli(["methods", "--json"], capsys)
    assert {row["name"] for row in json.loads(out)} >= {"nuts", "mh", "svi"}


@pytest.mark.parametrize("args", [["--help"], ["infer", "--help"], ["plot", "--help"]])
def test_help(args, capsys):
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    assert out.startswith("usage: bayesdl")


def test_help_and_import_load_neither_torch_nor_arviz():
    """``bayesdl --help`` answers without importing torch, Pyro or ArviZ (7.8 s -> 0.24 s
    here); ``bayesdl.infer``, ``load`` and ``check`` load them at first use."""
    probe = ("import sys, contextlib, io\n"
             "from bayesdl.cli import main\n"
             "with contextlib.redirect_stdout(io.StringIO()):\n"
             "    try:\n        main(['--help'])\n    except SystemExit:\n        pass\n"
             "heavy = [m for m in ('torch', 'pyro', 'arviz', 'matplotlib') if m in sys.modules]\n"
             "import bayesdl\n"
             "print(heavy, callable(bayesdl.infer), callable(bayesdl.load), callable(bayesdl.check),"
             " 'arviz' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            env=subprocess_env(), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["[]", "True", "True", "True", "True"]
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        import bayesdl

        bayesdl.nonexistent  # noqa: B018


def test_version_and_no_command(capsys):
    code, out, _ = run_cli(["--version"], capsys)
    assert code == 0 and out.startswith("bayesdl ")
    code, _, err = run_cli([], capsys)
    assert code == 2 and err.count("\n") == 1 and "required" in err


# ----------------------------------------------------------------- bad input
SYNTAX_ERROR = "def model(y)\n    pass\n"
RAISES = (
    "import pyro\nimport pyro.distributions as dist\n\n\n"
    "def model(y):\n"
    "    mu = pyro.sample('mu', dist.Normal(0.0, 1.0))\n"
    "    raise ValueError('boom in the model')\n"
)


def _json(data) -> str:
    return json.dumps(data, allow_nan=True)


FILES = {
    "nan.json": _json({**EIGHT, "y": EIGHT["y"][:7] + [float("nan")]}),
    "nosigma.json": _json({"J": 8, "y": EIGHT["y"]}),
    "short_sigma.json": _json({**EIGHT, "sigma": EIGHT["sigma"][:7]}),
    "y_only.json": _json({"y": [1.0, 2.0]}),
    "syntax.py": SYNTAX_ERROR,
    "raises.py": RAISES,
}

MH = ["--method", "mh", "--warmup", "10", "--draws", "10"]
BAD = [
    ("unknown model", ["infer", "nosuchmodel", *MH], "unknown model 'nosuchmodel'"),
    ("unknown method", ["infer", "eight_schools", "--method", "foo"], "unknown method 'foo'"),
    ("unknown opt", ["infer", "eight_schools", *MH, "--opt", "foo=1"], "has no option 'foo'"),
    ("opt type", ["infer", "eight_schools", *MH, "--opt", "target_accept=abc"],
     "'target_accept' of method 'mh' must be a number, got 'abc'"),
    ("opt without =", ["infer", "eight_schools", *MH, "--opt", "target_accept"],
     "expected key=value"),
    ("unknown arg", ["infer", "eight_schools", *MH, "--arg", "foo=1"], "no argument 'foo'"),
    ("arg type", ["infer", "eight_schools", *MH, "--arg", "centered=maybe"],
     "'centered' must be true or false"),
    ("data missing", ["infer", "eight_schools", *MH, "--data", "missing.json"],
     "data file 'missing.json' does not exist"),
    ("data NaN", ["infer", "eight_schools", *MH, "--data", "nan.json"], "'y' holds nan"),
    ("data key missing", ["infer", "eight_schools", *MH, "--data", "nosigma.json"],
     "is missing 'sigma'"),
    ("data shape", ["infer", "eight_schools", *MH, "--data", "short_sigma.json"],
     "'sigma' for model 'eight_schools' has 7 entries along 'J', but 'y' has 8"),
    ("model file syntax", ["infer", "syntax.py:model", *MH], "syntax error at line 1"),
    ("model raises", ["infer", "raises.py:model", *MH, "--data", "y_only.json"],
     "raised ValueError (line 7): boom in the model"),
    ("unknown function", ["infer", "raises.py:nosuch", *MH], "has no function 'nosuch'"),
    ("missing model file", ["infer", "nofile.py:model", *MH], "'nofile.py' does not exist"),
    ("chains 0", ["infer", "eight_schools", *MH, "--chains", "0"], "chains must be an integer >= 1"),
    ("draws 0", ["infer", "eight_schools", *MH, "--draws", "0"], "draws must be an integer >= 1"),
    ("negative seed", ["infer", "eight_schools", *MH, "--seed", "-1"], "seed must be"),
    ("chains not int", ["infer", "eight_schools", "--chains", "x"], "invalid int value: 'x'"),
    ("bad dtype", ["infer", "eight_schools", "--dtype", "float16"], "invalid choice: 'float16'"),
    ("unknown guide", ["infer", "eight_schools", "--method", "svi", "--opt", "guide=laplace"],
     "unknown guide 'laplace'"),
    ("summary of nothing", ["summary", "nowhere"], "no run at 'nowhere'"),
    ("unknown command", ["sample", "eight_schools"], "invalid choice: 'sample'"),
]
if not torch.cuda.is_available():
    BAD.append(("cuda without a GPU", ["infer", "eight_schools", *MH, "--device", "cuda"],
                "no CUDA GPU is available"))


@pytest.fixture
def bad_inputs(tmp_path, monkeypatch):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err  # exactly one line
    assert err.startswith("bayesdl: error: ")
    assert message in err, err


@pytest.mark.parametrize("args, message", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(bad_inputs, capsys, args, message):
    before = listing(bad_inputs)
    code, out, err = run_cli([*args, "--out", "OUT"] if args[0] == "infer" else args, capsys)
    assert_one_line_error(code, err, message)
    assert out == ""
    assert listing(bad_inputs) == before  # no OUT, no runs/, no hidden temp directory


def test_existing_out_directory_is_refused_and_untouched(bad_inputs, capsys):
    (bad_inputs / "OUT").mkdir()
    (bad_inputs / "OUT" / "earlier.txt").write_text("an earlier run")
    before = listing(bad_inputs)
    code, _, err = run_cli(["infer", "eight_schools", *MH, "--out", "OUT"], capsys)
    assert_one_line_error(code, err, "output directory 'OUT' already exists")
    assert listing(bad_inputs) == before
    assert (bad_inputs / "OUT" / "earlier.txt").read_text() == "an earlier run"


def test_errors_as_a_shell_sees_them(tmp_path):
    """Three errors as real processes, in parallel: exit status 2, one stderr line."""
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    cases = [(["infer", "nosuchmodel", "--out", "A"], "unknown model"),
             (["infer", "raises.py:model", *MH, "--data", "y_only.json", "--out", "B"],
              "boom in the model"),
             (["infer", "eight_schools", "--method", "mh", "--chains", "0", "--out", "C"],
              "chains must be")]
    before = listing(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "bayesdl", *args], cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=subprocess_env()) for args, _ in cases]
    for proc, (_, message) in zip(procs, cases, strict=True):
        out, err = proc.communicate(timeout=300)
        assert_one_line_error(proc.returncode, err, message)
        assert out == ""
    assert listing(tmp_path) == before


def test_minibatch_flag_is_the_minibatch_option(tmp_path, monkeypatch, capsys):
    """``--minibatch dpp`` (the issue's spelling) sets SVI's ``minibatch`` option; given
    twice with different values it is a one-line error and no run directory."""
    monkeypatch.chdir(tmp_path)
    args = ["infer", "linear_regression", "--method", "svi", "--minibatch", "dpp",
            "--opt", "batch_size=16", "--opt", "max_steps=30", "--chains", "1", "--draws", "10",
            "--out", "R"]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    assert json.loads((tmp_path / "R" / "settings.json").read_text())["options"]["minibatch"] == "dpp"
    code, _, err = run_cli([*args[:-1], "R2", "--opt", "minibatch=uniform"], capsys)
    assert code == 2 and "disagree" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "R2").exists()
