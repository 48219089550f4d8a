"""Tempered sequential Monte Carlo for static posteriors, many runs batched.

Particles move from the prior to the posterior through ``prior * likelihood^beta``,
``beta`` from 0 to 1. Each stage picks the next temperature by bisection so that the
incremental weights ``likelihood^delta`` keep a fraction ``target_ess`` of the
particles' effective sample size (Jasra et al. 2011; Chopin & Papaspiliopoulos 2020,
ch. 17), multiplies the running evidence estimate by their mean, resamples, and moves
every particle with random-walk Metropolis steps (:func:`build_mh_step`) whose
proposal covariance is the particle population's, scaled per run towards acceptance
0.234. ``C`` independent runs of ``N`` particles are one ``[C * N, D]`` tensor; each
run keeps its own temperatures, and the random numbers are keyed per run and particle
(:class:`ChainRNG`), so run ``c`` gives the same answer whatever ``C`` is. The
evidence of a run is unbiased; over runs, ``log mean Z_c`` and its delta-method
standard error are reported. Written by hand: Pyro's SMC is a particle filter, not a
tempering sampler, and has no batching over runs.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from tqdm.auto import tqdm

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG, mix64
from bayesdl.inference.importance import resample_indices, summarise_log_weights
from bayesdl.inference.metropolis import PROPOSAL_STREAM, MHState, build_mh_step
from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.prior_likelihood import PriorLikelihoodPotential
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings

SplitDensity = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
_PARTICLE_KEY = -7046029254386353131  # 0x9E3779B97F4A7C15 as int64: spreads particle keys


def particle_rng(run_rng: ChainRNG, num_particles: int) -> ChainRNG:
    """A generator per (run, particle), derived from the runs' keys: ``[C * N]`` rows."""
    out = ChainRNG.__new__(ChainRNG)
    index = torch.arange(1, num_particles + 1, dtype=torch.int64, device=run_rng.device)
    out.keys = mix64(run_rng.keys[:, None] ^ (index * _PARTICLE_KEY)[None, :]).reshape(-1)
    out.device = run_rng.device
    return out


def _propose(rng: ChainRNG, step_index: int, state: MHState, params) -> torch.Tensor:
    scale, chol, runs = params  # scale [C], chol [C, D, D]
    position = state.position
    noise = rng.normal(step_index, PROPOSAL_STREAM, position.shape[1:], dtype=position.dtype)
    noise = noise.reshape(runs, -1, position.shape[1])
    move = scale[:, None, None] * (noise @ chol.transpose(-1, -2))
    return position + move.reshape(position.shape)


_mh_step = build_mh_step(_propose)


class _TemperedTarget:
    """``position -> MHState`` of ``log prior + beta * log lik``; keeps the two terms of
    the last evaluation so that accepted moves need no second evaluation."""

    def __init__(self, split: SplitDensity, beta: torch.Tensor):
        self.split, self.beta = split, beta
        self.last_prior = self.last_likelihood = None

    def tempered(self, log_lik: torch.Tensor) -> torch.Tensor:
        return torch.where(self.beta > 0, self.beta * log_lik, 0.0)

    def __call__(self, position: torch.Tensor) -> MHState:
        self.last_prior, self.last_likelihood = self.split(position)
        return MHState(position, self.last_prior + self.tempered(self.last_likelihood))


class SMCResult(NamedTuple):
    """Final particles ``[C, N, D]`` (equally weighted), their ``(log prior, log lik)``,
    per-run ``log_evidence [C]``, number of stages ``[C]``, the temperatures of every
    stage ``[S, C]`` (1 after a run finished) and the mean acceptance rate per stage."""

    particles: torch.Tensor
    log_prior: torch.Tensor
    log_likelihood: torch.Tensor
    log_evidence: torch.Tensor
    num_stages: torch.Tensor
    temperatures: torch.Tensor
    acceptance_rate: torch.Tensor


def _ess_fraction(log_weights: torch.Tensor) -> torch.Tensor:
    """Kish ESS / N of ``[C, N]`` log weights."""
    n = log_weights.shape[-1]
    return torch.exp(2 * torch.logsumexp(log_weights, -1) - torch.logsumexp(2 * log_weights, -1)) / n


