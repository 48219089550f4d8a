"""Metropolis-Hastings built from a proposal, batched over chains.

``build_mh_step(propose, proposal_log_density)`` returns a pure step function: the
proposal generator moves every chain at once, the Hastings correction is added when
the proposal is asymmetric, and accept/reject is a ``torch.where`` per chain (no
branch, no host sync). Random-walk, independence and MALA proposals are instances.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch

from bayesdl.inference.counter_rng import ChainRNG

ACCEPT_STREAM = 1
PROPOSAL_STREAM = 2

LogDensityFn = Callable[[torch.Tensor], torch.Tensor]
ProposeFn = Callable[[ChainRNG, int, torch.Tensor, Any], torch.Tensor]
ProposalLogDensityFn = Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]


class MHState(NamedTuple):
    """Where each chain is: ``position [C, D]`` and its ``log_density [C]``."""

    position: torch.Tensor
    log_density: torch.Tensor


class MHInfo(NamedTuple):
    """Per-chain facts about one step."""

    acceptance_rate: torch.Tensor  # min(1, Hastings ratio), [C]
    accepted: torch.Tensor  # bool, [C]


def build_mh_step(
    propose: ProposeFn, proposal_log_density: ProposalLogDensityFn | None = None
) -> Callable[[ChainRNG, int, MHState, LogDensityFn, Any], tuple[MHState, MHInfo]]:
    """A Metropolis-Hastings step for the given proposal.

    ``propose(rng, step, position, params)`` returns proposed positions ``[C, D]``;
    ``proposal_log_density(to, from_, params)`` is ``log q(to | from_)`` per chain, and
    ``None`` means the proposal is symmetric.
    """

    def step(
        rng: ChainRNG, step_index: int, state: MHState, log_density_fn: LogDensityFn, params: Any
    ) -> tuple[MHState, MHInfo]:
        proposal = propose(rng, step_index, state.position, params)
        proposal_log_density_value = log_density_fn(proposal)
        log_ratio = proposal_log_density_value - state.log_density
        if proposal_log_density is not None:
            log_ratio = (
                log_ratio
                + proposal_log_density(state.position, proposal, params)
                - proposal_log_density(proposal, state.position, params)
            )
        log_ratio = torch.nan_to_num(log_ratio, nan=-math.inf, posinf=math.inf)
        log_uniform = torch.log(
            rng.uniform(step_index, ACCEPT_STREAM, (), dtype=state.log_density.dtype)
        )
        accepted = log_uniform < log_ratio
        new_state = MHState(
            torch.where(accepted[:, None], proposal, state.position),
            torch.where(accepted, proposal_log_density_value, state.log_density),
        )
        acceptance_rate = torch.exp(torch.clamp(log_ratio, max=0.0))
        return new_state, MHInfo(acceptance_rate, accepted)

    return step
