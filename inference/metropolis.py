"""Metropolis-Hastings built from a proposal, batched over chains.

``build_mh_step(propose, proposal_log_density)`` returns a pure step function: the
proposal generator moves every chain at once, the Hastings correction is added when
the proposal is asymmetric, and accept/reject is a ``torch.where`` per chain (no
branch, no host sync). Random-walk (:mod:`.random_walk`), independence
(:mod:`.independence`), user-given (:mod:`.user_proposal`) and Langevin (:mod:`.mala`)
proposals are instances.

A state carries the gradient of the log density when the proposal needs it (MALA),
so the gradient at the accepted point is never computed twice.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from bayesdl.inference.counter_rng import ChainRNG

ACCEPT_STREAM = 1
PROPOSAL_STREAM = 2


class MHState(NamedTuple):
    """Where each chain is: ``position [C, D]``, its ``log_density [C]`` and, for
    gradient-based proposals, ``grad [C, D]`` of the log density there."""

    position: torch.Tensor
    log_density: torch.Tensor
    grad: torch.Tensor | None = None


class MHInfo(NamedTuple):
    """Per-chain facts about one step."""

    acceptance_rate: torch.Tensor  # min(1, Hastings ratio), [C]
    accepted: torch.Tensor  # bool, [C]


LogDensityFn = Callable[[torch.Tensor], torch.Tensor]
EvaluateFn = Callable[[torch.Tensor], MHState]
ProposeFn = Callable[[ChainRNG, int, MHState, Any], torch.Tensor]
ProposalLogDensityFn = Callable[[MHState, MHState, Any], torch.Tensor]


def evaluate_with(log_density_fn: LogDensityFn) -> EvaluateFn:
    """``position -> MHState`` for a proposal that needs no gradient."""
    return lambda position: MHState(position, log_density_fn(position))


def build_mh_step(
    propose: ProposeFn, proposal_log_density: ProposalLogDensityFn | None = None
) -> Callable[[ChainRNG, int, MHState, EvaluateFn, Any], tuple[MHState, MHInfo]]:
    """A Metropolis-Hastings step for the given proposal.

    ``propose(rng, step, state, params)`` returns proposed positions ``[C, D]``;
    ``proposal_log_density(to, from_, params)`` is ``log q(to.position | from_)`` per
    chain (both are ``MHState``), and ``None`` means the proposal is symmetric. The
    step takes ``evaluate(position) -> MHState`` (see :func:`evaluate_with`).
    """

    def step(
        rng: ChainRNG, step_index: int, state: MHState, evaluate: EvaluateFn, params: Any
    ) -> tuple[MHState, MHInfo]:
        proposal = evaluate(propose(rng, step_index, state, params))
        log_ratio = proposal.log_density - state.log_density
        if proposal_log_density is not None:
            log_ratio = (
                log_ratio
                + proposal_log_density(state, proposal, params)
                - proposal_log_density(proposal, state, params)
            )
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf, posinf=math.inf)
        log_uniform = torch.log(
            rng.uniform(step_index, ACCEPT_STREAM, (), dtype=state.log_density.dtype)
        )
        accepted = log_uniform < log_ratio
        new_state = MHState(
            torch.where(accepted[:, None], proposal.position, state.position),
            torch.where(accepted, proposal.log_density, state.log_density),
            None if state.grad is None
            else torch.where(accepted[:, None], proposal.grad, state.grad),
        )
        acceptance_rate = torch.exp(torch.clamp(log_ratio, max=0.0))
        return new_state, MHInfo(acceptance_rate, accepted)

    return step
