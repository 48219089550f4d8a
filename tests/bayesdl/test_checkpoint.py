"""Checkpoint and resume: a run cut short (in-process, or by kill -9 of the CLI) and
resumed equals the uninterrupted run draw for draw; --init-from continues a finished
run exactly; sampler states round-trip through weights_only files."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

import bayesdl
from bayesdl.checkpoint import (
    Checkpoint,
    decode_state,
    encode_state,
    load_tensors,
    save_tensors,
    structure_mismatch,
)
from bayesdl.errors import BayesdlError
from bayesdl.inference.hmc_warmup import StanWarmup
from bayesdl.inference.integrator import PhasePoint
from bayesdl.inference.nuts import NUTSState
from bayesdl.runs import partial_dir

SVI_OPTS = {"max_steps": 400, "window": 50, "tol": 1e-9}


class _Inner(NamedTuple):
    count: int
    values: torch.Tensor
    pair: tuple[float, bool]


class _Outer(NamedTuple):
    inner: _Inner
    label: str
    nothing: None


def test_nested_namedtuple_state_round_trips_through_a_weights_only_file(tmp_path):
    position = torch.randn(3, 2, dtype=torch.float64)
    nuts = NUTSState(PhasePoint(position, position.sum(1), -position),
                     StanWarmup(dense=True).init(position, 150))
    state = (nuts, _Outer(_Inner(7, torch.arange(3), (0.1 + 0.2, True)), "x", None))
    save_tensors(tmp_path / "s.pt", {"state": encode_state(state)})
    back = decode_state(load_tensors(tmp_path / "s.pt")["state"], template=state)
    assert structure_mismatch(back, state) is None
    assert type(back[0].warmup.dual) is type(nuts.warmup.dual)  # nested NamedTuples rebuilt
    assert back[0].warmup.windows == nuts.warmup.windows and back[0].warmup.started is False
    assert torch.equal(back[0].warmup.metric.mass_cholesky, nuts.warmup.metric.mass_cholesky)
    assert back[1].inner.pair == (0.1 + 0.2, True) and back[1].nothing is None
    # the file holds no pickled classes: a plain weights_only load reads it
    raw = torch.load(tmp_path / "s.pt", weights_only=True)
    assert raw["state"]["items"][0]["name"] == "NUTSState"


def test_a_state_that_cannot_be_stored_is_refused_by_name():
    with pytest.raises(BayesdlError, match=r"state\.fn: a function"):
        encode_state({"fn": test_a_state_that_cannot_be_stored_is_refused_by_name})


def _interrupt_after(monkeypatch, method_name: str, steps: int) -> None:
    """Make the flush at ``steps`` raise, as if the process died right after it."""
    original = getattr(Checkpoint, method_name)

    def flush_then_die(self, steps_done, *args, **kwargs):
        original(self, steps_done, *args, **kwargs)
        if steps_done == steps:
            raise KeyboardInterrupt

    monkeypatch.setattr(Checkpoint, method_name, flush_then_die)


@pytest.mark.parametrize("method, chains, warmup, draws, every, stop, options", [
    ("mh", 3, 60, 140, 40, 120, {}),
    ("nuts", 2, 60, 60, 25, 100, {}),
    ("svi", 2, 0, 50, 60, 180, SVI_OPTS),
])
def test_a_run_cut_short_and_resumed_equals_the_uninterrupted_run(
        tmp_path, monkeypatch, method, chains, warmup, draws, every, stop, options):
    kwargs = dict(method=method, chains=chains, warmup=warmup, draws=draws, seed=11,
                  progress=False, **options)
    whole = bayesdl.infer("eight_schools", **kwargs)
    out = tmp_path / "run"
    with monkeypatch.context() as patch:
        _interrupt_after(patch, "save_payload" if method == "svi" else "flush", stop)
        with pytest.raises(KeyboardInterrupt):
            bayesdl.infer("eight_schools", out=out, checkpoint_every=every, **kwargs)
    assert not out.exists() and partial_dir(out).is_dir()
    # a state file cut short by a crash is skipped in favour of the one before it
    (partial_dir(out) / "state-999999999.pt").write_bytes(b"torn")
    resumed = bayesdl.infer("eight_schools", out=out, checkpoint_every=every, resume=True, **kwargs)
    groups = ["posterior", "sample_stats"] if method != "svi" else ["posterior"]
    for group in groups:
        for name, value in whole[group].data_vars.items():
            np.testing.assert_array_equal(resumed[group][name].values, value.values)
    if method == "svi":  # the loss history too: Adam's moments and the RNG came back exactly
        np.testing.assert_array_equal(resumed.posterior.attrs["svi_loss"],
                                      whole.posterior.attrs["svi_loss"])
    events = json.loads((out / "settings.json").read_text())["checkpoint_events"]
    assert [e["steps"] for e in events if e["event"] == "resume"] == [stop]
    assert not partial_dir(out).exists()


def test_resume_refuses_other_arguments_and_a_new_run_refuses_the_partial_folder(tmp_path, monkeypatch):
    out = tmp_path / "run"
    kwargs = dict(method="mh", chains=2, warmup=20, draws=40, progress=False, checkpoint_every=20)
    with monkeypatch.context() as patch:
        _interrupt_after(patch, "flush", 40)
        with pytest.raises(KeyboardInterrupt):
            bayesdl.infer("eight_schools", out=out, seed=1, **kwargs)
    with pytest.raises(BayesdlError, match="seed was 1, now 2"):
        bayesdl.infer("eight_schools", out=out, seed=2, resume=True, **kwargs)
    with pytest.raises(BayesdlError, match="interrupted run"):
        bayesdl.infer("eight_schools", out=out, seed=1, **kwargs)
    with pytest.raises(BayesdlError, match="nothing to resume"):
        bayesdl.infer("eight_schools", out=tmp_path / "other", seed=1, resume=True, **kwargs)


@pytest.mark.parametrize("method", ["mh", "nuts"])
def test_init_from_a_finished_run_continues_it_exactly(tmp_path, method):
    """Warm-up state and positions of run A reused with A's seed: the new draws are the
    draws a longer run would have made after A's (so nothing of the warm-up is redone)."""
    common = dict(method=method, chains=2, seed=4, progress=False)
    bayesdl.infer("eight_schools", warmup=60, draws=30, out=tmp_path / "a", **common)
    assert (tmp_path / "a" / "kernel_state.pt").is_file()
    more = bayesdl.infer("eight_schools", warmup=0, draws=20, init_from=tmp_path / "a", **common)
    longer = bayesdl.infer("eight_schools", warmup=60, draws=50, **common)
    np.testing.assert_array_equal(more.posterior["theta"].values,
                                  longer.posterior["theta"].values[:, 30:])
    with pytest.raises(BayesdlError, match="does not fit this run"):
        bayesdl.infer("eight_schools", warmup=0, draws=5, init_from=tmp_path / "a",
                      **{**common, "chains": 3})
    with pytest.raises(BayesdlError, match="no kernel_state.pt"):
        bayesdl.infer("eight_schools", draws=5, init_from=tmp_path, **common)


