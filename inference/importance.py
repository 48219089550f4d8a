"""Importance sampling: self-normalised weights, effective sample size, log evidence.

Draws ``x_i ~ q`` with weights ``w_i = p(x_i) / q(x_i)`` (``p`` unnormalised) give
``Z_hat = mean(w)``, an unbiased estimate of the evidence ``Z``, and the
self-normalised estimate ``sum w_i f(x_i) / sum w_i`` of ``E_p[f]``. The standard
error of ``log Z_hat`` is the delta method's ``sd(w) / (sqrt(N) mean(w))``, which is
``sqrt((N / ESS - 1) / (N - 1))`` with Kish's ``ESS = (sum w)^2 / sum w^2``. The
Pareto shape ``k`` of the largest weights (ArviZ's PSIS) flags weights whose variance
is infinite (``k > 0.7``: the ESS and the standard error are not to be trusted).

``--method is`` samples a Pyro model from its prior (weights = likelihood) or from a
Gaussian fitted by SVI (``--opt proposal=guide``), ``--chains C`` independent runs of
``--draws N`` each, batched. Written on top of our flat unconstrained potential
rather than Pyro's ``Importance``, which has no batching over runs, no standard error
and no resampling.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.prior_likelihood import PriorLikelihoodPotential
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings

PROPOSAL_STREAM = 11
RESAMPLE_STREAM = 12
PARETO_K_LIMIT = 0.7


class WeightSummary(NamedTuple):
    """Per run (leading dims of the log weights): evidence, its standard error, ESS."""

    log_evidence: torch.Tensor
    log_evidence_se: torch.Tensor
    ess: torch.Tensor
    normalised_log_weights: torch.Tensor


def summarise_log_weights(log_weights: torch.Tensor) -> WeightSummary:
    """Evidence, standard error and Kish ESS of ``log_weights [..., N]`` (last dim: draws).

    ``-inf`` weights (draws outside the target's support) count as zero weights.
    """
    n = log_weights.shape[-1]
    if n < 2:
        raise BayesdlError("importance sampling needs at least 2 draws per run")
    if torch.isnan(log_weights).any():
        raise BayesdlError("an importance log weight is NaN")
    total = torch.logsumexp(log_weights, dim=-1, keepdim=True)
    if not torch.isfinite(total).all():
        raise BayesdlError("every importance weight of a run is zero (or one is infinite); the "
                           "proposal misses the target")
    normalised = log_weights - total
    ess = torch.exp(-torch.logsumexp(2 * normalised, dim=-1))
    se = torch.sqrt(torch.clamp(n / ess - 1, min=0.0) / (n - 1))
    return WeightSummary(total.squeeze(-1) - math.log(n), se, ess, normalised)


def pareto_k(log_weights: torch.Tensor) -> np.ndarray:
    """PSIS Pareto shape of the weights' upper tail per run (``[..., N]`` -> ``[...]``)."""
    import arviz as az  # at use: importing it costs seconds that listing methods need not pay

    flat = log_weights.detach().cpu().reshape(-1, log_weights.shape[-1]).numpy()
    ks = []
    for row in flat:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, k = az.psislw(row - row.max())
        ks.append(float(k))
    return np.asarray(ks).reshape(log_weights.shape[:-1])


class ImportanceResult(NamedTuple):
    """``draws [N, *event]`` from the proposal, their ``log_weights [N]`` and summary."""

    draws: torch.Tensor
    log_weights: torch.Tensor
    summary: WeightSummary

    def expectation(self, values: torch.Tensor) -> torch.Tensor:
        """Self-normalised estimate of ``E_p[f]`` from ``values = f(draws)`` ``[N, ...]``."""
        w = self.summary.normalised_log_weights.exp()
        return torch.tensordot(w, values, dims=([0], [0]))


def importance_sample(log_target, proposal: torch.distributions.Distribution, num_samples: int,
                      seed: int = 0) -> ImportanceResult:
    """Importance sampling of the unnormalised ``log_target(x [N, *event]) -> [N]`` from
    ``proposal``, ``num_samples`` draws under a private generator seeded ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        draws = proposal.sample((num_samples,))
    log_weights = log_target(draws) - proposal.log_prob(draws)
    log_weights = torch.where(torch.isnan(log_weights), -math.inf, log_weights)
    return ImportanceResult(draws, log_weights, summarise_log_weights(log_weights))


def resample_indices(rng: ChainRNG, step: int, normalised_log_weights: torch.Tensor,
                     num: int | None = None) -> torch.Tensor:
    """Multinomial resampling per run: ``[C, N]`` weights -> ``[C, num]`` indices, in random order."""
    cdf = torch.cumsum(normalised_log_weights.exp(), dim=-1)
    cdf = cdf / cdf[..., -1:]
    u = rng.uniform(step, RESAMPLE_STREAM, (num or normalised_log_weights.shape[-1],),
                    dtype=cdf.dtype)
    return torch.searchsorted(cdf, u).clamp(max=cdf.shape[-1] - 1)


@dataclass
class ISOptions:
    """Options of ``--method is``.

    ``proposal``: ``prior`` (weights are the likelihood) or ``guide`` (a multivariate
    normal fitted by SVI on unconstrained space, its scale multiplied by
    ``proposal_scale``; ``svi_steps`` and ``lr`` set the fit). ``resample``: the
    posterior holds ``N`` draws resampled by weight (equally weighted, so summaries and
    plots apply as they are); the weighted draws are kept in ``weighted_posterior``.
    """

    proposal: str = "prior"
    proposal_scale: float = 1.0
    svi_steps: int = 3000
    lr: float = 0.01
    resample: bool = True


def _guide_proposal(spec: ModelSpec, potential: PriorLikelihoodPotential, options: ISOptions,
                    seed: int, progress: bool) -> torch.distributions.MultivariateNormal:
    from bayesdl.inference.svi import SVIOptions, fit_svi

    fit = fit_svi(ModelSpec(spec.model, spec.data, None, spec.name),
                  SVIOptions(guide="mvn", lr=options.lr, max_steps=options.svi_steps),
                  seed=seed, progress=progress)
    guide = fit.guide
    shapes = {name: tuple(shape) for name, shape in guide._unconstrained_shapes.items()}
    if list(shapes) != potential.latent_sites or any(
            math.prod(shapes[n]) != size for n, size in zip(potential.latent_sites, potential.sizes,
                                                             strict=True)):
        raise BayesdlError("the SVI guide's latent layout does not match the model's; use "
                           "--opt proposal=prior")
    with torch.no_grad():
        posterior = guide.get_posterior()
        loc, tril = posterior.loc.detach(), posterior.scale_tril.detach()
    return torch.distributions.MultivariateNormal(loc, scale_tril=tril * options.proposal_scale)


def run_importance(spec: ModelSpec, options: ISOptions, settings: RunSettings) -> Samples:
    """``--method is``: ``settings.chains`` independent runs of ``settings.draws`` draws."""
    started = time.perf_counter()
    if options.proposal not in ("prior", "guide"):
        raise BayesdlError(f"unknown proposal {options.proposal!r}; choose prior or guide")
    if not options.proposal_scale > 0:
        raise BayesdlError(f"proposal_scale must be > 0, got {options.proposal_scale}")
    runs, n = settings.chains, settings.draws
    if n < 2:
        raise BayesdlError("--method is needs --draws >= 2")
    potential = PriorLikelihoodPotential(spec.model, spec.data)
    rng = ChainRNG(settings.chain_seeds(), device=settings.device)
    if options.proposal == "prior":
        flat = torch.stack([potential.prior_draws(n, seed) for seed in settings.chain_seeds()])
        flat = flat.to(settings.dtype)
        _, log_lik = potential.log_prior_and_likelihood(flat.reshape(runs * n, -1))
        log_weights = log_lik.reshape(runs, n)
    else:
        q = _guide_proposal(spec, potential, options, settings.seed, settings.progress)
        eps = rng.normal(0, PROPOSAL_STREAM, (n, potential.dim), dtype=settings.dtype)
        flat = q.loc + eps @ q.scale_tril.T
        log_prior, log_lik = potential.log_prior_and_likelihood(flat.reshape(runs * n, -1))
        log_weights = (log_prior + log_lik).reshape(runs, n) - q.log_prob(flat)
    log_weights = torch.where(torch.isnan(log_weights), -math.inf, log_weights)
    per_run = summarise_log_weights(log_weights)
    pooled = summarise_log_weights(log_weights.reshape(-1))
    ks = pareto_k(log_weights)
    if (ks > PARETO_K_LIMIT).any():
        warnings.warn(f"importance weights have Pareto k up to {ks.max():.2f} (> {PARETO_K_LIMIT}): "
                      "the estimates are unreliable; use --opt proposal=guide or more draws",
                      stacklevel=2)
    weighted = {name: value for name, value in potential.constrain(flat).items()}
    info = {
        "method": "is", "seed": settings.seed, "chain_seeds": settings.chain_seeds(),
        "proposal": options.proposal,
        "log_evidence": float(pooled.log_evidence), "log_evidence_se": float(pooled.log_evidence_se),
        "ess": float(pooled.ess),
        "log_evidence_per_chain": per_run.log_evidence.tolist(),
        "log_evidence_se_per_chain": per_run.log_evidence_se.tolist(),
        "ess_per_chain": per_run.ess.tolist(),
        "pareto_k_per_chain": ks.tolist(),
        "weighted_sample": {**weighted, "log_weight": per_run.normalised_log_weights},
    }
    if options.resample:
        index = resample_indices(rng, 0, per_run.normalised_log_weights)
        run_index = torch.arange(runs, device=index.device)[:, None]
        draws = {name: v[run_index, index] for name, v in weighted.items()}
        stats: dict[str, torch.Tensor] = {}
    else:
        draws = weighted
        stats = {"log_weight": per_run.normalised_log_weights}
    info["sampling_time_s"] = time.perf_counter() - started
    return Samples(draws, stats, info)
