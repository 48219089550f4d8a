"""``bayesdl train NAME``: run one of the Python trainers and write its results as a run directory.

The trainers are the ones in ``bayesdl.models`` (``bayesian_gan``: :func:`train_gan`,
``rbm``: :func:`train_rbm` by CD-k/PCD scored with AIS, ``char_lstm``:
:func:`train_char_lstm` with truncated BPTT, then generation). ``--arg key=value`` fills
the trainer's settings dataclass (plus a few output options per trainer, listed in
:data:`EXTRAS`); the run directory (written whole or not at all, by
:func:`bayesdl.runs.write_run`) holds ``settings.json``, ``metrics.json``, the fitted
parameters as plain tensors and, per trainer, ``samples.png`` (digit grids) or
``samples.json`` / ``samples.txt`` (generated text).
"""

from __future__ import annotations

import dataclasses
import json
import math
import platform
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from bayesdl.errors import BayesdlError
from bayesdl.options import convert_value

#: output options of each trainer that are not fields of its settings dataclass (name -> default)
EXTRAS: dict[str, dict[str, Any]] = {
    "bayesian_gan": {"num_labelled": 100, "num_images": 10},
    "rbm": {"ais_particles": 100, "ais_steps": 1000, "num_images": 20, "gibbs_sweeps": 1000},
    "char_lstm": {"text": "", "prime": "\n", "length": 200, "temperatures": "0.5,1.0",
                  "beam_size": 3, "beam_length": 40},
}


def _settings_class(name: str) -> type:
    if name == "bayesian_gan":
        from bayesdl.models.bayesian_gan import GANSettings

        return GANSettings
    if name == "rbm":
        from bayesdl.models.rbm import RBMTraining

        return RBMTraining
    from bayesdl.models.char_lstm import CharLSTMSettings

    return CharLSTMSettings


def trainer_arguments(name: str) -> dict[str, Any]:
    """Every ``--arg`` key of trainer ``name`` with its default."""
    check_name(name)
    fields = {f.name: f.default for f in dataclasses.fields(_settings_class(name))}
    return {**fields, **EXTRAS[name]}


def check_name(name: str) -> None:
    """Raise a one-line error unless ``name`` is a trainer."""
    if name not in EXTRAS:
        raise BayesdlError(f"unknown trainer {name!r}; choose one of {', '.join(EXTRAS)}")


def parse_arguments(name: str, given: dict[str, Any], seed: int | None = None
                    ) -> tuple[Any, dict[str, Any]]:
    """``(settings dataclass, extras)`` of trainer ``name`` from ``given`` (strings or values);
    ``seed`` (the ``--seed`` flag) sets the settings' seed."""
    check_name(name)
    settings_class = _settings_class(name)
    hints = typing.get_type_hints(settings_class)
    known = trainer_arguments(name)
    unknown = [key for key in given if key not in known]
    if unknown:
        listing = ", ".join(f"{k}={v!r}" for k, v in known.items())
        raise BayesdlError(f"train {name} has no argument {unknown[0]!r}; its arguments are: {listing}")
    if seed is not None:
        if "seed" in given:
            raise BayesdlError("give the seed once: --seed or --arg seed, not both")
        given = {**given, "seed": seed}
    values: dict[str, Any] = {}
    for key, value in given.items():
        kind = hints.get(key, type(known[key]))
        kind = kind if kind in (bool, int, float) else str
        values[key] = convert_value(value, kind, f"train {name} argument {key}")
        if isinstance(values[key], float) and not math.isfinite(values[key]):
            raise BayesdlError(f"train {name} argument {key} must be finite, got {value!r}")
        if isinstance(values[key], (int, float)) and not isinstance(values[key], bool) and values[key] < 0:
            raise BayesdlError(f"train {name} argument {key} must be >= 0, got {value!r}")
    fields = {f.name for f in dataclasses.fields(settings_class)}
    settings = settings_class(**{k: v for k, v in values.items() if k in fields})
    extras = {**EXTRAS[name], **{k: v for k, v in values.items() if k not in fields}}
    return settings, extras


