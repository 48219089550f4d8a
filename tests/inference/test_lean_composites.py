"""The short forms of composite losses used while tracing equal torch's own, values and
gradients, also where the logits are far into either tail; other calls pass through.

References nobody here wrote: torch's ``binary_cross_entropy_with_logits`` and NumPy's
``logaddexp`` (``softplus(x) = logaddexp(0, x)``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F  # noqa: N812

from bayesdl.inference.lean_composites import LeanComposites

LOGITS = [-800.0, -60.0, -49.9, -20.5, -1.0, 0.0, 1e-3, 2.0, 20.5, 49.9, 50.1, 60.0, 800.0]


def _loss_and_grad(logits: torch.Tensor, target: torch.Tensor, reduction: str, lean: bool):
    logits = logits.clone().requires_grad_(True)
    if lean:
        with LeanComposites():
            loss = F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)
    else:
        loss = F.binary_cross_entropy_with_logits(logits, target, reduction=reduction)
    (grad,) = torch.autograd.grad(loss.sum(), logits)
    return loss.detach(), grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_logistic_loss_equals_torch_in_the_tails(dtype, reduction):
    logits = torch.tensor(LOGITS, dtype=dtype).repeat(3)
    target = torch.tensor([0.0] * len(LOGITS) + [1.0] * len(LOGITS) + [0.3] * len(LOGITS),
                          dtype=dtype)
    mine, mine_grad = _loss_and_grad(logits, target, reduction, lean=True)
    theirs, theirs_grad = _loss_and_grad(logits, target, reduction, lean=False)
    tolerance = 1e-14 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(mine, theirs, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(mine_grad, theirs_grad, rtol=tolerance, atol=tolerance)
    if reduction == "none" and dtype == torch.float64:
        x, y = np.asarray(LOGITS * 3), target.numpy()
        np.testing.assert_allclose(mine.numpy(), np.logaddexp(0.0, x) - y * x, rtol=1e-15,
                                   atol=1e-300)


def test_weighted_calls_and_bad_shapes_go_to_torch():
    logits = torch.linspace(-5, 5, 7, dtype=torch.float64)
    target = (logits > 0).to(torch.float64)
    weight = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)
    with LeanComposites():
        weighted = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
        positive = F.binary_cross_entropy_with_logits(logits, target,
                                                      pos_weight=torch.tensor(3.0))
        with pytest.raises(ValueError, match="size"):
            F.binary_cross_entropy_with_logits(logits, target[:3])
    assert torch.equal(weighted, F.binary_cross_entropy_with_logits(logits, target,
                                                                    weight=weight))
    assert torch.equal(positive, F.binary_cross_entropy_with_logits(
        logits, target, pos_weight=torch.tensor(3.0)))


def test_traced_logistic_regression_uses_softplus():
    """The traced Bernoulli-logits likelihood is softplus and its derivative (a sigmoid,
    :mod:`~bayesdl.inference.graph_algebra`), not the dozen exp/log/max operations ATen
    expands the loss into (fewer than 35 operations in all; 64 before any
    simplification, 45 before this one)."""
    from bayesdl.device import run_context
    from bayesdl.inference.potential import BatchedPotential
    from bayesdl.model_source import load_model_spec

    with run_context(torch.device("cpu"), torch.float64):
        spec = load_model_spec("logistic_regression", None, {}, torch.device("cpu"),
                               torch.float64)
        potential = BatchedPotential(spec.model, spec.data)
        assert potential.accelerate(torch.zeros(4, potential.dim), "compile")
    targets = [str(node.target) for node in potential.gradient_graph.graph.nodes
               if node.op == "call_function"]
    assert "aten.softplus.default" in targets and "aten.sigmoid.default" in targets
    assert not any(target.startswith(("aten.exp", "aten.log.")) for target in targets)
    assert len(targets) < 35
