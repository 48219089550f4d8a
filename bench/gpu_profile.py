"""Where a transition's time goes on the device: per-draw cost and a kernel profile.

    python bench/gpu_profile.py --device cuda --out profile.txt
    python bench/gpu_profile.py --quick          # the same on the CPU, a smoke test

Run by ``bench/gpu_check.sh`` after the ChEES rows, so a lent GPU's minutes also
say what to change next:

- the cost of one draw after warm-up (the clock read at the first draw and after the
  last) for ChEES and NUTS with and without CUDA graphs, and NUTS with a check of
  whether any chain still builds after every leaf (the default: every 4), 1024 chains
  (TorchScript's fuser is off on CUDA runs since the tenth session's figures); with
  each, the run's set-up, warm-up and after-the-draws seconds (:mod:`step_clock`);
- a ``torch.profiler`` table of 20 draws after warm-up (operators by device time) and the
  host-device synchronisations it made (``cudaStreamSynchronize``, device-to-host
  copies), which is what NUTS's checks cost.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch
from step_clock import phase_clock, step_hooks

RUNS = [  # (label, method, options)
    ("chees", "chees", {}),
    ("chees, cuda_graph=false", "chees", {"cuda_graph": False}),
    ("nuts", "nuts", {}),
    ("nuts, cuda_graph=false", "nuts", {"cuda_graph": False}),
    ("nuts, leaves_per_check=1", "nuts", {"leaves_per_check": 1}),
]
SYNC_EVENTS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaMemcpyAsync",
               "cudaEventSynchronize", "aten::_local_scalar_dense")


def _infer(posterior: str, method: str, chains: int, warmup: int, draws: int, device: str,
           options: dict) -> None:
    import bayesdl

    bayesdl.infer(posterior, method=method, chains=chains, warmup=warmup, draws=draws,
                  seed=1, progress=False, device=device, **options)


def per_draw_ms(posterior: str, method: str, chains: int, warmup: int, draws: int,
                device: str, options: dict) -> tuple[float, dict[str, float]]:
    """Milliseconds per draw after warm-up (the clock read, after a device sync, at the
    first draw and after the last), and the run's phases in seconds (:func:`phase_clock`)."""
    with phase_clock(method, warmup, draws, device) as phases:
        _infer(posterior, method, chains, warmup, draws, device, options)
    return 1000 * phases["draws_s"] / draws, phases


def profile_table(posterior: str, method: str, chains: int, device: str, options: dict,
                  rows: int) -> str:
    """The operator table of 20 draws after warm-up, sorted by device (or CPU) time,
    and the synchronisations they made."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    prof = profile(activities=activities)
    with step_hooks(method, 50, 20, prof.start, prof.stop):
        _infer(posterior, method, chains, 50, 20, device, options)
    events = prof.key_averages()
    device_key = ("self_device_time_total" if events and hasattr(events[0], "self_device_time_total")
                  else "self_cuda_time_total")  # the newer name; the older is deprecated
    sort = device_key if device == "cuda" else "self_cpu_time_total"
    syncs = {e.key: e.count for e in events if e.key in SYNC_EVENTS}
    return (f"host-device synchronisations and scalar reads: {syncs or 'none recorded'}\n"
            + events.table(sort_by=sort, row_limit=rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--posteriors", default="eight_schools,logistic_regression")
    parser.add_argument("--chains", type=int, default=1024)
    parser.add_argument("--quick", action="store_true", help="small runs (smoke test)")
    parser.add_argument("--out", help="also write the report here")
    ns = parser.parse_args()
    torch.set_default_dtype(torch.float64)
    chains, warmup, draws = (16, 20, 10) if ns.quick else (ns.chains, 100, 50)
    if ns.out:
        open(ns.out, "w").close()

    def report(text: str) -> None:
        """Print and append at once, so a run cut at the time limit keeps what it had."""
        print(text, flush=True)
        if ns.out:
            with open(ns.out, "a") as stream:
                stream.write(text + "\n")

    def attempt(what: str, measure: Callable[..., str], *args: object) -> None:
        try:
            report(measure(*args))
        except Exception as error:  # noqa: BLE001 - one failed row must not lose the others
            report(f"{what}: failed ({type(error).__name__}: {(str(error).splitlines() or [''])[0][:200]})")

    def per_draw_line(posterior: str, label: str, method: str, options: dict) -> str:
        ms, phases = per_draw_ms(posterior, method, chains, warmup, draws, ns.device, options)
        return (f"{posterior:20} {label:26} {ms:8.2f} ms per draw after warm-up; set-up "
                f"{phases['setup_s']:.2f} s (tracing {phases.get('trace_s', 0):.2f}, building "
                f"{phases.get('build_s', 0):.2f}), warm-up {phases['warmup_s']:.2f} s, "
                f"after {phases['after_s']:.2f} s")

    def profile_section(posterior: str, label: str, method: str, options: dict) -> str:
        return (f"\n## {posterior}, {label}, {chains} chains, 20 draws after 50 warm-up\n"
                + profile_table(posterior, method, chains, ns.device, options,
                                8 if ns.quick else 25))

    report(f"device {ns.device}"
           + (f" ({torch.cuda.get_device_name()})" if ns.device == "cuda" else "")
           + f", torch {torch.__version__}, {chains} chains, float64")
    posteriors = ns.posteriors.split(",")
    for posterior in posteriors:
        for label, method, options in RUNS:
            if options and ns.device != "cuda":
                continue  # without a GPU these rows run the default's code
            attempt(f"{posterior} {label}", per_draw_line, posterior, label, method, options)
    for posterior in posteriors:
        for label, method, options in RUNS:
            if not options:
                attempt(f"{posterior} {label} profile", profile_section, posterior, label,
                        method, options)

if __name__ == "__main__":
    sys.exit(main())
