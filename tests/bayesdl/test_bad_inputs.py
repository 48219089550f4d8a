"""Bad input across the CLI, the Python API and data files (issue 8), beyond the cases of
test_cli.py and test_data_files.py: each is one line on stderr naming the problem, exit
code 2, no traceback, nothing written (no run directory, no hidden temporary or partial
directory) and an earlier run beside it left byte for byte as it was.

CLI cases call ``bayesdl.cli.main`` in-process (the same code a shell runs, without
importing torch per case); API cases expect a `BayesdlError` with the message.
"""

from __future__ import annotations

import ast
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch

import bayesdl
from bayesdl.cli import main
from bayesdl.errors import BayesdlError

EIGHT = {"J": 8, "y": [28, 8, -3, 7, -1, 1, 18, 12], "sigma": [15, 10, 16, 11, 9, 11, 10, 18]}
MH = ["--method", "mh", "--chains", "2", "--warmup", "10", "--draws", "10"]

MODEL_HEAD = "import pyro\nimport torch\nimport pyro.distributions as dist\n\n\n"
FILES: dict[str, str | bytes] = {
    "y.json": json.dumps({"y": [0.5, -1.0, 2.0]}),
    "empty.json": "",
    "data.txt": "y\n1\n2\n",
    "strings.csv": "y,sigma\n1,2\nabc,3\n",
    "j_fraction.json": json.dumps({**EIGHT, "J": 8.5}),
    "j_mismatch.json": json.dumps({**EIGHT, "J": 7}),
    "y_matrix.json": json.dumps({**EIGHT, "y": [EIGHT["y"]]}),
    "x_vector.json": json.dumps({"X": [1.0, 2.0, 3.0], "y": [1.0, 2.0, 3.0]}),
    "y_fraction.json": json.dumps({"X": [[0.1], [0.2], [0.3]], "y": [0, 1, 0.5]}),
    "sigma_negative.json": json.dumps({**EIGHT, "sigma": [-1] * 8}),
    "extra.json": json.dumps({**EIGHT, "notes": [1, 2, 3]}),
    "import_error.py": "import no_such_module_for_bayesdl\n",
    "null_bytes.py": b"\x00\xff def model(y): pass\n",
    "model.txt": "def model(y):\n    pass\n",
    "not_function.py": "model = 3\n",
    "minus_inf.py": MODEL_HEAD + (
        "def model(y):\n"
        "    mu = pyro.sample('mu', dist.Normal(0.0, 1.0))\n"
        "    pyro.factor('impossible', torch.tensor(float('-inf')))\n"
        "    with pyro.plate('n', y.shape[0]):\n"
        "        pyro.sample('y', dist.Normal(mu, 1.0), obs=y)\n"),
    "nan_density.py": MODEL_HEAD + (
        "def model(y):\n"
        "    mu = pyro.sample('mu', dist.Normal(0.0, 1.0))\n"
        "    pyro.factor('broken', mu * float('nan'))\n"
        "    with pyro.plate('n', y.shape[0]):\n"
        "        pyro.sample('y', dist.Normal(mu, 1.0), obs=y)\n"),
    "fails_later.py": MODEL_HEAD + (
        "calls = [0]\n\n\n"
        "def model(y):\n"
        "    mu = pyro.sample('mu', dist.Normal(0.0, 1.0))\n"
        "    calls[0] += 1\n"
        "    if calls[0] > 3:  # the first traces pass, sampling fails\n"
        "        raise RuntimeError('the likelihood server went away')\n"
        "    with pyro.plate('n', y.shape[0]):\n"
        "        pyro.sample('y', dist.Normal(mu, 1.0), obs=y)\n"),
    "a_file": "not a directory",
    "garbage.nc": "this is not NetCDF",
}


