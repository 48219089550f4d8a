"""`RunSettings`: the knobs every method shares (chains, lengths, seed, device)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

_MASK64 = (1 << 64) - 1


def chain_seed(seed: int, chain: int) -> int:
    """The seed of chain ``chain`` in a run seeded ``seed``.

    Chain 0 uses ``seed`` itself, so a one-chain run with seed ``s`` reproduces chain 0
    of any run seeded ``s``, and chain ``c`` is reproduced alone by a one-chain run with
    seed ``chain_seed(s, c)``. Other chains get a SplitMix64 hash of ``(seed, chain)``
    below 2**31, so runs with nearby seeds (1, 2, 3, ...) share no chain.
    """
    if chain == 0:
        return seed
    z = (seed * 0x9E3779B97F4A7C15 + chain * 0xBF58476D1CE4E5B9 + 0x94D049BB133111EB) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & 0x7FFFFFFF


@dataclass(frozen=True)
class RunSettings:
    """How long to run, on what, and from which seed (see :func:`chain_seed`)."""

    chains: int = 4
    warmup: int = 1000
    draws: int = 1000
    seed: int = 0
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float64
    progress: bool = True
    # chains first_chain .. first_chain + chains - 1 of a larger run (a group on Ray)
    first_chain: int = 0
    # flushes/resumes a batched kernel run or SVI (bayesdl.checkpoint.Checkpoint), or None
    checkpoint: Any = field(default=None, compare=False)

    def chain_seeds(self) -> list[int]:
        """One seed per chain; chain 0's is ``seed``."""
        return [chain_seed(self.seed, c) for c in range(self.first_chain, self.first_chain + self.chains)]
