"""Simulation-based calibration (SBC; Talts, Betancourt, Simpson, Vehtari & Gelman 2018).

For n = 1..N: draw parameters theta_n from the prior and data y_n from the model
(the model run with its observed sites unobserved), run the method on y_n through
``bayesdl.infer``, and record the rank of theta_n among the (thinned) posterior draws,
per scalar parameter. If the method samples the exact posterior, every rank is
uniform on {0, ..., L}; a method that is biased, too narrow or too wide leaves a
slope, a U or a hump in the rank histogram.

Ranks are reported as fractions u = (rank + V) / (L + 1), V ~ U(0, 1) (exactly U(0, 1)
under calibration, whatever L), so runs thinned by different amounts pool. Thinning
(``thin=0``: per run, to about the effective sample size) keeps autocorrelated draws
from faking a U. The test is Pearson's chi-square on B equal bins (SciPy), with a
Bonferroni bound over the parameters; the plot adds the 99% binomial band per bin.
No library does SBC for Pyro models, hence this module.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pyro import poutine
from pyro.poutine.uncondition_messenger import UnconditionMessenger
from pyro.poutine.util import site_is_subsample
from tqdm.auto import tqdm

from bayesdl.errors import BayesdlError
from bayesdl.runs import write_directory

DEFAULT_ALPHA = 0.01


@dataclass
class SBCResult:
    """Fractional ranks ``u`` [replication, parameter] and the uniformity test on them.

    ``p_values`` are per parameter (chi-square on ``bins`` equal bins); the run passes
    when every p-value is at least ``alpha / K`` (Bonferroni over the K parameters).
    """

    model: str
    method: str
    names: list[str]
    ranks: np.ndarray  # [N, K] integer ranks among the kept draws
    kept: np.ndarray  # [N] number of kept draws L per replication
    fractions: np.ndarray  # [N, K] (rank + V) / (L + 1)
    prior_values: np.ndarray  # [N, K] the true parameter of each replication
    ess_ratio: np.ndarray  # [N, K] effective sample size / kept draws
    bins: int
    chi2: np.ndarray = field(default=None)  # [K]
    p_values: np.ndarray = field(default=None)  # [K]
    alpha: float = DEFAULT_ALPHA
    settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.chi2 is None or self.p_values is None:
            self.chi2, self.p_values = uniformity_test(self.fractions, self.bins)

    @property
    def num_replications(self) -> int:
        return self.fractions.shape[0]

    @property
    def threshold(self) -> float:
        """The Bonferroni level ``alpha / K`` each p-value is compared with."""
        return self.alpha / max(len(self.names), 1)

    @property
    def flagged(self) -> list[str]:
        """Parameters whose ranks fail the uniformity test at the Bonferroni level."""
        return [n for n, p in zip(self.names, self.p_values, strict=True) if p < self.threshold]

    @property
    def passed(self) -> bool:
        return not self.flagged

    def counts(self) -> np.ndarray:
        """[bins, K] histogram counts of the fractional ranks."""
        return bin_counts(self.fractions, self.bins)

    def record(self) -> dict[str, Any]:
        """A JSON-able summary (what ``sbc.json`` and ``--json`` hold)."""
        return {
            "model": self.model, "method": self.method, "replications": self.num_replications,
            "bins": self.bins, "alpha": self.alpha, "bonferroni_threshold": self.threshold,
            "passed": self.passed, "flagged": self.flagged,
            "min_p_value": float(np.min(self.p_values)) if len(self.names) else None,
            "kept_draws": {"min": int(self.kept.min()), "median": float(np.median(self.kept)),
                           "max": int(self.kept.max())},
            "parameters": {
                name: {"chi2": float(self.chi2[k]), "p_value": float(self.p_values[k]),
                       "median_ess_ratio": float(np.median(self.ess_ratio[:, k])),
                       "counts": self.counts()[:, k].tolist()}
                for k, name in enumerate(self.names)
            },
            "settings": self.settings,
        }

    def table(self) -> str:
        """A text table: parameter, chi-square, p-value, flag."""
        width = max([len(n) for n in self.names] + [9])
        lines = [f"{'parameter':<{width}}  {'chi2':>8}  {'p_value':>8}  {'ess/L':>6}"]
        for k, name in enumerate(self.names):
            flag = "  FAIL" if self.p_values[k] < self.threshold else ""
            lines.append(f"{name:<{width}}  {self.chi2[k]:8.2f}  {self.p_values[k]:8.4f}  "
                         f"{np.median(self.ess_ratio[:, k]):6.2f}{flag}")
        return "\n".join(lines)

    def verdict(self) -> str:
        """One line: calibrated or not, at which level."""
        head = (f"SBC {self.model} / {self.method}: {self.num_replications} replications, "
                f"{len(self.names)} parameters, {self.bins} bins; ")
        if self.passed:
            return head + (f"ranks uniform (min p = {np.min(self.p_values):.3g} >= "
                           f"{self.alpha:g}/{len(self.names)} = {self.threshold:.3g})")
        return head + (f"NOT calibrated: {', '.join(self.flagged)} (p < {self.alpha:g}/"
                       f"{len(self.names)} = {self.threshold:.3g})")


# ----------------------------------------------------------------- statistics
def fractional_ranks(truth: np.ndarray, draws: np.ndarray,
                     rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Rank of ``truth`` [K] among ``draws`` [L, K], ties broken at random, and
    ``(rank + V) / (L + 1)`` with V ~ U(0, 1): exactly U(0, 1) when the rank is
    uniform on {0..L}."""
    below = (draws < truth).sum(0)
    ties = (draws == truth).sum(0)
    ranks = below + np.floor(rng.uniform(size=truth.shape) * (ties + 1)).astype(np.int64)
    fractions = (ranks + rng.uniform(size=truth.shape)) / (draws.shape[0] + 1)
    return ranks, fractions