def train(name: str, args: dict[str, Any] | None = None, out: str | Path | None = None,
          seed: int | None = None) -> tuple[Path, dict[str, Any]]:
    """Run trainer ``name`` with ``args`` and write the run directory ``out`` (default
    ``runs/NAME-train[-N]``); returns ``(run directory, metrics)``."""
    from bayesdl.runs import choose_run_dir, write_run

    settings, extras = parse_arguments(name, args or {}, seed)
    run_dir = choose_run_dir(out, name, "train")
    runner: Callable[[Any, dict[str, Any]], tuple[dict[str, Any], Callable[[Path], None]]] = \
        {"bayesian_gan": _train_gan, "rbm": _train_rbm, "char_lstm": _train_char_lstm}[name]
    with torch.random.fork_rng(devices=[]):
        try:
            metrics, write_files = runner(settings, extras)
        except BayesdlError:
            raise
        except (ValueError, RuntimeError) as error:  # torch rejecting a setting (a size, a shape)
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise BayesdlError(f"train {name} failed with these settings: {first}") from None
    record = {"trainer": name, "settings": dataclasses.asdict(settings), "extras": extras,
              "versions": {"python": platform.python_version(), "torch": torch.__version__}}

    def files(tmp: Path) -> None:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        write_files(tmp)

    write_run(run_dir, None, record, files)
    return run_dir, metrics


# ----------------------------------------------------------------- the trainers
def _train_gan(settings, extras: dict[str, Any]):
    from bayesdl.model_plots import image_grid_png
    from bayesdl.models.bayesian_gan import choose_labelled, train_gan
    from bayesdl.models.digits import digits

    train_x, train_y = digits("train")
    labels = labelled = None
    if settings.num_classes > 1:
        if settings.num_classes > 10:
            raise BayesdlError(f"train bayesian_gan: num_classes is at most 10 (digits), got "
                               f"{settings.num_classes}")
        keep = train_y < settings.num_classes
        train_x, train_y = train_x[keep], train_y[keep]
        if extras["num_labelled"] < 1:
            raise BayesdlError("train bayesian_gan: semi-supervised (num_classes > 1) needs "
                               "num_labelled >= 1")
        labels = train_y
        labelled = choose_labelled(train_y, extras["num_labelled"], settings.num_classes, settings.seed)
    result = train_gan(train_x, settings, labels, labelled)
    metrics: dict[str, Any] = {"seconds": result.seconds,
                               "iterations_per_second": result.iterations_per_second,
                               "history": result.history}
    if settings.num_classes > 1:
        test_x, test_y = digits("test")
        keep = test_y < settings.num_classes
        metrics["num_labelled"] = int(len(labelled))
        metrics["test_accuracy"] = result.accuracy(test_x[keep], test_y[keep])
    images = result.sample(max(1, extras["num_images"]), seed=settings.seed).reshape(-1, 64)

    def write(tmp: Path) -> None:
        image_grid_png(images, tmp / "samples.png", columns=max(1, extras["num_images"]),
                       title="generated digits (one row per generator sample)")
        torch.save({"generator": result.generator, "discriminator": result.discriminator},
                   tmp / "weights.pt")

    return metrics, write