def _scaled(delta: torch.Tensor, log_lik: torch.Tensor) -> torch.Tensor:
    """``delta * log_lik`` with ``0 * -inf = 0``."""
    return torch.where(delta[:, None] > 0, delta[:, None] * log_lik, 0.0)


def next_temperature(beta: torch.Tensor, log_lik: torch.Tensor, target_ess: float,
                     iterations: int = 60) -> torch.Tensor:
    """Per run, the increment ``delta <= 1 - beta`` at which the ESS fraction of
    ``exp(delta * log_lik)`` is ``target_ess`` (the whole rest when it stays above)."""
    rest = 1 - beta
    low, high = torch.zeros_like(beta), rest.clone()
    whole = _ess_fraction(_scaled(rest, log_lik)) >= target_ess
    for _ in range(iterations):
        mid = 0.5 * (low + high)
        ok = _ess_fraction(_scaled(mid, log_lik)) >= target_ess
        low, high = torch.where(ok, mid, low), torch.where(ok, high, mid)
    return torch.where(whole, rest, torch.maximum(low, torch.full_like(low, 1e-12)))


def tempered_smc(
    log_prior_and_likelihood: SplitDensity,
    initial: torch.Tensor,
    run_rng: ChainRNG,
    target_ess: float = 0.5,
    num_mcmc_steps: int = 10,
    max_stages: int = 1000,
    progress: Callable[[torch.Tensor], None] | None = None,
) -> SMCResult:
    """Tempered SMC from prior draws ``initial [C, N, D]`` (``C`` runs of ``N`` particles).

    ``log_prior_and_likelihood(x [M, D])`` returns ``(log prior [M], log likelihood [M])``
    (the prior term on the same space as ``x``, Jacobian included). ``run_rng`` has one
    key per run.
    """
    runs, n, dim = initial.shape
    if run_rng.num_chains != runs:
        raise BayesdlError(f"run_rng has {run_rng.num_chains} keys for {runs} runs")
    if not 0 < target_ess < 1:
        raise BayesdlError(f"target_ess must be in (0, 1), got {target_ess}")
    if n < 2 or num_mcmc_steps < 0:
        raise BayesdlError("tempered SMC needs >= 2 particles and num_mcmc_steps >= 0")
    rng = particle_rng(run_rng, n)
    x = initial.reshape(runs * n, dim)
    log_prior, log_lik = log_prior_and_likelihood(x)
    if not torch.isfinite(log_prior).all():
        raise BayesdlError("the prior log density is not finite at a prior draw")
    log_lik = torch.where(torch.isnan(log_lik), -math.inf, log_lik)
    beta = torch.zeros(runs, dtype=x.dtype, device=x.device)
    log_z = torch.zeros_like(beta)
    stages = torch.zeros(runs, dtype=torch.int64, device=x.device)
    scale = torch.full_like(beta, 2.38 / math.sqrt(dim))
    eye = torch.eye(dim, dtype=x.dtype, device=x.device)
    temperatures, rates = [], []
    stage = 0
    while bool((beta < 1).any()):
        if stage == max_stages:
            raise BayesdlError(f"tempered SMC did not reach temperature 1 in {max_stages} stages "
                               f"(reached {float(beta.min()):.3g}); raise --opt max_stages")
        active = beta < 1
        ll = log_lik.reshape(runs, n)
        delta = torch.where(active, next_temperature(beta, ll, target_ess), 0.0)
        log_w = _scaled(delta, ll)
        log_z = log_z + torch.where(active, torch.logsumexp(log_w, -1) - math.log(n), 0.0)
        if not torch.isfinite(log_z).all():
            raise BayesdlError("every particle of a run has likelihood zero; the prior misses "
                               "the data")
        beta = torch.where(1 - (beta + delta) < 1e-10, 1.0, beta + delta)
        summary = summarise_log_weights(log_w)
        index = resample_indices(run_rng, stage, summary.normalised_log_weights)
        own = torch.arange(n, device=x.device).expand(runs, n)
        index = torch.where(active[:, None], index, own)
        flat_index = (index + n * torch.arange(runs, device=x.device)[:, None]).reshape(-1)
        x, log_prior, log_lik = x[flat_index], log_prior[flat_index], log_lik[flat_index]
        # the moves' proposal: the population covariance of each run
        pop = x.reshape(runs, n, dim)
        centred = pop - pop.mean(1, keepdim=True)
        cov = centred.transpose(1, 2) @ centred / (n - 1)
        jitter = 1e-10 * (torch.diagonal(cov, dim1=-2, dim2=-1).mean(-1) + 1e-12)
        chol = torch.linalg.cholesky(cov + jitter[:, None, None] * eye)
        moving = active.repeat_interleave(n)
        accepted_total = torch.zeros_like(beta)
        target = _TemperedTarget(log_prior_and_likelihood, beta.repeat_interleave(n))
        for k in range(num_mcmc_steps):
            state = MHState(x, log_prior + target.tempered(log_lik))
            moved, info = _mh_step(rng, stage * max(num_mcmc_steps, 1) + k, state, target,
                                   (scale, chol, runs))
            take = info.accepted & moving
            x = torch.where(take[:, None], moved.position, x)
            log_prior = torch.where(take, target.last_prior, log_prior)
            log_lik = torch.where(take, target.last_likelihood, log_lik)
            accepted_total = accepted_total + info.acceptance_rate.reshape(runs, n).mean(1)
        if num_mcmc_steps:
            rate = accepted_total / num_mcmc_steps
            scale = torch.where(active, scale * torch.exp(rate - 0.234), scale)
            rates.append(torch.where(active, rate, math.nan))
        stages = stages + active.long()
        temperatures.append(beta.clone())
        if progress is not None:
            progress(beta)
        stage += 1
    return SMCResult(x.reshape(runs, n, dim), log_prior.reshape(runs, n), log_lik.reshape(runs, n),
                     log_z, stages, torch.stack(temperatures) if temperatures else beta[None],
                     torch.stack(rates) if rates else beta.new_zeros((0, runs)))



