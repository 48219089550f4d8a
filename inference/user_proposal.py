"""Metropolis-Hastings with a proposal the user writes: ``Proposal(sample, log_prob)``.

A proposal works on the model's flat unconstrained positions ``[C, D]`` (the sites in
model order, each flattened; ``BatchedPotential.unravel`` splits them):

    from bayesdl.inference.user_proposal import Proposal
    from bayesdl.inference.metropolis import PROPOSAL_STREAM

    def sample(rng, step, x):              # x [C, D] -> proposals [C, D]
        return x + 0.3 + rng.normal(step, PROPOSAL_STREAM, x.shape[1:], x.dtype)

    def log_prob(to, from_):               # log q(to | from_) per chain, [C]
        return -0.5 * ((to - from_ - 0.3) ** 2).sum(-1)

    drift = Proposal(sample, log_prob)     # log_prob=None declares it symmetric

Random numbers must come from ``rng`` (a :class:`ChainRNG`) with ``step`` and any
stream but ``ACCEPT_STREAM`` (1), so chain ``c``'s draws do not depend on the other
chains. ``log_prob`` may drop constants that do not depend on ``(to, from_)``. The
Hastings correction ``log q(x | x*) - log q(x* | x)`` is added to every ratio, so an
asymmetric proposal is exact; declaring an asymmetric proposal symmetric samples the
wrong distribution (the tests show it does). Use it with ``ProposalMH(model, drift)``
inside ``pyro.infer.MCMC``, with ``ProposalKernel`` in ``run_kernel``, or from the CLI
as ``--opt proposal=path/to/file.py:drift`` under ``--method mh``. The proposal does
not adapt.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.metropolis import MHInfo, MHState, build_mh_step, evaluate_with
from bayesdl.inference.pyro_kernel import PyroKernelAdapter

SampleFn = Callable[[ChainRNG, int, torch.Tensor], torch.Tensor]
LogProbFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Proposal:
    """``sample(rng, step, x [C, D]) -> [C, D]``; ``log_prob(to, from_) -> [C]`` is
    ``log q(to | from_)``, or ``None`` for a symmetric proposal."""

    sample: SampleFn
    log_prob: LogProbFn | None = None


def _build_step(proposal: Proposal):
    def propose(rng: ChainRNG, step_index: int, state: MHState, params: Any) -> torch.Tensor:
        out = proposal.sample(rng, step_index, state.position)
        if not isinstance(out, torch.Tensor) or out.shape != state.position.shape:
            raise BayesdlError(
                f"the proposal's sample returned {getattr(out, 'shape', type(out).__name__)}, "
                f"expected a tensor shaped like the positions {tuple(state.position.shape)}"
            )
        return out

    log_q = None
    if proposal.log_prob is not None:
        def log_q(to: MHState, from_: MHState, params: Any) -> torch.Tensor:
            return proposal.log_prob(to.position, from_.position)

    return build_mh_step(propose, log_q)


class ProposalKernel:
    """Batched Metropolis-Hastings with a user ``Proposal`` (see the module docstring)."""

    def __init__(self, log_density_fn: Callable[[torch.Tensor], torch.Tensor], proposal: Proposal):
        if not isinstance(proposal, Proposal):
            raise BayesdlError(
                f"expected a bayesdl.inference.user_proposal.Proposal, got {type(proposal).__name__}"
            )
        self.evaluate = evaluate_with(log_density_fn)
        self._step = _build_step(proposal)

    def init(self, position: torch.Tensor, log_density: torch.Tensor, num_warmup: int) -> MHState:
        return MHState(position, log_density)

    def step(self, rng: ChainRNG, step_index: int, state: MHState, warmup: bool):
        return self._step(rng, step_index, state, self.evaluate, None)

    def position(self, state: MHState) -> torch.Tensor:
        return state.position

    def reevaluate(self, state: MHState) -> MHState:
        """The state with its log density recomputed at the current position."""
        return self.evaluate(state.position)

    def stats(self, state: MHState, info: MHInfo) -> dict[str, torch.Tensor]:
        return {"acceptance_rate": info.acceptance_rate, "lp": state.log_density}


def load_proposal(source: str) -> Proposal:
    """The ``Proposal`` named by ``path/to/file.py:name`` (the CLI's ``--opt proposal=``)."""
    path_text, _, name = source.rpartition(":")
    path = Path(path_text)
    if not path_text or not name or path.suffix != ".py":
        raise BayesdlError(f"proposal {source!r}: expected rw, independence or path/to/file.py:name")
    if not path.is_file():
        raise BayesdlError(f"proposal file {path_text!r} does not exist")
    spec = importlib.util.spec_from_file_location(f"bayesdl_user_proposal_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # noqa: BLE001 - any import failure is reported in one line
        raise BayesdlError(
            f"proposal file {path_text!r} raised {type(error).__name__} on import: {error}"
        ) from None
    proposal = getattr(module, name, None)
    if not isinstance(proposal, Proposal):
        raise BayesdlError(
            f"{name!r} in {path_text!r} is not a bayesdl.inference.user_proposal.Proposal"
        )
    return proposal


class ProposalMH(PyroKernelAdapter):
    """Metropolis-Hastings with a user ``Proposal`` as a ``pyro.infer.MCMC`` kernel."""

    def __init__(self, model: Callable[..., Any], proposal: Proposal, init_radius: float = 2.0):
        super().__init__(model, lambda potential: ProposalKernel(potential.log_density, proposal),
                         init_radius)
