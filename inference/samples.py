"""`Samples`: what every inference method returns (the contract of DESIGN.md).

Latent draws are constrained-space tensors shaped ``[chain, draw, *event]``; per-draw
sampler statistics use ArviZ's names and are shaped ``[chain, draw]``; ``info`` is a
small dict about the run (method, seed, timings, options). Tensors may live on any
device: the converter is the only place that moves them to the CPU.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class Samples:
    """Posterior draws plus per-draw statistics and run information."""

    draws: dict[str, torch.Tensor]
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def num_chains(self) -> int:
        return next(iter(self.draws.values())).shape[0]

    @property
    def num_draws(self) -> int:
        return next(iter(self.draws.values())).shape[1]

    def chain(self, index: int) -> Samples:
        """The draws and statistics of one chain, keeping a chain dimension of one."""
        pick = slice(index, index + 1)
        return Samples(
            {k: v[pick] for k, v in self.draws.items()},
            {k: v[pick] for k, v in self.stats.items()},
            dict(self.info),
        )
