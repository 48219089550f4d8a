"""``--backend ray``: groups of chains run as Ray tasks and merged into one run.

Chain ``c`` of our batched kernels depends on its own seed ``chain_seed(seed, c)`` only
(counter-based random numbers, no cross-chain adaptation), so chains ``a..b-1`` run as
one task with ``RunSettings(first_chain=a, chains=b-a)`` give the draws they would give
in one local run; the driver joins the groups along the chain dimension and converts
once, so the InferenceData equals the local run's. Each task checkpoints into
``RUN.partial/chains-AAAAAA-BBBBBB/``; when its worker dies Ray runs the task again
(``max_retries``) and the retry continues from that group's last flush, so no draw is
lost or repeated. On a multi-machine cluster the run directory must be on a file system
all nodes share; otherwise a retried group starts over (same result, more time).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bayesdl.checkpoint import Checkpoint, concat_states
from bayesdl.errors import BayesdlError
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings

# methods whose chains are independent given their seeds (chees shares adaptation
# across chains; svi, is and smc are not chain-by-chain samplers)
CHAIN_INDEPENDENT = ("nuts", "hmc", "mh", "mala", "slice", "sghmc")
MAX_RETRIES = 3


def chain_groups(chains: int, tasks: int) -> list[tuple[int, int]]:
    """``tasks`` contiguous ``(first, stop)`` ranges covering ``range(chains)``, sizes within one."""
    tasks = max(1, min(tasks, chains))
    bounds = [chains * i // tasks for i in range(tasks + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(tasks)]


def group_dir(partial: Path, first: int, stop: int) -> Path:
    """The checkpoint folder of chains ``first..stop-1`` inside ``RUN.partial``."""
    return partial / f"chains-{first:06d}-{stop:06d}"


def _absolute(source: Any) -> Any:
    """Paths the driver was given, made absolute (workers run in other folders)."""
    if not isinstance(source, (str, Path)):
        return source
    text = str(source)
    file_part, colon, function = text.rpartition(":") if ".py:" in text else (text, "", "")
    if Path(file_part).exists():
        return str(Path(file_part).resolve()) + colon + function
    return source


def run_chain_group(job: dict[str, Any], first: int, stop: int) -> dict[str, Any]:
    """A Ray task: chains ``first..stop-1`` of the run ``job`` describes (CPU tensors back)."""
    import pyro

    from bayesdl.api import _run_method
    from bayesdl.device import resolve_device, resolve_dtype, run_context
    from bayesdl.inference.methods import get_method
    from bayesdl.model_source import load_model_spec

    device, dtype = resolve_device(job["device"]), resolve_dtype(job["dtype"])
    directory = group_dir(Path(job["partial"]), first, stop) if job["partial"] else None
    checkpoint = Checkpoint(directory, job["every"], job["init_from"], chains=(first, stop))
    settings = RunSettings(stop - first, job["warmup"], job["draws"], job["seed"], device, dtype,
                           progress=False, first_chain=first, checkpoint=checkpoint)
    checkpoint.log("start")
    with run_context(device, dtype):
        pyro.set_rng_seed(job["seed"])
        # the driver's infer() already refused extra data keys unless allow_extra_data
        spec = load_model_spec(job["model"], job["data"], job["args"], device, dtype,
                               allow_extra_data=True)
        samples = _run_method(get_method(job["method"]), spec, job["options"], settings)
    return {"draws": {k: v.cpu() for k, v in samples.draws.items()},
            "stats": {k: v.cpu() for k, v in samples.stats.items()},
            "info": samples.info, "final": checkpoint.final, "events": checkpoint.events}


def merge_groups(results: list[dict[str, Any]]) -> Samples:
    """One ``Samples`` from the groups' results, in chain order."""
    info = dict(results[0]["info"])
    info["chain_seeds"] = [s for r in results for s in r["info"]["chain_seeds"]]
    info["sampling_time_s"] = max(r["info"]["sampling_time_s"] for r in results)
    info["ray_tasks"] = len(results)
    return Samples(
        {k: torch.cat([r["draws"][k] for r in results]) for k in results[0]["draws"]},
        {k: torch.cat([r["stats"][k] for r in results]) for k in results[0]["stats"]},
        info,
    )


def _loopback(address: str | None) -> bool:
    host = (address or "127.0.0.1").removeprefix("ray://").rsplit(":", 1)[0]
    return host in ("127.0.0.1", "localhost", "::1", "[::1]")


