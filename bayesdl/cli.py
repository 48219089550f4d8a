"""The ``bayesdl`` command line: infer, check, summary, plot, models, methods.

Every user error is one line on stderr and exit code 2; nothing half-written is left.
``check`` exits with 1 when the calibration test fails.
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
  bayesdl check gaussian_mle --method nuts --sbc 100 --out sbc-gm-nuts
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
    run.add_argument("model", nargs="?",
                     help="built-in name (see `bayesdl models`) or path/file.py:function")
    run.add_argument("--data", help="data file: .csv (columns), .json (Stan-style dict) or .npz")
    run.add_argument("--allow-extra-data", action="store_true",
                     help="warn about and drop data keys the model does not take (default: error)")
    run.add_argument("--arg", action="append", metavar="KEY=VALUE",
                     help="model argument, e.g. --arg centered=true (repeatable)")
    run.add_argument("--method", default="nuts", help="inference method (see `bayesdl methods`); "
                     "default nuts")
    run.add_argument("--opt", action="append", metavar="KEY=VALUE",
                     help="method option, e.g. --opt target_accept=0.95 (repeatable)")
    run.add_argument("--minibatch", choices=["none", "uniform", "dpp"],
                     help="svi: mini-batches of the data, uniform or diverse by a k-DPP "
                          "(same as --opt minibatch=...; size by --opt batch_size=B)")
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
    run.add_argument("--checkpoint-every", type=int, default=1000, metavar="N",
                     help="flush draws and sampler state to OUT.partial/ every N iterations "
                     "(SVI: steps); 0: never (default 1000)")
    run.add_argument("--resume", metavar="DIR", help="continue an interrupted run (RUN or "
                     "RUN.partial) from its last flush, with the arguments it was started with")
    run.add_argument("--init-from", metavar="RUN", help="start from the final sampler state "
                     "(step size, metric, positions) of a finished run; warm-up is skipped")
    run.add_argument("--backend", choices=["local", "ray"], default="local",
                     help="ray: run groups of chains as tasks on a Ray cluster (default local)")
    run.add_argument("--address", help="Ray cluster address (default: start a local Ray "
                     "on 127.0.0.1)")
    run.add_argument("--ray-tasks", type=int, metavar="N",
                     help="Ray tasks to split the chains into (default: one per CPU)")

    _add_check(commands)
    _add_train(commands)

    summary = commands.add_parser("summary", help="print the summary of a saved run")
    summary.add_argument("run", help="run directory or posterior.nc")
    summary.add_argument("--json", action="store_true", help="print JSON")

    plot = commands.add_parser("plot", help="draw a diagnostic plot of a saved run (PNG)")
    plot.add_argument("run", help="run directory or posterior.nc")
    plot.add_argument("--kind", default="trace",
                      choices=["trace", "rank", "pair", "forest", "energy", "model"],
                      help="diagnostic plot (default trace); model: the fitted network of a vae run "
                      "(reconstructions.png, samples.png) or a sequence_regression run (forecast.png "
                      "with 50%%/90%% bands)")
    plot.add_argument("--var", action="append", help="variable to plot (repeatable)")
    plot.add_argument("--out", help="PNG path (default RUN/KIND.png); --kind model: a folder "
                      "(default RUN)")

    models = commands.add_parser("models", help="list the built-in models")
    models.add_argument("--json", action="store_true", help="print JSON")
    methods = commands.add_parser("methods", help="list the inference methods and their options")
    methods.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _add_check(commands) -> None:
    check = commands.add_parser(
        "check", help="simulation-based calibration of a method on a model",
        description="Simulation-based calibration (Talts et al. 2018): draw parameters from "
        "the prior, simulate data, run the method on each data set and test that the ranks of "
        "the true parameters among the posterior draws are uniform. Writes ranks.csv, sbc.json "
        "and ranks.png; exits with 1 when a parameter fails the test.")
    check.add_argument("model", help="built-in name (see `bayesdl models`) or path/file.py:function")
    check.add_argument("--method", default="nuts", help="inference method to check (default nuts)")
    check.add_argument("--sbc", type=int, required=True, metavar="N",
                       help="number of simulated data sets (replications), e.g. 100")
    check.add_argument("--data", help="data file giving covariates and sizes (built-ins bring theirs)")
    check.add_argument("--allow-extra-data", action="store_true",
                       help="warn about and drop data keys the model does not take (default: error)")
    check.add_argument("--arg", action="append", metavar="KEY=VALUE", help="model argument (repeatable)")
    check.add_argument("--opt", action="append", metavar="KEY=VALUE", help="method option (repeatable)")
    check.add_argument("--chains", type=int, default=4, help="chains per replication (default 4)")
    check.add_argument("--warmup", type=int, default=500, help="warm-up per replication (default 500)")
    check.add_argument("--draws", type=int, default=100, help="draws per chain (default 100)")
    check.add_argument("--thin", type=int, default=0,
                       help="keep every THIN-th draw (default 0: thin each run to its ESS)")
    check.add_argument("--bins", type=int, default=None,
                       help="rank-histogram bins (default: N/5, from 2 to 20)")
    check.add_argument("--alpha", type=float, default=0.01,
                       help="family-wise level of the uniformity test, Bonferroni-split (default 0.01)")
    check.add_argument("--seed", type=int, default=0, help="seed (default 0)")
    check.add_argument("--device", choices=["cpu", "cuda"], default=None,
                       help="default: cuda when available, else cpu")
    check.add_argument("--dtype", choices=["float64", "float32"], default="float64")
    check.add_argument("--out", help="directory to create (default runs/MODEL-sbc-METHOD[-N])")
    check.add_argument("--json", action="store_true", help="print the result as JSON")
    check.add_argument("--no-progress", action="store_true", help="hide the progress bar")


TRAIN_EXAMPLES = """trainers (an unknown --arg key is an error listing every key with its default):
  bayesian_gan  Bayesian GAN on the 8x8 digits by SGHMC (GANSettings: iterations, latent_prior=normal|gmm|dp,
                num_classes=10 + num_labelled=100 for semi-supervised, bayesian=false: ML GAN, ...);
                writes metrics.json (test_accuracy when semi-supervised), samples.png, weights.pt
  rbm           RBM by CD-k / PCD on binarised digits (RBMTraining: num_hidden, epochs, k, method=cd|pcd),
                scored by AIS (ais_particles, ais_steps; exact too when num_hidden <= 20);
                writes metrics.json, samples.png (Gibbs samples), rbm.pt
  char_lstm     char-LSTM by truncated BPTT (CharLSTMSettings: hidden, epochs, bptt, bayesian_last_layer, ...)
                on the bundled Shakespeare excerpt or --arg text=FILE; generates with each of
                temperatures=0.5,1.0 and by stochastic beam search (beam_size, beam_length), after prime;
                writes metrics.json (validation vs bigram nats/char), samples.txt, samples.json, weights.pt