@dataclass
class SMCOptions:
    """Options of ``--method smc``: ``--draws N`` particles per run, ``--chains C`` runs.

    ``target_ess``: the fraction of the ESS kept by each temperature step (smaller:
    fewer, bigger steps); ``num_mcmc_steps``: Metropolis moves per stage;
    ``max_stages``: give up after this many stages. ``--warmup`` is not used.
    """

    target_ess: float = 0.5
    num_mcmc_steps: int = 10
    max_stages: int = 1000


def run_tempered_smc(spec: ModelSpec, options: SMCOptions, settings: RunSettings) -> Samples:
    """``--method smc``: tempered SMC from the prior, ``settings.chains`` batched runs."""
    started = time.perf_counter()
    runs, n = settings.chains, settings.draws
    if n < 2:
        raise BayesdlError("--method smc needs --draws >= 2 (the particles of a run)")
    potential = PriorLikelihoodPotential(spec.model, spec.data)
    run_rng = ChainRNG(settings.chain_seeds(), device=settings.device)
    # prior draws run by run (Pyro's generator), so run c's start does not depend on C
    initial = torch.stack([potential.prior_draws(n, seed) for seed in settings.chain_seeds()])
    bar = tqdm(total=1.0, desc=f"smc ({runs} runs x {n} particles)", disable=not settings.progress,
               leave=False, dynamic_ncols=True, mininterval=0.5,
               bar_format="{l_bar}{bar}| beta {n:.3f}")

    def progress(beta: torch.Tensor) -> None:
        bar.update(float(beta.min()) - bar.n)

    with bar, torch.no_grad():
        result = tempered_smc(potential.log_prior_and_likelihood, initial.to(settings.dtype),
                              run_rng, options.target_ess, options.num_mcmc_steps,
                              options.max_stages, progress)
    pooled = summarise_log_weights(result.log_evidence) if runs > 1 else None
    draws = potential.constrain(result.particles)
    info = {
        "method": "smc", "seed": settings.seed, "chain_seeds": settings.chain_seeds(),
        "log_evidence": float(pooled.log_evidence) if pooled else float(result.log_evidence[0]),
        "log_evidence_se": float(pooled.log_evidence_se) if pooled else math.nan,
        "log_evidence_per_chain": result.log_evidence.tolist(),
        "num_stages_per_chain": result.num_stages.tolist(),
        "sampling_time_s": time.perf_counter() - started,
    }
    stats = {"lp": result.log_prior + result.log_likelihood}
    return Samples(draws, stats, info)