def bin_counts(fractions: np.ndarray, bins: int) -> np.ndarray:
    """[bins, K] counts of fractions in [0, 1) over ``bins`` equal bins."""
    index = np.minimum((fractions * bins).astype(np.int64), bins - 1)
    return np.stack([np.bincount(index[:, k], minlength=bins) for k in range(index.shape[1])],
                    axis=1) if index.size else np.zeros((bins, fractions.shape[1]), np.int64)


def uniformity_test(fractions: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Pearson's chi-square of the binned fractions against equal bins: (chi2 [K], p [K])."""
    from scipy.stats import chisquare

    counts = bin_counts(fractions, bins)
    if counts.shape[1] == 0:
        return np.zeros(0), np.zeros(0)
    statistic, p_value = chisquare(counts, axis=0)
    return np.asarray(statistic, dtype=float), np.asarray(p_value, dtype=float)


def default_bins(replications: int) -> int:
    """About 5 expected ranks per bin or more (chi-square's rule), 2 to 20 bins."""
    return int(min(20, max(2, replications // 5)))


def binomial_band(replications: int, bins: int, level: float = 0.99) -> tuple[float, float]:
    """The central ``level`` interval of one bin's count under uniformity."""
    from scipy.stats import binom

    tail = (1 - level) / 2
    return (float(binom.ppf(tail, replications, 1 / bins)),
            float(binom.ppf(1 - tail, replications, 1 / bins)))


def _ess(draws: np.ndarray) -> np.ndarray:
    """Bulk ESS per parameter of ``draws`` [chain, draw, K] (ArviZ); NaN -> 1."""
    import arviz as az

    if draws.shape[0] * draws.shape[1] < 4:
        return np.full(draws.shape[2], float(draws.shape[0] * draws.shape[1]))
    out = np.empty(draws.shape[2])
    for k in range(draws.shape[2]):
        value = np.asarray(az.ess(draws[:, :, k], method="bulk")).item()
        out[k] = value if math.isfinite(value) else 1.0
    return out


def thin_draws(draws: np.ndarray, thin: int) -> tuple[np.ndarray, np.ndarray]:
    """Thinned draws [L, K] of ``draws`` [chain, draw, K] and their ESS/L per parameter.

    ``thin`` 0 picks the step so that the kept draws number about the smallest ESS.
    """
    chains, length, _ = draws.shape
    ess = _ess(draws)
    if thin == 0:
        thin = int(min(length, max(1, math.floor(chains * length / max(float(ess.min()), 1.0)))))
    kept = draws[:, ::-1][:, ::thin][:, ::-1]  # keep the last draw of each chain
    kept = kept.reshape(-1, draws.shape[2])
    return kept, np.minimum(ess / kept.shape[0], 1e6)


# ----------------------------------------------------------------- simulation
@dataclass
class _Sites:
    latent: list[str]
    deterministic: list[str]
    observed: dict[str, str]  # observed site -> data key
    shapes: dict[str, tuple[int, ...]]


def _classify_sites(model: Callable[..., Any], data: dict[str, Any]) -> _Sites:
    with poutine.block():
        trace = poutine.trace(model).get_trace(**data)
    latent, deterministic, observed, shapes = [], [], {}, {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        shapes[name] = tuple(site["value"].shape)
        if site["infer"].get("_deterministic"):
            deterministic.append(name)
        elif type(getattr(site["fn"], "base_dist", site["fn"])).__name__ == "Unit":
            raise BayesdlError(f"SBC cannot simulate data from pyro.factor site {name!r}; "
                               "write the likelihood as pyro.sample(..., obs=data)")
        elif site["is_observed"]:
            key = next((k for k, v in data.items() if v is site["value"]), None)
            if key is None and name in data:
                key = name
            if key is None:
                raise BayesdlError(
                    f"SBC: observed site {name!r} takes obs= from no data argument; "
                    "pass the observed array as a data argument (obs=y)")
            observed[name] = key
        else:
            fn = site["fn"]
            base = getattr(fn, "base_dist", fn)
            if type(base).__name__ in ("ImproperUniform", "Flat"):
                raise BayesdlError(f"SBC needs a proper prior; site {name!r} has an improper "
                                   f"({type(base).__name__}) prior")
            latent.append(name)
    if not latent:
        raise BayesdlError("SBC: the model has no latent parameters to check")
    if not observed:
        raise BayesdlError("SBC: the model has no observed site, so there is no data to simulate")
    return _Sites(latent, deterministic, observed, shapes)


class _SimulateObserved(UnconditionMessenger):
    """``poutine.uncondition`` that leaves ``pyro.deterministic`` sites alone."""

    def _pyro_sample(self, msg) -> None:
        if not msg["infer"].get("_deterministic"):
            super()._pyro_sample(msg)


def simulate(model: Callable[..., Any], data: dict[str, Any], replications: int
             ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor], _Sites]:
    """``replications`` draws of the parameters (latent and deterministic sites) from the
    prior and of the observed sites given them: (params, observed, sites), each value
    shaped ``[replications, *site_shape]``. Seed with ``pyro.set_rng_seed`` first.

    The model runs once per draw with its observed sites sampled (Pyro's ``Predictive``
    on ``poutine.uncondition(model)`` would do, but it also "samples" the Delta of
    ``pyro.deterministic`` sites, which inside a plate comes back broadcast twice, [8, 8]
    for eight_schools' theta).
    """
    sites = _classify_sites(model, data)
    unconditioned = _SimulateObserved()(model)
    rows = []
    for _ in range(replications):  # one model run per data set: any model shape works
        with poutine.block(), torch.no_grad():
            trace = poutine.trace(unconditioned).get_trace(**data)
        rows.append({n: trace.nodes[n]["value"].detach() for n in sites.shapes})
    params = {n: torch.stack([row[n] for row in rows]) for n in sites.latent + sites.deterministic}
    observed = {n: torch.stack([row[n] for row in rows]) for n in sites.observed}
    return params, observed, sites


def _flatten(values: dict[str, np.ndarray], leading: int) -> tuple[list[str], np.ndarray]:
    """Site values [*lead, *shape] -> names ``beta[0]`` and a [*lead, K] array."""
    names, columns = [], []
    for name, value in values.items():
        shape = value.shape[leading:]
        flat = value.reshape(*value.shape[:leading], -1)
        for i, index in enumerate(np.ndindex(*shape) if shape else [()]):
            names.append(f"{name}[{','.join(map(str, index))}]" if shape else name)
            columns.append(flat[..., i])
    return names, np.stack(columns, axis=-1)


def _seed(seed: int, replication: int) -> int:
    return int(np.random.SeedSequence([seed, replication]).generate_state(1)[0] & 0x7FFFFFFF)


# ----------------------------------------------------------------- the check
def check(
    model: str | Callable[..., Any],
    data: dict[str, Any] | str | Path | None = None,
    *,
    method: str = "nuts",
    sbc: int = 100,
    chains: int = 4,
    warmup: int = 500,
    draws: int = 100,
    seed: int = 0,
    thin: int = 0,
    bins: int | None = None,
    alpha: float = DEFAULT_ALPHA,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype = "float64",
    progress: bool = True,
    args: dict[str, Any] | None = None,
    out: str | Path | None = None,
    allow_extra_data: bool = False,
    **options: Any,
) -> SBCResult:
    """Simulation-based calibration of ``method`` on ``model`` with ``sbc`` replications.

    ``model``, ``data`` and ``args`` are as for :func:`bayesdl.infer` (the data supply
    the covariates and sizes; the observed sites are replaced by simulated values);
    ``chains``, ``warmup``, ``draws`` and ``options`` set each run. ``thin`` keeps every
    ``thin``-th draw (0: thin each run to about its effective sample size). With
    ``out``, writes ``ranks.csv``, ``sbc.json`` and ``ranks.png`` there, atomically.
    ``allow_extra_data`` as for :func:`bayesdl.infer` (the replications get only the keys
    the model takes).
    """
    import pyro

    from bayesdl.api import infer, model_label
    from bayesdl.device import resolve_device, resolve_dtype, run_context
    from bayesdl.inference.methods import get_method
    from bayesdl.model_source import load_model_spec
    from bayesdl.models import REGISTRY
    from bayesdl.options import build_options
    from bayesdl.runs import choose_run_dir

    for name, value, low in (("sbc", sbc, 2), ("thin", thin, 0), ("chains", chains, 1),
                             ("draws", draws, 1), ("warmup", warmup, 0), ("seed", seed, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise BayesdlError(f"{name} must be an integer >= {low}, got {value!r}")
    if seed >= 2**32:
        raise BayesdlError(f"seed must be below 2**32, got {seed}")
    bins = default_bins(sbc) if bins is None else bins
    if isinstance(bins, bool) or not isinstance(bins, int) or not 2 <= bins <= sbc:
        raise BayesdlError(f"bins must be an integer from 2 to the number of replications "
                           f"({sbc}), got {bins!r}")
    if not isinstance(alpha, (int, float)) or not 0 < alpha < 1:
        raise BayesdlError(f"alpha must be in (0, 1), got {alpha!r}")
    build_options(get_method(method).options, options, method)  # unknown options fail now
    torch_device, torch_dtype = resolve_device(device), resolve_dtype(dtype)
    args = dict(args or {})
    label = model_label(model)
    run_dir = choose_run_dir(out, label, f"sbc-{method}") if out is not None else None

    with run_context(torch_device, torch_dtype):
        spec = load_model_spec(model, data, args, torch_device, torch_dtype,
                               allow_extra_data=allow_extra_data)
        builtin = REGISTRY.get(model) if isinstance(model, str) else None
        data_args = set(builtin.data_args()) if builtin is not None else set()
        run_args = {k: v for k, v in args.items() if k not in data_args}
        pyro.set_rng_seed(seed)
        params, observed, sites = simulate(spec.model, spec.data, sbc)
    base = {k: _host(v) for k, v in spec.data.items() if k not in args}
    names, truth = _flatten({k: v.cpu().numpy() for k, v in params.items()}, 1)

    rng = np.random.default_rng(seed)
    ranks = np.zeros((sbc, len(names)), dtype=np.int64)
    fractions = np.zeros((sbc, len(names)))
    ess_ratio = np.zeros((sbc, len(names)))
    kept = np.zeros(sbc, dtype=np.int64)
    bar = tqdm(range(sbc), desc=f"sbc {method}", disable=not progress, leave=False,
               dynamic_ncols=True, mininterval=0.5)
    for n in bar:
        run_data = dict(base)
        for site, key in sites.observed.items():
            run_data[key] = observed[site][n].cpu().numpy()
        try:
            idata = infer(model, run_data, method=method, chains=chains, warmup=warmup,
                          draws=draws, seed=_seed(seed, n), device=torch_device, dtype=torch_dtype,
                          progress=False, args=run_args, **options)
        except BayesdlError as error:
            raise BayesdlError(f"SBC replication {n + 1} of {sbc}: {error}") from None
        posterior = {k: idata.posterior[k].values for k in params}
        run_names, run_draws = _flatten(posterior, 2)  # [chain, draw, K]
        if run_names != names:
            raise BayesdlError(f"SBC replication {n + 1}: the posterior holds {run_names}, "
                               f"the prior {names}")
        thinned, ess_ratio[n] = thin_draws(run_draws, thin)
        kept[n] = thinned.shape[0]
        ranks[n], fractions[n] = fractional_ranks(truth[n], thinned, rng)

    result = SBCResult(
        label, method, names,
        ranks, kept, fractions, truth, ess_ratio, bins, alpha=alpha,
        settings={"model": spec.name, "method": method, "sbc": sbc, "chains": chains,
                  "warmup": warmup, "draws": draws, "seed": seed, "thin": thin,
                  "args": {k: str(v) for k, v in args.items()},
                  "options": {k: str(v) for k, v in options.items()},
                  "device": str(torch_device), "dtype": str(torch_dtype).replace("torch.", "")})
    if run_dir is not None:
        write_sbc(result, run_dir)
    return result


def _host(value: Any) -> Any:
    return value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value


# ----------------------------------------------------------------- output
def rank_histogram(result: SBCResult, path: str | Path, max_panels: int = 24) -> Path:
    """Histogram of the fractional ranks per parameter with the 99% binomial band (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = result.names[:max_panels]
    columns = min(4, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
    low, high = binomial_band(result.num_replications, result.bins)
    counts = result.counts()
    edges = np.linspace(0, 1, result.bins + 1)
    for k, name in enumerate(names):
        ax = axes[k // columns][k % columns]
        ax.axhspan(low, high, color="0.85", label="99% band")
        ax.axhline(result.num_replications / result.bins, color="0.5", lw=0.8)
        failed = result.p_values[k] < result.threshold
        ax.bar(edges[:-1], counts[:, k], width=1 / result.bins, align="edge",
               color="tab:red" if failed else "tab:blue", edgecolor="white", alpha=0.85)
        ax.set_title(f"{name}  p={result.p_values[k]:.3g}", fontsize=9)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, max(high, float(counts[:, k].max())) * 1.15)
    for k in range(len(names), rows * columns):
        axes[k // columns][k % columns].axis("off")
    fig.suptitle(f"SBC ranks: {result.model} / {result.method} "
                 f"({result.num_replications} replications)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=90)
    plt.close(fig)
    return Path(path)


def write_sbc(result: SBCResult, path: str | Path) -> Path:
    """Write ``ranks.csv``, ``sbc.json`` and ``ranks.png`` into a new directory, atomically."""

    def write_files(tmp: Path) -> None:
        header = ["replication", "kept_draws"] + [f"rank:{n}" for n in result.names] + \
            [f"prior:{n}" for n in result.names]
        lines = [",".join(header)]
        for n in range(result.num_replications):
            lines.append(",".join([str(n + 1), str(result.kept[n])]
                                  + [str(r) for r in result.ranks[n]]
                                  + [repr(float(v)) for v in result.prior_values[n]]))
        (tmp / "ranks.csv").write_text("\n".join(lines) + "\n")
        (tmp / "sbc.json").write_text(json.dumps(result.record(), indent=2) + "\n")
        rank_histogram(result, tmp / "ranks.png")

    return write_directory(Path(path), write_files, what="check")


__all__ = ["SBCResult", "check", "simulate", "fractional_ranks", "uniformity_test",
           "binomial_band", "rank_histogram", "write_sbc", "thin_draws"]
