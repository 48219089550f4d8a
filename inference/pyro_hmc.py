"""`nuts` and `hmc` through Pyro's own kernels, one chain at a time.

Chain ``c`` runs with Pyro's global RNG seeded ``chain_seed(seed, c)``, so a chain
does not depend on the others. Pyro's kernels keep their per-step facts in private fields;
the small subclasses below record them (divergence, step size, acceptance, energy,
leapfrog steps) under ArviZ's names. ``--opt backend=pyro`` selects them; our batched
kernels (:mod:`~bayesdl.inference.nuts`) are the default.
"""

from __future__ import annotations

import functools
import time

import pyro
import torch
from pyro.infer import HMC, MCMC, NUTS
from tqdm.auto import tqdm

from bayesdl.inference.model_spec import ModelSpec
from bayesdl.inference.samples import Samples
from bayesdl.inference.settings import RunSettings


class _StepRecorder:
    """Mix-in that counts potential evaluations and keeps the starting energy."""

    def setup(self, warmup_steps, *args, **kwargs):
        self.gradient_evaluations = 0
        self.start_energy = None
        super().setup(warmup_steps, *args, **kwargs)
        self.start_energy = None
        inner = self.potential_fn

        def counted(params):
            self.gradient_evaluations += 1
            return inner(params)

        self.potential_fn = counted

    def _kinetic_energy(self, r_unscaled):
        energy = super()._kinetic_energy(r_unscaled)
        if self.start_energy is None:  # the first call of a transition: fresh momentum
            self.start_energy = energy + self._fetch_from_cache()[1]
        return energy


class _RecordingNUTS(_StepRecorder, NUTS):
    pass


class _RecordingHMC(_StepRecorder, HMC):
    pass


def _make_kernel(model, name: str, options):
    common = dict(
        jit_compile=options.jit,
        ignore_jit_warnings=True,
        target_accept_prob=options.target_accept,
        full_mass=options.dense_mass,
        step_size=options.init_step_size,
    )
    if name == "nuts":
        return _RecordingNUTS(model, max_tree_depth=options.max_tree_depth, **common)
    steps = options.num_steps or None
    return _RecordingHMC(model, num_steps=steps,
                         trajectory_length=None if steps else options.trajectory_length, **common)


def run_pyro_hmc(spec: ModelSpec, options, settings: RunSettings, name: str) -> Samples:
    """Run Pyro's NUTS or HMC chain by chain and collect draws and per-draw stats."""
    started = time.perf_counter()
    total = settings.chains * (settings.warmup + settings.draws)
    bar = tqdm(total=total, desc=name, disable=not settings.progress, leave=False,
               dynamic_ncols=True, mininterval=0.5)
    chain_draws: list[dict[str, torch.Tensor]] = []
    chain_stats: list[dict[str, list[float]]] = []
    with bar:
        for chain, seed in enumerate(settings.chain_seeds()):
            pyro.set_rng_seed(seed)
            bar.set_description(f"{name} chain {chain + 1}/{settings.chains}")
            # the data is bound here: a model argument named like one of MCMC.run's own
            # (``kernel``) must not reach MCMC.run
            kernel = _make_kernel(functools.partial(spec.model, **spec.data), name, options)
            stats: dict[str, list[float]] = {k: [] for k in
                                             ("diverging", "step_size", "acceptance_rate",
                                              "lp", "energy", "n_steps")}
            progress = {"divergences": 0, "mean_accept": 0.0}

            def hook(kernel, params, stage, i, stats=stats, progress=progress):
                bar.update(1)
                if stage.startswith("Sample"):
                    stats["diverging"].append(float(len(kernel._divergences) > progress["divergences"]))
                    progress["divergences"] = len(kernel._divergences)
                    mean_accept = kernel._mean_accept_prob
                    accept = progress["mean_accept"] + (i + 1) * (mean_accept - progress["mean_accept"])
                    progress["mean_accept"] = mean_accept
                    stats["acceptance_rate"].append(min(max(accept, 0.0), 1.0))
                    stats["step_size"].append(float(kernel.step_size))
                    stats["lp"].append(-float(kernel._fetch_from_cache()[1]))
                    stats["energy"].append(float(kernel.start_energy))
                    stats["n_steps"].append(float(kernel.gradient_evaluations))
                kernel.gradient_evaluations = 0
                kernel.start_energy = None

            mcmc = MCMC(kernel, num_samples=settings.draws, warmup_steps=settings.warmup,
                        num_chains=1, hook_fn=hook, disable_progbar=True)
            mcmc.run()
            chain_draws.append(mcmc.get_samples(group_by_chain=True))
            chain_stats.append(stats)
    draws = {k: torch.cat([d[k] for d in chain_draws], dim=0) for k in chain_draws[0]}
    stats = {
        k: torch.tensor([s[k] for s in chain_stats], dtype=torch.float64)
        for k in chain_stats[0]
    }
    stats["diverging"] = stats["diverging"].bool()
    if name == "nuts":
        stats["tree_depth"] = torch.floor(torch.log2(stats["n_steps"].clamp(min=1))) + 1
    return Samples(draws, stats, {"method": name, "seed": settings.seed,
                                  "chain_seeds": settings.chain_seeds(),
                                  "sampling_time_s": time.perf_counter() - started})