def _import_ray(address: str | None):
    if _loopback(address) and "ray" not in sys.modules:
        # Ray on Linux rewrites 127.0.0.1 to the machine's address unless its
        # single-machine mode is on; a local Ray then listens on loopback only
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        import ray
    except ImportError:
        raise BayesdlError("--backend ray needs Ray: pip install 'bayesdl[ray]'") from None
    return ray


def _connect(ray, address: str | None) -> bool:
    """Connect to ``address`` or start a local Ray on 127.0.0.1; True if we started it."""
    if ray.is_initialized():
        return False
    try:
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(_node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    except (ConnectionError, ValueError, RuntimeError) as error:
        raise BayesdlError(f"cannot start or reach Ray at {address or '127.0.0.1'}: "
                           f"{str(error).splitlines()[0]}") from None
    return True


def run_on_ray(model: Any, data: Any, args: dict[str, Any], method: str, options: Any,
               settings: RunSettings, tasks: int | None = None,
               address: str | None = None) -> Samples:
    """Run ``method`` as Ray tasks over groups of chains; ``settings.checkpoint`` (the run's)
    receives the groups' events and joined final state."""
    if method not in CHAIN_INDEPENDENT:
        raise BayesdlError(f"--backend ray runs chain-by-chain samplers ({', '.join(CHAIN_INDEPENDENT)}); "
                           f"{method!r} is not one")
    if getattr(options, "backend", "bayesdl") != "bayesdl":
        raise BayesdlError("--backend ray runs bayesdl's batched kernels; drop --opt backend=pyro")
    if tasks is not None and (isinstance(tasks, bool) or not isinstance(tasks, int) or tasks < 1):
        raise BayesdlError(f"ray_tasks must be an integer >= 1, got {tasks!r}")
    ray = _import_ray(address)
    checkpoint = settings.checkpoint or Checkpoint(None, 0)
    partial = checkpoint.directory
    started = _connect(ray, address)
    try:
        cuda = settings.device.type == "cuda"
        nodes = sorted({n["NodeManagerAddress"] for n in ray.nodes() if n.get("Alive")})
        checkpoint.log("ray", address=address or "local", nodes=nodes)
        if tasks is None:
            tasks = int(ray.cluster_resources().get("GPU" if cuda else "CPU", 1))
        job = {"model": _absolute(model), "data": _absolute(data), "args": args, "method": method,
               "options": options, "device": settings.device.type, "dtype": str(settings.dtype)
               .removeprefix("torch."), "warmup": settings.warmup, "draws": settings.draws,
               "seed": settings.seed, "every": checkpoint.every,
               "partial": str(partial.resolve()) if partial is not None else None,
               "init_from": str(checkpoint.init_from.resolve()) if checkpoint.init_from else None}
        if partial is not None and checkpoint.every > 0:
            checkpoint.open()
        task = ray.remote(max_retries=MAX_RETRIES, num_cpus=1, num_gpus=1 if cuda else 0)(
            run_chain_group)
        groups = chain_groups(settings.chains, tasks)
        refs = [task.options(name=f"bayesdl-chains-{a}-{b}").remote(job, a, b) for a, b in groups]
        results = _gather(ray, refs, partial)
    finally:
        if started:
            ray.shutdown()
    for result in results:
        checkpoint.events.extend(result["events"])
    if all(r["final"] is not None for r in results):
        checkpoint.final = {"steps_done": results[0]["final"]["steps_done"],
                            "kernel": concat_states([r["final"]["kernel"] for r in results])}
    return merge_groups(results)


def _gather(ray, refs: list, partial: Path | None) -> list[dict[str, Any]]:
    """``ray.get`` with a task's BayesdlError passed on as ours (and nothing left behind)."""
    try:
        return ray.get(refs)
    except BaseException as error:
        for ref in refs:
            ray.cancel(ref, force=True)
        cause: Callable | BaseException = getattr(error, "cause", error)
        if isinstance(cause, BayesdlError) or isinstance(error, BayesdlError):
            if partial is not None and not any(partial.rglob("state-*.pt")):
                shutil.rmtree(partial, ignore_errors=True)  # nothing flushed: nothing to resume
            raise BayesdlError(str(cause).splitlines()[-1]) from None
        raise
