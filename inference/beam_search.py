"""Stochastic beam search (Kool, van Hoof & Welling 2019): sequences without replacement.

Beam search over Gumbel-perturbed log-probabilities: a prefix's key is a Gumbel with
location its log-probability, and its children's keys are Gumbels with their own
locations conditioned on their maximum being the parent's key (top-down sampling of
Gumbels). Keeping the ``k`` largest keys at each step then yields exactly the ``k``
largest perturbed log-probabilities among all complete sequences, i.e. ``k`` draws
without replacement from the sequence model, with ``beam_size`` model calls per step.

The search runs one more beam than asked so that the (k+1)-th key ``kappa`` is known;
``exp(log p(y) - log P(G_y > kappa))`` are then the weights of the unbiased estimator
``sum_y w_y f(y)`` of ``E_p[f(Y)]`` (and ``w / sum(w)`` of the normalised, consistent
one). Many independent searches run batched. Written by hand: neither torch nor Pyro
has stochastic beam search.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from bayesdl.errors import BayesdlError
from bayesdl.inference.gumbel import gumbel_noise, log_inclusion_probability, truncated_gumbel

NextLogProbs = Callable[[torch.Tensor], torch.Tensor]


class BeamSearchResult(NamedTuple):
    """``k`` sequences per search, best key first (``S`` searches, length ``L``).

    ``sequences [S, k, L]`` are padded after their end with ``eos`` (or hold exactly
    ``L`` tokens when there is no ``eos``); ``lengths [S, k]`` count tokens including
    the ``eos``; ``log_probs [S, k]`` are the model's log-probabilities, ``keys [S, k]``
    the perturbed ones, ``threshold [S]`` the (k+1)-th key (-inf when fewer than
    ``k + 1`` sequences exist), ``log_weights [S, k]`` ``log p - log P(key > threshold)``.
    Slots beyond the number of existing sequences have key and weight -inf.
    """

    sequences: torch.Tensor
    lengths: torch.Tensor
    log_probs: torch.Tensor
    keys: torch.Tensor
    threshold: torch.Tensor
    log_weights: torch.Tensor

    def normalised_weights(self) -> torch.Tensor:
        """``w / sum(w)`` per search (the consistent, lower-variance estimator's weights)."""
        return torch.softmax(self.log_weights, dim=-1)

    def estimate(self, values: torch.Tensor, normalised: bool = False) -> torch.Tensor:
        """``sum_y w_y f(y)`` per search for ``values [S, k]`` = ``f`` of the sequences."""
        weights = self.normalised_weights() if normalised else self.log_weights.exp()
        return (weights * torch.where(torch.isfinite(self.log_weights), values, 0.0)).sum(-1)


def stochastic_beam_search(
    next_log_probs: NextLogProbs,
    beam_size: int,
    max_length: int,
    eos: int | None = None,
    num_searches: int = 1,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
) -> BeamSearchResult:
    """``beam_size`` sequences without replacement from a sequence model, per search.

    ``next_log_probs(prefixes)`` takes token prefixes ``[B, t]`` (int64, ``t`` from 0
    to ``max_length - 1``) and returns the normalised next-token log-probabilities
    ``[B, V]``. A sequence ends at ``eos`` or after ``max_length`` tokens.
    """
    if beam_size < 1 or max_length < 1 or num_searches < 1:
        raise BayesdlError("beam_size, max_length and num_searches must be >= 1")
    width = beam_size + 1
    searches = num_searches
    prefixes = torch.zeros((searches, 1, 0), dtype=torch.int64, device=device)
    log_p = torch.zeros((searches, 1), dtype=dtype, device=device)
    keys = gumbel_noise((searches, 1), generator, dtype, device)  # the root: Gumbel(log 1)
    done = torch.zeros((searches, 1), dtype=torch.bool, device=device)
    pad = 0 if eos is None else eos
    for t in range(max_length):
        beams = prefixes.shape[1]
        step = next_log_probs(prefixes.reshape(searches * beams, t))
        if step.dim() != 2 or step.shape[0] != searches * beams:
            raise BayesdlError(f"next_log_probs returned shape {tuple(step.shape)}; expected "
                               f"[{searches * beams}, vocabulary]")
        vocab = step.shape[1]
        if eos is not None and not 0 <= eos < vocab:
            raise BayesdlError(f"eos token {eos} is outside the vocabulary of size {vocab}")
        child_log_p = log_p.unsqueeze(-1) + step.reshape(searches, beams, vocab).to(dtype)
        noise = gumbel_noise((searches, beams, vocab), generator, dtype, device)
        child_keys = truncated_gumbel(child_log_p, keys, noise)
        child_keys = torch.where(torch.isfinite(child_log_p), child_keys, -math.inf)
        # a finished sequence is its own only child, keeping its key and probability
        carry = torch.full_like(child_keys, -math.inf)
        carry[..., pad] = keys
        child_keys = torch.where(done.unsqueeze(-1), carry, child_keys)
        child_log_p = torch.where(done.unsqueeze(-1), log_p.unsqueeze(-1).expand_as(child_log_p),
                                  child_log_p)
        keep = min(width, beams * vocab)
        keys, flat = torch.topk(child_keys.reshape(searches, beams * vocab), keep, dim=-1)
        parent, token = flat // vocab, flat % vocab
        log_p = child_log_p.reshape(searches, beams * vocab).gather(1, flat)
        prefixes = torch.cat([prefixes.gather(1, parent.unsqueeze(-1).expand(-1, -1, t)),
                              token.unsqueeze(-1)], dim=-1)
        was_done = done.gather(1, parent)
        done = was_done | (token == eos) if eos is not None else was_done
        done = done | ~torch.isfinite(keys) | (t == max_length - 1)
        if bool(done.all()):
            break
    return _result(prefixes, log_p, keys, beam_size, eos)


def _result(prefixes: torch.Tensor, log_p: torch.Tensor, keys: torch.Tensor, beam_size: int,
            eos: int | None) -> BeamSearchResult:
    searches, beams, length = prefixes.shape
    if beams > beam_size:
        threshold = keys[:, beam_size]
    else:
        threshold = torch.full((searches,), -math.inf, dtype=keys.dtype, device=keys.device)
    keys, log_p, prefixes = keys[:, :beam_size], log_p[:, :beam_size], prefixes[:, :beam_size]
    if beams < beam_size:  # fewer sequences exist than asked for: pad with empty slots
        missing = beam_size - beams
        keys = torch.cat([keys, keys.new_full((searches, missing), -math.inf)], 1)
        log_p = torch.cat([log_p, log_p.new_full((searches, missing), -math.inf)], 1)
        prefixes = torch.cat([prefixes, prefixes.new_zeros((searches, missing, length))], 1)
    valid = torch.isfinite(keys)
    if eos is None:
        lengths = torch.full(keys.shape, length, dtype=torch.int64, device=keys.device)
    else:
        is_eos = prefixes == eos
        first = torch.where(is_eos.any(-1), is_eos.int().argmax(-1) + 1, length)
        lengths = first
    lengths = torch.where(valid, lengths, 0)
    log_q = log_inclusion_probability(log_p, threshold.unsqueeze(-1))
    log_weights = torch.where(valid, log_p - log_q, -math.inf)
    return BeamSearchResult(prefixes, lengths, log_p, keys, threshold, log_weights)