# ----------------------------------------------------------------- kill -9 of the CLI
def _cli(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "bayesdl", "infer", *args, "--no-progress"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_after_flush(proc: subprocess.Popen, partial: Path, min_steps: int) -> int:
    """SIGKILL ``proc`` once a state after at least ``min_steps`` iterations is on disk."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        steps = [int(p.name[6:15]) for p in partial.glob("state-*.pt")] if partial.is_dir() else []
        if steps and max(steps) >= min_steps:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return max(steps)
        time.sleep(0.05)
    raise AssertionError(f"the run ended before a flush at {min_steps}: {proc.communicate()}")


@pytest.mark.slow
@pytest.mark.parametrize("method, args, options", [
    ("mh", ["--chains", "3", "--warmup", "100", "--draws", "1900", "--checkpoint-every", "100"], {}),
    ("nuts", ["--chains", "2", "--warmup", "100", "--draws", "500", "--checkpoint-every", "50"], {}),
    ("svi", ["--chains", "2", "--draws", "50", "--checkpoint-every", "100", "--opt", "max_steps=1500",
             "--opt", "window=50", "--opt", "tol=1e-9"],
     {"max_steps": 1500, "window": 50, "tol": 1e-9}),
])
def test_kill_9_then_resume_from_the_cli_equals_an_uninterrupted_run(tmp_path, method, args, options):
    out = tmp_path / "runs" / "cut"
    proc = _cli("eight_schools", "--method", method, "--seed", "5", "--out", str(out), *args,
                cwd=tmp_path)
    flushed = _kill_after_flush(proc, partial_dir(out), 300)
    assert proc.returncode == -signal.SIGKILL and not out.exists()
    done = subprocess.run([sys.executable, "-m", "bayesdl", "infer", "--resume",
                           str(partial_dir(out)), "--no-progress", "--json"], cwd=tmp_path,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    numbers = dict(zip(args[::2], args[1::2], strict=True))
    whole = bayesdl.infer("eight_schools", method=method, seed=5, progress=False,
                          chains=int(numbers["--chains"]), draws=int(numbers["--draws"]),
                          warmup=int(numbers.get("--warmup", 0)), **options)
    resumed = bayesdl.load(out)
    for name in whole.posterior.data_vars:
        np.testing.assert_array_equal(resumed.posterior[name].values, whole.posterior[name].values)
    events = json.loads((out / "settings.json").read_text())["checkpoint_events"]
    resumes = [e for e in events if e["event"] == "resume"]
    assert len(resumes) == 1 and resumes[0]["steps"] == flushed
    if method == "svi":
        losses = np.loadtxt(out / "loss.csv", delimiter=",", skiprows=1)[:, 1]
        np.testing.assert_array_equal(losses, whole.posterior.attrs["svi_loss"])