def write_files(root: Path) -> None:
    for name, content in FILES.items():
        path = root / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    (root / "a_dir.py").mkdir()
    np.savez(root / "objects.npz", y=np.array([1, "a"], dtype=object))


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` with a hash of its bytes (directories as 'dir')."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """A directory with the bad files and an earlier, good run ``EARLIER``."""
    root = tmp_path_factory.mktemp("bad_inputs")
    write_files(root)
    code = main(["infer", "eight_schools", *MH, "--out", str(root / "EARLIER"), "--no-progress"])
    assert code == 0
    assert (root / "EARLIER" / "posterior.nc").is_file()
    return root


@pytest.fixture
def in_workdir(workdir, monkeypatch):
    monkeypatch.chdir(workdir)
    before = snapshot(workdir)
    yield workdir
    assert snapshot(workdir) == before  # nothing new, nothing changed (the earlier run too)


def run_cli(args: list[str], capsys) -> tuple[int, str, str]:
    showwarning = warnings.showwarning
    try:
        code = main(args)
    except SystemExit as exit_:
        code = exit_.code
    finally:
        warnings.showwarning = showwarning
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert err.startswith("bayesdl: error: "), err
    assert message in err, err


# ----------------------------------------------------------------- CLI
def infer(model: str, *rest: str) -> list[str]:
    return ["infer", model, *rest, "--out", "OUT", "--no-progress"]


CLI_CASES = [
    # data files
    ("empty data file", infer("eight_schools", *MH, "--data", "empty.json"),
     "data file 'empty.json' is empty"),
    ("data file of unknown format", infer("eight_schools", *MH, "--data", "data.txt"),
     "unknown format '.txt'"),
    ("data file is a directory", infer("eight_schools", *MH, "--data", "a_dir.py"), "is a directory"),
    ("string in a numeric CSV column", infer("eight_schools", *MH, "--data", "strings.csv"),
     "line 3, column 'y': 'abc' is not a number"),
    ("npz of Python objects", infer("eight_schools", *MH, "--data", "objects.npz"),
     "holds objects, not numbers"),
    ("size that is not an integer", infer("eight_schools", *MH, "--data", "j_fraction.json"),
     "'J' for model 'eight_schools' must be a non-negative integer"),
    ("size that disagrees with the data", infer("eight_schools", *MH, "--data", "j_mismatch.json"),
     "'J' for model 'eight_schools' is 7, but 'y' has 8 entries"),
    ("matrix where a vector belongs", infer("eight_schools", *MH, "--data", "y_matrix.json"),
     "'y' for model 'eight_schools' has 2 dimension(s), expected 1 (J)"),
    ("vector where a matrix belongs", infer("linear_regression", *MH, "--data", "x_vector.json"),
     "'X' for model 'linear_regression' has 1 dimension(s), expected 2 (obs, feature)"),
    ("fraction where 0/1 labels belong", infer("logistic_regression", *MH, "--data",
                                               "y_fraction.json"), "'y' for model "
     "'logistic_regression' must hold integers"),
    ("negative scales the model rejects", infer("eight_schools", *MH, "--data",
                                                "sigma_negative.json"),
     "model 'eight_schools' raised ValueError (line"),
    # model files
    ("model file whose import fails", infer("import_error.py:model", *MH),
     "raised ModuleNotFoundError on import: No module named 'no_such_module_for_bayesdl'"),
    ("model file that is not text", infer("null_bytes.py:model", *MH), "has a syntax error"),
    ("model file that is not .py", infer("model.txt:model", *MH), "cannot be imported"),
    ("model file that is a directory", infer("a_dir.py:model", *MH), "is a directory, not a .py file"),
    ("name that is not a function", infer("not_function.py:model", *MH),
     "has no function 'model'"),
    ("log density -inf at every start (nuts)", infer("minus_inf.py:model", "--data", "y.json",
                                                     "--method", "nuts", "--warmup", "5"),
     "nuts could not start"),
    ("log density -inf at every start (mh)", infer("minus_inf.py:model", "--data", "y.json", *MH),
     "mh could not start"),
    ("log density -inf at every start (smc)", infer("minus_inf.py:model", "--data", "y.json",
                                                    "--method", "smc", "--draws", "20"),
     "smc could not start"),
    ("log density NaN", infer("nan_density.py:model", "--data", "y.json", *MH),
     "model 'nan_density:model' raised ValueError (line 8)"),
    ("model that fails during sampling", infer("fails_later.py:model", "--data", "y.json", *MH),
     "raised RuntimeError (line 13): the likelihood server went away"),
    # method options
    ("target_accept out of range", infer("eight_schools", "--method", "nuts", "--opt",
                                         "target_accept=1.5"), "target_accept must be in (0, 1)"),
    ("integer option given a fraction", infer("eight_schools", "--method", "nuts", "--opt",
                                              "max_tree_depth=2.5"), "must be an integer, got '2.5'"),
    ("boolean option given a word", infer("eight_schools", "--method", "nuts", "--opt",
                                          "dense_mass=maybe"), "must be true or false, got 'maybe'"),
    ("unknown choice of potential", infer("eight_schools", "--method", "nuts", "--warmup", "5",
                                          "--opt", "potential=fast"),
     "unknown potential evaluation 'fast'"),
    ("unknown mh adaptation", infer("eight_schools", *MH, "--opt", "adapt=foo"),
     "adapt must be one of diag, full, none"),
    ("missing proposal file", infer("eight_schools", *MH, "--opt", "proposal=nofile.py:p"),
     "proposal file 'nofile.py' does not exist"),
    ("negative init radius", infer("eight_schools", *MH, "--opt", "init_radius=-1"),
     "init_radius must be a number >= 0"),
    ("negative learning rate", infer("eight_schools", "--method", "svi", "--opt", "lr=-0.1"),
     "svi: lr must be a positive number"),
    ("zero optimisation steps", infer("eight_schools", "--method", "svi", "--opt", "max_steps=0"),
     "svi: max_steps must be >= 1"),
    ("unknown importance proposal", infer("eight_schools", "--method", "is", "--opt",
                                          "proposal=magic"), "unknown proposal 'magic'"),
    ("SMC target ESS above 1", infer("eight_schools", "--method", "smc", "--draws", "20", "--opt",
                                     "target_ess=2"), "target_ess must be in (0, 1)"),
    ("negative slice width", infer("eight_schools", "--method", "slice", "--warmup", "5", "--opt",
                                   "init_width=-1"), "init_width must be a positive number"),
    # run settings and output
    ("negative warm-up", infer("eight_schools", *MH, "--warmup", "-1"), "warmup must be an integer >= 0"),
    ("seed too large for the generators", infer("eight_schools", *MH, "--seed", "5000000000"),
     "seed must be an integer from 0 to 2**32 - 1"),
    ("--arg without a value", infer("eight_schools", *MH, "--arg", "centered"), "expected key=value"),
    ("output directory under a file", ["infer", "eight_schools", *MH, "--out", "a_file/OUT"],
     "cannot write the output directory 'a_file/OUT'"),
    ("output directory is an existing file", ["infer", "eight_schools", *MH, "--out", "a_file"],
     "output directory 'a_file' already exists"),
    ("output directory is an earlier run", ["infer", "eight_schools", *MH, "--out", "EARLIER"],
     "output directory 'EARLIER' already exists"),
    ("summary of a file that is not NetCDF", ["summary", "garbage.nc"],
     "'garbage.nc' is not a readable NetCDF posterior"),
    ("plot to a JPEG", ["plot", "EARLIER", "--out", "trace.jpg"], "must end in .png"),
    ("infer without a model", ["infer"], "infer needs a MODEL"),
    ("check with zero replications", ["check", "gaussian_mle", "--sbc", "0"],
     "sbc must be an integer >= 2"),
    ("check without --sbc", ["check", "gaussian_mle"], "the following arguments are required: --sbc"),
    ("check of an unknown method", ["check", "gaussian_mle", "--sbc", "10", "--method", "magic"],
     "unknown method 'magic'"),
]


@pytest.mark.parametrize("args, message", [c[1:] for c in CLI_CASES], ids=[c[0] for c in CLI_CASES])
def test_cli_bad_input(in_workdir, capsys, args, message):
    code, out, err = run_cli(args, capsys)
    assert_one_line_error(code, err, message)
    assert out == ""


EXTRA_KEY_ERROR = ("data key(s) 'notes' are not used by model 'eight_schools' (it takes: J, y, "
                   "sigma); remove them or pass --allow-extra-data")


@pytest.mark.parametrize("command", [
    infer("eight_schools", *MH, "--data", "extra.json"),
    ["check", "eight_schools", "--sbc", "4", *MH, "--data", "extra.json", "--out", "OUT",
     "--no-progress"],
], ids=["infer", "check"])
def test_an_extra_data_key_is_one_error_and_nothing_is_written(in_workdir, capsys, command):
    """A data key the model does not take (a typo, the wrong file) stops the run by default."""
    code, out, err = run_cli(command, capsys)
    assert_one_line_error(code, err, EXTRA_KEY_ERROR)
    assert out == "" and "'notes'" in err
    assert not (in_workdir / "OUT").exists()


def test_allow_extra_data_is_one_warning_and_the_run_goes_on(tmp_path, monkeypatch, capsys):
    """Stan-style data files often carry entries a model does not use: opt in to drop them."""
    write_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(infer("eight_schools", *MH, "--data", "extra.json",
                                   "--allow-extra-data"), capsys)
    assert code == 0, err
    assert err == "warning: model 'eight_schools' does not use data 'notes'; ignored\n"
    assert (tmp_path / "OUT" / "posterior.nc").is_file()


def test_a_run_allowed_extra_data_resumes_with_it(tmp_path, monkeypatch):
    """request.json records allow_extra_data, so `infer --resume` loads the data as before."""
    from bayesdl.api import resume
    from bayesdl.checkpoint import Checkpoint

    write_files(tmp_path)
    run = dict(method="mh", chains=2, warmup=10, draws=20, progress=False)
    original = Checkpoint.flush

    def flush_then_die(self, steps_done, *args, **kwargs):
        original(self, steps_done, *args, **kwargs)
        if steps_done == 20:
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with monkeypatch.context() as patch, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        patch.setattr(Checkpoint, "flush", flush_then_die)
        with pytest.raises(KeyboardInterrupt):
            bayesdl.infer("eight_schools", tmp_path / "extra.json", **run, out=out,
                          checkpoint_every=10, allow_extra_data=True)
    with pytest.warns(UserWarning, match="does not use data 'notes'"):
        idata = resume(out.with_name("run.partial"), progress=False)
    assert idata.posterior.sizes["draw"] == run["draws"]
    assert (out / "posterior.nc").is_file()


# ----------------------------------------------------------------- Python API
def normal_mean(y):
    mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
    with pyro.plate("n", y.shape[0]):
        pyro.sample("y", dist.Normal(mu, 1.0), obs=y)


def no_latents(y):
    with pyro.plate("n", y.shape[0]):
        pyro.sample("y", dist.Normal(0.0, 1.0), obs=y)


RUN = dict(method="mh", chains=2, warmup=5, draws=5, progress=False)
API_CASES = [
    ("model that is a number", lambda: bayesdl.infer(42, **RUN), "model must be a Pyro callable"),
    ("data that is a number", lambda: bayesdl.infer("eight_schools", 42, **RUN),
     "data must be a dict or a file path, got int"),
    ("fractional chains", lambda: bayesdl.infer("eight_schools", **{**RUN, "chains": 2.5}),
     "chains must be an integer >= 1, got 2.5"),
    ("float16", lambda: bayesdl.infer("eight_schools", dtype=torch.float16, **RUN),
     "unsupported dtype torch.float16"),
    ("unknown device", lambda: bayesdl.infer("eight_schools", device="tpu", **RUN),
     "unknown device 'tpu'"),
    ("NaN in a tensor", lambda: bayesdl.infer(normal_mean, {"y": torch.tensor([1.0, float("nan")])},
                                              **RUN), "'y' holds NaN or Inf"),
    ("Inf in a list", lambda: bayesdl.infer(normal_mean, {"y": [1.0, float("inf")]}, **RUN),
     "'y' holds inf at index (1,)"),
    ("ragged list", lambda: bayesdl.infer(normal_mean, {"y": [[1.0, 2.0], [3.0]]}, **RUN),
     "'y' is not a rectangular array of numbers"),
    ("strings for a built-in", lambda: bayesdl.infer("eight_schools", {**EIGHT, "y": np.array(
        ["a"] * 8)}, **RUN), "'y' for model 'eight_schools' must hold real numbers, got <U1"),
    ("complex numbers", lambda: bayesdl.infer("eight_schools", {**EIGHT, "y": np.ones(8) * 1j},
                                              **RUN), "must hold real numbers, got complex128"),
    ("objects", lambda: bayesdl.infer("eight_schools", {**EIGHT, "sigma": np.array([{}] * 8)},
                                      **RUN), "'sigma' for model 'eight_schools' must hold real"),
    ("size given as a word", lambda: bayesdl.infer("eight_schools", {**EIGHT, "J": "eight"}, **RUN),
     "'J' for model 'eight_schools' must hold real numbers"),
    ("seed beyond 2**32", lambda: bayesdl.infer("eight_schools", **{**RUN, "seed": 2**40}),
     "seed must be an integer from 0 to 2**32 - 1"),
    ("model with nothing to infer", lambda: bayesdl.infer(no_latents, {"y": [1.0]}, **RUN),
     "model 'no_latents' has no latent pyro.sample site"),
    ("missing data for a callable", lambda: bayesdl.infer(normal_mean, None, **RUN),
     "model 'normal_mean' needs data 'y'"),
    ("option of the wrong type", lambda: bayesdl.infer("eight_schools", **RUN, target_accept=[1]),
     "option 'target_accept' of method 'mh' must be a number"),
    ("extra data key for a built-in", lambda: bayesdl.infer("eight_schools", {**EIGHT, "notes": 1},
                                                            **RUN),
     "data key(s) 'notes' are not used by model 'eight_schools' (it takes: J, y, sigma)"),
    ("extra data keys for a callable", lambda: bayesdl.infer(normal_mean, {"y": [1.0], "x": [2.0],
                                                                           "N": 1}, **RUN),
     "data key(s) 'x', 'N' are not used by model 'normal_mean' (it takes: y); remove them or "
     "pass --allow-extra-data (allow_extra_data=True in Python)"),
    ("check with an extra data key", lambda: bayesdl.check(
        "eight_schools", {**EIGHT, "notes": 1}, method="mh", sbc=4, progress=False),
     "data key(s) 'notes' are not used by model 'eight_schools'"),
    ("check with an improper prior", lambda: bayesdl.check(
        "gaussian_mle", method="is", sbc=5, args={"flat_priors": True}, progress=False),
     "SBC needs a proper prior"),
]
if not torch.cuda.is_available():
    API_CASES.append(("CUDA without a GPU", lambda: bayesdl.infer("eight_schools", device="cuda:0",
                                                                  **RUN), "no CUDA GPU is available"))


@pytest.mark.parametrize("call, message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_api_bad_input(call, message):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(BayesdlError) as error:
            call()
    text = str(error.value)
    assert message in text and "\n" not in text.strip()


def test_api_allow_extra_data_warns_and_drops_the_keys():
    with pytest.warns(UserWarning, match=r"model 'normal_mean' does not use data 'x'; ignored"):
        idata = bayesdl.infer(normal_mean, {"y": [1.0, 2.0], "x": [3.0]}, allow_extra_data=True,
                              **RUN)
    assert "mu" in idata.posterior
    with pytest.warns(UserWarning, match="does not use data 'notes'"):
        result = bayesdl.check("eight_schools", {**EIGHT, "notes": 1}, method="mh", sbc=2, chains=2,
                               warmup=5, draws=5, progress=False, allow_extra_data=True)
    assert result.num_replications == 2


def test_api_failure_writes_no_run_directory(tmp_path):
    target = tmp_path / "runs" / "OUT"
    with pytest.raises(BayesdlError, match="no latent pyro.sample site"):
        bayesdl.infer(no_latents, {"y": [1.0]}, out=target, **RUN)
    leftovers = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert leftovers in ([], ["runs"])  # at most the parent folder, never OUT or a temp dir


# ----------------------------------------------------------------- nothing unsafe
def _unsafe_loads(tree: ast.AST) -> list[int]:
    """Lines that import pickle, call pickle/dill/joblib loads, ``torch.load`` without
    ``weights_only=True`` or ``np.load(..., allow_pickle=True)``."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + [getattr(node, "module", None) or ""]
            if any(n.split(".")[0] in ("pickle", "dill", "joblib", "cloudpickle") for n in names):
                lines.append(node.lineno)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value.id if isinstance(node.func.value, ast.Name) else ""
            keywords = {k.arg: k.value for k in node.keywords}
            flag = keywords.get("weights_only") or keywords.get("allow_pickle")
            flag = flag.value if isinstance(flag, ast.Constant) else None
            if owner == "torch" and node.func.attr == "load" and flag is not True:
                lines.append(node.lineno)
            if owner in ("np", "numpy") and node.func.attr == "load" and flag is True:
                lines.append(node.lineno)
    return lines


def test_no_user_file_is_unpickled():
    """No pickle anywhere in the package; torch.load only with weights_only=True;
    np.load never with allow_pickle=True (the checker itself is tested on examples)."""
    assert sorted(_unsafe_loads(ast.parse(
        "import pickle\ntorch.load(p)\ntorch.load(p, weights_only=False)\n"
        "np.load(p, allow_pickle=True)\ntorch.load(p, weights_only=True)\nnp.load(p)\n"
        "from joblib import load\n"))) == [1, 2, 3, 4, 7]
    root = Path(bayesdl.__file__).resolve().parent.parent
    offenders = []
    for folder in [root / f for f in ("bayesdl", "inference", "models") if (root / f).is_dir()]:
        for path in folder.rglob("*.py"):
            offenders += [f"{path.relative_to(root)}:{n}"
                          for n in _unsafe_loads(ast.parse(path.read_text()))]
    assert offenders == []
