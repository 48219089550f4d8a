"""`RunSettings`: the knobs every method shares (chains, lengths, seed, device)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class RunSettings:
    """How long to run, on what, and from which seed.

    Chain ``c`` of a run is seeded with ``seed + c``, so chain 0 of a 4-chain run
    equals a 1-chain run with the same seed, and chain ``c`` a 1-chain run with
    seed ``seed + c``.
    """

    chains: int = 4
    warmup: int = 1000
    draws: int = 1000
    seed: int = 0
    device: torch.device = torch.device("cpu")
    dtype: torch.dtype = torch.float64
    progress: bool = True

    def chain_seeds(self) -> list[int]:
        return [self.seed + c for c in range(self.chains)]