def _train_rbm(settings, extras: dict[str, Any]):
    from bayesdl.inference.counter_rng import ChainRNG
    from bayesdl.model_plots import image_grid_png
    from bayesdl.models.digits import digits
    from bayesdl.models.rbm import (
        ais_log_likelihood,
        ais_log_partition,
        base_rate_bias,
        exact_log_likelihood,
        gibbs_sweeps,
        train_rbm,
    )

    train_v, _ = digits("train", binarise=True)
    test_v, _ = digits("test", binarise=True)
    fit = train_rbm(train_v, settings)
    rbm = fit.rbm
    if extras["ais_particles"] < 2 or extras["ais_steps"] < 1:
        raise BayesdlError("train rbm: ais_particles must be >= 2 and ais_steps >= 1")
    ais = ais_log_partition(rbm, extras["ais_particles"], extras["ais_steps"], base_rate_bias(train_v),
                            seed=settings.seed)
    metrics: dict[str, Any] = {
        "seconds": fit.seconds, "epochs_per_second": fit.epochs_per_second,
        "reconstruction_error": fit.reconstruction_error,
        "ais_log_partition": float(ais.log_normaliser), "ais_standard_error": float(ais.standard_error),
        "ais_effective_sample_size": float(ais.effective_sample_size),
        "test_log_likelihood_ais": float(ais_log_likelihood(rbm, test_v, ais.log_normaliser)),
        "train_log_likelihood_ais": float(ais_log_likelihood(rbm, train_v, ais.log_normaliser)),
    }
    if settings.num_hidden <= 20:  # log Z exact by enumerating the hidden layer (2^H states)
        metrics["test_log_likelihood_exact"] = float(exact_log_likelihood(rbm, test_v).mean())
    num = max(1, extras["num_images"])
    rng = ChainRNG([settings.seed * 1_000_003 + 500_000 + i for i in range(num)])
    start = (rng.uniform(0, 7, (rbm.num_visible,), rbm.weight.dtype) < 0.5).to(rbm.weight.dtype)
    v, h = gibbs_sweeps(rbm, rng, 0, start, start.new_zeros(num, rbm.num_hidden),
                        max(1, extras["gibbs_sweeps"]))
    images = torch.sigmoid(h @ rbm.weight.T + rbm.visible_bias)  # p(v = 1 | h) of the last sweep

    def write(tmp: Path) -> None:
        image_grid_png(images, tmp / "samples.png", columns=min(num, 10),
                       title=f"p(v | h) after {max(1, extras['gibbs_sweeps'])} Gibbs sweeps")
        torch.save(dict(rbm._asdict()), tmp / "rbm.pt")

    return metrics, write


def _train_char_lstm(settings, extras: dict[str, Any]):
    from bayesdl.models.char_lstm import bundled_text, train_char_lstm

    if extras["text"]:
        try:
            text = Path(extras["text"]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as error:
            raise BayesdlError(f"train char_lstm: cannot read text file {extras['text']!r}: "
                               f"{error}") from None
    else:
        text = bundled_text()
    try:
        temperatures = [float(t) for t in str(extras["temperatures"]).split(",") if t.strip()]
    except ValueError:
        raise BayesdlError(f"train char_lstm: temperatures must be numbers separated by commas, "
                           f"got {extras['temperatures']!r}") from None
    if not temperatures or not all(t > 0 and math.isfinite(t) for t in temperatures):
        raise BayesdlError(f"train char_lstm: temperatures must be positive, got {extras['temperatures']!r}")
    prime = str(extras["prime"]).replace("\\n", "\n") or "\n"
    fit = train_char_lstm(text, settings)
    samples = [{"temperature": t, "text": fit.sample(extras["length"], prime, t, seed=settings.seed)}
               for t in temperatures]
    beams = []
    if extras["beam_size"] >= 1 and extras["beam_length"] >= 1:
        texts, result = fit.beam_search(extras["beam_size"], extras["beam_length"], prime, seed=settings.seed)
        beams = [{"text": t, "log_prob": float(lp)} for t, lp in zip(texts, result.log_probs[0], strict=True)]
    metrics = {"validation_nats_per_char": fit.validation_nats, "bigram_nats_per_char": fit.bigram_nats,
               "tokens_per_second": fit.tokens_per_second,
               "final_loss": fit.losses[-1] if fit.losses else None,
               "vocabulary_size": len(fit.vocab)}
    state = {f"net.{k}": v.detach().clone() for k, v in fit.net.state_dict().items()}
    state["readout"] = fit.readout().clone()

    def write(tmp: Path) -> None:
        (tmp / "samples.json").write_text(json.dumps({"prime": prime, "samples": samples,
                                                      "beam_search": beams}, indent=2) + "\n")
        lines = [f"# temperature {s['temperature']}\n{prime}{s['text']}\n" for s in samples]
        lines += [f"# stochastic beam search, log p = {b['log_prob']:.3f}\n{prime}{b['text']}\n"
                  for b in beams]
        (tmp / "samples.txt").write_text("\n".join(lines))
        (tmp / "vocabulary.json").write_text(json.dumps(fit.vocab.chars) + "\n")
        torch.save(state, tmp / "weights.pt")

    return metrics, write
