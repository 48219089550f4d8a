"""Composite losses written in fewer ATen operations while a potential is traced.

Some ``torch.nn.functional`` losses that distributions call are composites: ATen
expands them into elementary operations before a tracer sees them, and autograd then
differentiates each of those. ``binary_cross_entropy_with_logits`` (what
``Bernoulli(logits=...).log_prob`` calls, i.e. every logistic likelihood) becomes 12
operations forward and 20 more for its gradient, where ``softplus(x) - y x`` is 3
forward and 3 backward (``softplus`` has its own derivative, which
:mod:`~bayesdl.inference.graph_algebra` then writes as a ``sigmoid``). On CPU each
operation of a traced graph costs about a microsecond whatever its size, and in
compiled code each one is more to generate, so the shorter form makes the logistic
regression potential's graph 45 -> ~30 operations.

The rewrite is exact in float64 and float32: ``softplus`` is evaluated as
``log1p(exp(x))`` up to ``x = 50`` (``exp(50)`` is finite in both), and above that
``log1p(exp(-x)) < 2e-22`` is below the rounding of ``x``. Only the form distributions
use (no ``weight``, no ``pos_weight``) is rewritten; any other call goes to torch as
usual. Written here because no library offers a tracing-time substitution of one
composite by another (``make_fx``'s decomposition table never sees composites that
ATen expands before dispatch).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 - torch's own spelling
from torch.overrides import TorchFunctionMode

SOFTPLUS_LINEAR_ABOVE = 50.0
"""``softplus(x) = x`` above this (to float64 rounding); also ``exp(50)`` cannot overflow."""


def _logistic_loss(logits: torch.Tensor, target: torch.Tensor, reduction: str) -> torch.Tensor:
    """``binary_cross_entropy_with_logits`` without weights: ``softplus(x) - y x``."""
    loss = F.softplus(logits, 1.0, SOFTPLUS_LINEAR_ABOVE) - target * logits
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


class LeanComposites(TorchFunctionMode):
    """While active, composite losses run in their shortest exact form (module docstring)."""

    def __torch_function__(self, func: Callable, types: Any, args: tuple = (),
                           kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is F.binary_cross_entropy_with_logits:
            call = _bind_logistic(*args, **kwargs)
            if call is not None:
                return _logistic_loss(*call)
        return func(*args, **kwargs)


def _bind_logistic(input: torch.Tensor, target: torch.Tensor, weight: Any = None,  # noqa: A002
                   size_average: Any = None, reduce: Any = None, reduction: str = "mean",
                   pos_weight: Any = None) -> tuple[torch.Tensor, torch.Tensor, str] | None:
    """The call's ``(logits, target, reduction)`` if it is the unweighted form, else None."""
    if weight is not None or pos_weight is not None or size_average is not None \
            or reduce is not None or reduction not in ("none", "mean", "sum"):
        return None
    if not torch.is_floating_point(input) or input.shape != target.shape:
        return None
    return input, target.to(input.dtype), reduction
