"""``--backend ray``: groups of chains on a real (loopback) Ray cluster give the local
run's InferenceData; a worker killed mid-run is retried from its group's last flush."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import bayesdl
from bayesdl.errors import BayesdlError
from bayesdl.ray_backend import chain_groups, merge_groups, run_chain_group
from bayesdl.runs import partial_dir

RUN = dict(method="mh", chains=3, warmup=100, draws=700, seed=7, progress=False)


def _assert_same_run(a, b) -> None:
    for group in ("posterior", "sample_stats"):
        for name, value in a[group].data_vars.items():
            np.testing.assert_array_equal(b[group][name].values, value.values)
    np.testing.assert_array_equal(a.posterior.attrs["chain_seeds"], b.posterior.attrs["chain_seeds"])


def test_chain_groups_cover_every_chain_once():
    assert chain_groups(10, 4) == [(0, 2), (2, 5), (5, 7), (7, 10)]
    assert chain_groups(2, 8) == [(0, 1), (1, 2)]
    groups = chain_groups(1001, 7)
    assert [c for a, b in groups for c in range(a, b)] == list(range(1001))


def test_groups_run_apart_and_merged_equal_one_local_run():
    """The task body without Ray: chains 0, 1-2 and 3 as three groups, joined."""
    from bayesdl.inference.methods import NUTSOptions

    common = dict(chains=4, warmup=40, draws=30, seed=3)
    local = bayesdl.infer("eight_schools", method="nuts", progress=False, **common)
    job = {"model": "eight_schools", "data": None, "args": {}, "method": "nuts",
           "options": NUTSOptions(), "device": "cpu", "dtype": "float64", "every": 0,
           "partial": None, "init_from": None, "warmup": 40, "draws": 30, "seed": 3}
    merged = merge_groups([run_chain_group(job, a, b) for a, b in [(0, 1), (1, 3), (3, 4)]])
    for name, value in merged.draws.items():
        np.testing.assert_array_equal(value.numpy(), local.posterior[name].values)
    assert merged.info["chain_seeds"] == list(local.posterior.attrs["chain_seeds"])


@pytest.mark.parametrize("method, options, message", [
    ("chees", {}, "not one"), ("svi", {}, "not one"), ("nuts", {"backend": "pyro"}, "backend=pyro")])
def test_methods_whose_chains_are_not_independent_are_refused(method, options, message):
    with pytest.raises(BayesdlError, match=message):
        bayesdl.infer("eight_schools", method=method, chains=2, warmup=5, draws=5,
                      progress=False, executor="ray", **options)


# Ray on Linux rewrites 127.0.0.1 to the machine's address unless its single-machine mode
# is on; the test cluster listens on loopback only (set before Ray is imported)
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'bayesdl[ray]')")


def _kill_group_worker(partial: Path, min_steps: int, killed: dict) -> None:
    """SIGKILL the worker running chains 0..0 once it has flushed ``min_steps`` iterations."""
    log = partial / "chains-000000-000001" / "events.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:
        if log.is_file():
            for line in log.read_text().splitlines():
                event = json.loads(line)
                if event["event"] == "flush" and event["steps"] >= min_steps:
                    os.kill(event["pid"], signal.SIGKILL)
                    killed.update(pid=event["pid"], steps=event["steps"])
                    return
        time.sleep(0.05)


@pytest.mark.slow
def test_a_two_node_cluster_survives_a_killed_worker_and_equals_the_local_run(tmp_path):
    from ray.cluster_utils import Cluster

    local = bayesdl.infer("eight_schools", **RUN)
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "node_ip_address": "127.0.0.1", "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=2, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        out = tmp_path / "run"
        killed: dict = {}
        killer = threading.Thread(target=_kill_group_worker, args=(partial_dir(out), 200, killed))
        killer.start()
        on_ray = bayesdl.infer("eight_schools", out=out, checkpoint_every=100, executor="ray",
                               address=cluster.address, ray_tasks=3, **RUN)
        killer.join()
    finally:
        cluster.shutdown()
    assert killed, "no worker was killed (the run ended before its first flush)"
    _assert_same_run(local, on_ray)  # no draw lost or repeated
    events = json.loads((out / "settings.json").read_text())["checkpoint_events"]
    resumed = [e for e in events if e["event"] == "resume"]
    assert len(resumed) == 1 and resumed[0]["chains"] == [0, 1]
    assert killed["steps"] <= resumed[0]["steps"] < RUN["warmup"] + RUN["draws"]
    assert resumed[0]["pid"] != killed["pid"]
    assert sorted({tuple(e["chains"]) for e in events if "chains" in e}) == [(0, 1), (1, 2), (2, 3)]
    assert (out / "kernel_state.pt").is_file() and not partial_dir(out).exists()


@pytest.mark.slow
def test_without_an_address_a_local_ray_starts_on_loopback(tmp_path):
    run = {**RUN, "draws": 50, "warmup": 20, "chains": 2}
    on_ray = bayesdl.infer("eight_schools", executor="ray", ray_tasks=2, out=tmp_path / "r", **run)
    assert not ray.is_initialized()  # the Ray it started is shut down again
    events = json.loads((tmp_path / "r" / "settings.json").read_text())["checkpoint_events"]
    assert [e["nodes"] for e in events if e["event"] == "ray"] == [["127.0.0.1"]]
    _assert_same_run(bayesdl.infer("eight_schools", **run), on_ray)
