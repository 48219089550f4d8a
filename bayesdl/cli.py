"""The ``bayesdl`` command line: infer, summary, plot, models, methods.

Every user error is one line on stderr and exit code 2; nothing half-written is left.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from bayesdl.errors import BayesdlError

EXAMPLES = """examples:
  bayesdl infer eight_schools --method nuts
  bayesdl infer eight_schools --method mh --chains 1000 --draws 2000
  bayesdl infer linear_regression --method svi --opt guide=mvn
  bayesdl infer my_model.py:model --data data.csv --method nuts --opt jit=true
  bayesdl summary runs/eight_schools-nuts
  bayesdl plot runs/eight_schools-nuts --kind rank
"""


class _Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"bayesdl: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bayesdl", description="Bayesian inference for Pyro models, "
                     "with ArviZ posteriors and diagnostics.", epilog=EXAMPLES,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=_version())
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("infer", help="run inference and write a run directory",
                              description="Run an inference method on a model and write "
                              "posterior.nc, summary.csv, trace.png and settings.json.",
                              epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("model", help="built-in name (see `bayesdl models`) or path/file.py:function")
    run.add_argument("--data", help="data file: .csv (columns), .json (Stan-style dict) or .npz")
    run.add_argument("--arg", action="append", metavar="KEY=VALUE",
                     help="model argument, e.g. --arg centered=true (repeatable)")
    run.add_argument("--method", default="nuts", help="inference method (see `bayesdl methods`); "
                     "default nuts")
    run.add_argument("--opt", action="append", metavar="KEY=VALUE",
                     help="method option, e.g. --opt target_accept=0.95 (repeatable)")
    run.add_argument("--chains", type=int, default=4, help="number of chains (default 4)")
    run.add_argument("--warmup", type=int, default=1000, help="warm-up iterations (default 1000)")
    run.add_argument("--draws", type=int, default=1000, help="draws kept per chain (default 1000)")
    run.add_argument("--seed", type=int, default=0,
                     help="seed (default 0); chain 0 uses it, the others seeds derived from it")
    run.add_argument("--device", choices=["cpu", "cuda"], default=None,
                     help="default: cuda when available, else cpu")
    run.add_argument("--dtype", choices=["float64", "float32"], default="float64",
                     help="float type of data and parameters (default float64)")
    run.add_argument("--out", help="run directory to create (default runs/MODEL-METHOD[-N])")
    run.add_argument("--predictive", action="store_true",
                     help="also draw the posterior predictive")
    run.add_argument("--json", action="store_true", help="print the summary as JSON")
    run.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    summary = commands.add_parser("summary", help="print the summary of a saved run")
    summary.add_argument("run", help="run directory or posterior.nc")
    summary.add_argument("--json", action="store_true", help="print JSON")

    plot = commands.add_parser("plot", help="draw a diagnostic plot of a saved run (PNG)")
    plot.add_argument("run", help="run directory or posterior.nc")
    plot.add_argument("--kind", default="trace", choices=["trace", "rank", "pair", "forest", "energy"])
    plot.add_argument("--var", action="append", help="variable to plot (repeatable)")
    plot.add_argument("--out", help="PNG path (default RUN/KIND.png)")

    models = commands.add_parser("models", help="list the built-in models")
    models.add_argument("--json", action="store_true", help="print JSON")
    methods = commands.add_parser("methods", help="list the inference methods and their options")
    methods.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _version() -> str:
    from bayesdl import __version__

    return f"bayesdl {__version__}"


def _summary_record(summary, warnings_found: list[str]) -> dict:
    table = json.loads(summary.to_json(orient="index"))
    return {"summary": table, "warnings": warnings_found}


def _print_summary(idata, as_json: bool, run_dir: Path | None) -> None:
    from bayesdl.summary import diagnose, format_table, summarize

    summary = summarize(idata)
    found = diagnose(idata, summary)
    if as_json:
        record = _summary_record(summary, found)
        if run_dir is not None:
            record["run_dir"] = str(run_dir)
        print(json.dumps(record, indent=2))
        return
    print(format_table(summary))
    for line in found:
        print(f"warning: {line}")
    if run_dir is not None:
        print(f"\nwrote {run_dir}/ (posterior.nc, summary.csv, trace.png, settings.json)")


def _cmd_infer(ns: argparse.Namespace) -> None:
    from bayesdl.api import infer, model_label
    from bayesdl.options import parse_key_values
    from bayesdl.runs import choose_run_dir

    args = parse_key_values(ns.arg, "--arg")
    options = parse_key_values(ns.opt, "--opt")
    run_dir = choose_run_dir(ns.out, model_label(ns.model), ns.method)
    idata = infer(ns.model, ns.data, method=ns.method, chains=ns.chains, warmup=ns.warmup,
                  draws=ns.draws, seed=ns.seed, device=ns.device, dtype=ns.dtype,
                  progress=not ns.no_progress and sys.stderr.isatty(), args=args,
                  predictive=ns.predictive, out=run_dir, **options)
    _print_summary(idata, ns.json, run_dir)


def _cmd_summary(ns: argparse.Namespace) -> None:
    from bayesdl.runs import load

    _print_summary(load(ns.run), ns.json, None)


def _cmd_plot(ns: argparse.Namespace) -> None:
    from bayesdl.plots import plot
    from bayesdl.runs import load

    idata = load(ns.run)
    run_path = Path(ns.run)
    default_dir = run_path if run_path.is_dir() else run_path.parent
    out = Path(ns.out) if ns.out else default_dir / f"{ns.kind}.png"
    if out.suffix.lower() != ".png":
        raise BayesdlError(f"plot output {str(out)!r} must end in .png")
    tmp = out.with_name(f".{out.name}.tmp.png")
    try:
        plot(idata, ns.kind, tmp, ns.var)
        tmp.replace(out)
    except OSError as error:
        raise BayesdlError(f"cannot write {str(out)!r}: {error.strerror or error}") from None
    finally:
        tmp.unlink(missing_ok=True)
    print(f"wrote {out}")


def _cmd_models(ns: argparse.Namespace) -> None:
    from bayesdl.models import REGISTRY

    rows = [{"name": m.name, "description": m.description,
             "args": {k: v for k, v in {**m.model_args(), **m.data_args()}.items()}}
            for m in sorted(REGISTRY.values(), key=lambda m: m.name)]
    if ns.json:
        print(json.dumps(rows, indent=2))
        return
    width = max(len(r["name"]) for r in rows)
    for row in rows:
        print(f"{row['name']:<{width}}  {row['description']}")


def _cmd_methods(ns: argparse.Namespace) -> None:
    import dataclasses

    from bayesdl.inference.methods import METHODS

    rows = [{"name": m.name, "description": m.description,
             "options": {f.name: f.default for f in dataclasses.fields(m.options)}}
            for m in METHODS.values()]
    if ns.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items())
        print(f"{row['name']:<5} {row['description']}\n      options: {options}")


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(f"warning: {str(message).splitlines()[0]}\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``bayesdl`` command; returns the exit code."""
    ns = build_parser().parse_args(argv)
    warnings.showwarning = _one_line_warning
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    commands = {"infer": _cmd_infer, "summary": _cmd_summary, "plot": _cmd_plot,
                "models": _cmd_models, "methods": _cmd_methods}
    try:
        commands[ns.command](ns)
    except BayesdlError as error:
        sys.stderr.write(f"bayesdl: error: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("bayesdl: interrupted; nothing was written\n")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