examples:
  bayesdl train rbm --arg num_hidden=16 --arg epochs=5 --arg learning_rate=0.05
  bayesdl train bayesian_gan --arg num_classes=10 --arg num_labelled=100 --arg iterations=600
  bayesdl train char_lstm --arg hidden=64 --arg epochs=15 --arg prime="First Citizen:" --arg temperatures=0.7
"""


def _add_train(commands) -> None:
    train = commands.add_parser(
        "train", help="train a Bayesian GAN, an RBM (CD/PCD) or a char-LSTM and generate",
        description="Run a model trainer (not a posterior sampler) and write a run directory: "
        "settings.json, metrics.json, fitted weights and generated samples.",
        epilog=TRAIN_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    train.add_argument("name", help="bayesian_gan, rbm or char_lstm")
    train.add_argument("--arg", action="append", metavar="KEY=VALUE",
                       help="trainer setting, e.g. --arg epochs=5 (repeatable)")
    train.add_argument("--seed", type=int, default=None, help="seed (default 0)")
    train.add_argument("--out", help="run directory to create (default runs/NAME-train[-N])")
    train.add_argument("--json", action="store_true", help="print the metrics as JSON")


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

    if ns.resume is not None:
        from bayesdl.api import resume

        idata = resume(ns.resume, progress=not ns.no_progress and sys.stderr.isatty(),
                       address=ns.address)
        target = Path(ns.resume)
        _print_summary(idata, ns.json, target.with_name(target.name.removesuffix(".partial")))
        return
    if ns.model is None:
        raise BayesdlError("infer needs a MODEL (or --resume DIR)")
    args = parse_key_values(ns.arg, "--arg")
    options = parse_key_values(ns.opt, "--opt")
    if ns.minibatch is not None:
        if options.setdefault("minibatch", ns.minibatch) != ns.minibatch:
            raise BayesdlError(f"--minibatch {ns.minibatch} and --opt minibatch="
                               f"{options['minibatch']} disagree; give one")
    run_dir = choose_run_dir(ns.out, model_label(ns.model), ns.method)
    idata = infer(ns.model, ns.data, method=ns.method, chains=ns.chains, warmup=ns.warmup,
                  draws=ns.draws, seed=ns.seed, device=ns.device, dtype=ns.dtype,
                  progress=not ns.no_progress and sys.stderr.isatty(), args=args,
                  predictive=ns.predictive, out=run_dir, checkpoint_every=ns.checkpoint_every,
                  init_from=ns.init_from, executor=ns.backend, address=ns.address,
                  ray_tasks=ns.ray_tasks, allow_extra_data=ns.allow_extra_data, **options)
    _print_summary(idata, ns.json, run_dir)


def _cmd_check(ns: argparse.Namespace) -> int:
    from bayesdl.api import model_label
    from bayesdl.calibration import check
    from bayesdl.options import parse_key_values
    from bayesdl.runs import choose_run_dir

    args = parse_key_values(ns.arg, "--arg")
    options = parse_key_values(ns.opt, "--opt")
    run_dir = choose_run_dir(ns.out, model_label(ns.model), f"sbc-{ns.method}")
    result = check(ns.model, ns.data, method=ns.method, sbc=ns.sbc, chains=ns.chains,
                   warmup=ns.warmup, draws=ns.draws, seed=ns.seed, thin=ns.thin, bins=ns.bins,
                   alpha=ns.alpha, device=ns.device, dtype=ns.dtype,
                   progress=not ns.no_progress and sys.stderr.isatty(), args=args, out=run_dir,
                   allow_extra_data=ns.allow_extra_data, **options)
    if ns.json:
        print(json.dumps({**result.record(), "run_dir": str(run_dir)}, indent=2))
    else:
        print(result.table())
        print(result.verdict())
        print(f"\nwrote {run_dir}/ (ranks.csv, sbc.json, ranks.png)")
    return 0 if result.passed else 1


def _cmd_train(ns: argparse.Namespace) -> None:
    from bayesdl.options import parse_key_values
    from bayesdl.training import check_name, train

    check_name(ns.name)
    run_dir, metrics = train(ns.name, parse_key_values(ns.arg, "--arg"), ns.out, ns.seed)
    if ns.json:
        print(json.dumps({**metrics, "run_dir": str(run_dir)}, indent=2))
        return
    for key, value in metrics.items():
        if isinstance(value, (int, float, str)):
            print(f"{key:<28} {value:.6g}" if isinstance(value, float) else f"{key:<28} {value}")
    print(f"\nwrote {run_dir}/ ({', '.join(sorted(p.name for p in run_dir.iterdir()))})")


def _cmd_summary(ns: argparse.Namespace) -> None:
    from bayesdl.runs import load

    _print_summary(load(ns.run), ns.json, None)


def _cmd_plot(ns: argparse.Namespace) -> None:
    from bayesdl.plots import plot
    from bayesdl.runs import load

    if ns.kind == "model":
        from bayesdl.fitted_plots import plot_fitted_model

        for path in plot_fitted_model(ns.run, ns.out):
            print(f"wrote {path}")
        return
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
    commands = {"infer": _cmd_infer, "check": _cmd_check, "summary": _cmd_summary,
                "plot": _cmd_plot, "models": _cmd_models, "methods": _cmd_methods,
                "train": _cmd_train}
    try:
        code = commands[ns.command](ns)
    except BayesdlError as error:
        sys.stderr.write(f"bayesdl: error: {error}\n")
        return 2
    except KeyboardInterrupt:
        sys.stderr.write("bayesdl: interrupted; no run was written (a run that flushed a "
                         "checkpoint continues with: bayesdl infer --resume RUN.partial)\n")
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
