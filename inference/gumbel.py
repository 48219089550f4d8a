"""Gumbel tricks: exact categorical draws, the Concrete relaxation, draws without replacement.

- Gumbel-max: ``argmax(logits + G)`` with ``G`` i.i.d. standard Gumbel is a draw of
  ``Categorical(softmax(logits))``.
- Gumbel-softmax / Concrete (Jang, Gu & Poole 2017; Maddison, Mnih & Teh 2017):
  ``softmax((logits + G) / tau)``, a differentiable relaxation; ``hard=True`` gives the
  one-hot argmax in the forward pass and the relaxed gradient (straight-through).
- Gumbel-top-k (Vieira 2014; Kool, van Hoof & Welling 2019): the indices of the ``k``
  largest ``logits + G`` are ``k`` ordered draws without replacement.

Written by hand although torch has ``F.gumbel_softmax`` and ``RelaxedOneHotCategorical``:
they draw their noise from the global generator, while these take the Gumbel noise
as an argument (explicit seeding, fixed-noise gradient checks, stochastic beam search).
"""

from __future__ import annotations

import torch

from bayesdl.errors import BayesdlError


def gumbel_noise(shape: tuple[int, ...], generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float64, device: torch.device | str = "cpu") -> torch.Tensor:
    """Standard Gumbel draws ``-log(-log u)``, ``u ~ U(0, 1)`` open."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device=device)
    u = u.clamp(min=torch.finfo(dtype).tiny, max=1 - torch.finfo(dtype).eps / 2)
    return -torch.log(-torch.log(u))


def _check_logits(logits: torch.Tensor) -> None:
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise BayesdlError(f"logits must have a category dimension, got shape {tuple(logits.shape)}")
    if torch.isnan(logits).any():
        raise BayesdlError("logits contain NaN")


def _noise_for(logits: torch.Tensor, gumbel: torch.Tensor | None,
               generator: torch.Generator | None) -> torch.Tensor:
    if gumbel is None:
        return gumbel_noise(tuple(logits.shape), generator, logits.dtype, logits.device)
    if gumbel.shape != logits.shape:
        raise BayesdlError(f"gumbel noise shape {tuple(gumbel.shape)} != logits shape "
                           f"{tuple(logits.shape)}")
    return gumbel


def gumbel_max(logits: torch.Tensor, gumbel: torch.Tensor | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """One draw of ``Categorical(logits=logits)`` per batch row: ``argmax(logits + G)``.

    Broadcast ``logits`` to ``[num_draws, ..., K]`` first for many draws.
    """
    _check_logits(logits)
    return torch.argmax(logits + _noise_for(logits, gumbel, generator), dim=-1)


def gumbel_softmax(logits: torch.Tensor, tau: float = 1.0, hard: bool = False,
                   gumbel: torch.Tensor | None = None,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """A Concrete(``softmax(logits)``, ``tau``) draw on the simplex, differentiable in ``logits``.

    With ``hard=True`` the value is the one-hot vector of the argmax and the gradient
    that of the relaxed sample (straight-through estimator).
    """
    _check_logits(logits)
    if not tau > 0:
        raise BayesdlError(f"temperature tau must be > 0, got {tau}")
    soft = torch.softmax((logits + _noise_for(logits, gumbel, generator)) / tau, dim=-1)
    if not hard:
        return soft
    one_hot = torch.zeros_like(soft).scatter_(-1, soft.argmax(-1, keepdim=True), 1.0)
    return one_hot - soft.detach() + soft


def gumbel_top_k(logits: torch.Tensor, k: int, gumbel: torch.Tensor | None = None,
                 generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``k`` draws without replacement, in order of draw: ``(indices [..., k], perturbed [..., k])``.

    ``perturbed`` are the sorted ``logits + G`` of the chosen categories (the Gumbel
    keys stochastic beam search and its estimators use).
    """
    _check_logits(logits)
    if not 1 <= k <= logits.shape[-1]:
        raise BayesdlError(f"k must be between 1 and the number of categories "
                           f"({logits.shape[-1]}), got {k}")
    perturbed = logits + _noise_for(logits, gumbel, generator)
    values, indices = torch.topk(perturbed, k, dim=-1)
    return indices, values


def log_inclusion_probability(logits: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """``log P(logits + G > threshold)`` = ``log(1 - exp(-exp(logits - threshold)))``.

    With ``threshold`` the (k+1)-th largest perturbed key, ``p / P(...)`` are the
    importance weights of the unbiased estimator over a sample without replacement
    (Vieira 2017; Kool, van Hoof & Welling 2019, section 4). ``logits`` are
    normalised log-probabilities.
    """
    x = logits - threshold
    # log(1 - exp(-exp(x))), stable on both sides
    return torch.where(x > 0, torch.log1p(-torch.exp(-torch.exp(x))),
                       torch.log(-torch.expm1(-torch.exp(x))))


def truncated_gumbel(location: torch.Tensor, maximum: torch.Tensor,
                     gumbel: torch.Tensor) -> torch.Tensor:
    """Gumbels with locations ``location [..., K]`` conditioned on their maximum being
    ``maximum [...]`` (Kool, van Hoof & Welling 2019, appendix B, numerically stable form).

    ``gumbel`` is standard Gumbel noise shaped like ``location``.
    """
    perturbed = location + gumbel
    top = perturbed.max(dim=-1, keepdim=True).values
    target = maximum.unsqueeze(-1)
    # v = T - G_i + log(1 - exp(G_i - Z)); result = T - relu(v) - log1p(exp(-|v|))
    gap = perturbed - top
    log1mexp = torch.where(gap > -0.6931, torch.log(-torch.expm1(gap)), torch.log1p(-torch.exp(gap)))
    v = target - perturbed + log1mexp
    out = target - torch.relu(v) - torch.log1p(torch.exp(-v.abs()))
    # the maximum itself maps exactly onto the target (log1mexp(0) = -inf above)
    return torch.where(gap == 0, target.expand_as(out), out)
