"""The algebraic simplification of traced graphs: fewer operations, the same values.

Every check compares the simplified graph with the function it was traced from (the
plain torch expression), at points other than the one it was traced at.
"""

from __future__ import annotations

import math

import pytest
import torch

from bayesdl.inference import traced_potential
from bayesdl.inference.traced_potential import trace_graph

DTYPE = torch.float64


def _operations(gm) -> list[str]:
    return [str(node.target) for node in gm.graph.nodes if node.op == "call_function"
            and "getitem" not in str(node.target)]


def _check(function, example: torch.Tensor):
    """Trace ``function`` with and without the algebra; return both graphs' operations
    after checking the simplified graph against ``function`` at fresh points."""
    graph = trace_graph(function, example)
    generator = torch.Generator().manual_seed(5)
    for scale in (0.3, 1.0, 4.0):
        point = torch.randn(example.shape, dtype=DTYPE, generator=generator) * scale
        expected = function(point)
        got = graph(point)
        expected = expected if isinstance(expected, tuple) else (expected,)
        got = got if isinstance(got, tuple) else (got,)
        for mine, theirs in zip(got, expected, strict=True):
            assert mine.shape == theirs.shape
            torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    return _operations(graph)


def _unsimplified(function, example, monkeypatch) -> list[str]:
    with monkeypatch.context() as patch:
        patch.setattr(traced_potential, "simplify_algebra", lambda gm: None)
        return _operations(trace_graph(function, example))


def test_a_normal_log_density_keeps_one_product_and_one_sum(monkeypatch):
    """``-(x - m)^2 / (2 s^2) - log s - log sqrt(2 pi)`` with constant ``m`` and ``s``
    per coordinate: the negation, the division and the two constant subtractions fold
    into one product, and the constants into one sum."""
    scale = torch.linspace(0.5, 2.0, 5, dtype=DTYPE)
    loc = torch.zeros(5, dtype=DTYPE)  # zeros, but a tensor: kept (see below)

    def log_density(x):
        z = x - loc
        return (-(z ** 2) / (2 * scale ** 2) - scale.log() - 0.5 * math.log(2 * math.pi)).sum(-1)

    example = torch.zeros(3, 5, dtype=DTYPE)
    before = _unsimplified(log_density, example, monkeypatch)
    after = _check(log_density, example)
    assert len(after) < len(before)
    assert not any("div" in op or "neg" in op for op in after), after
    assert sorted(after) == sorted(["aten.sub.Tensor", "aten.pow.Tensor_Scalar",
                                    "aten.mul.Tensor", "aten.sum.dim_IntList",
                                    "aten.add.Tensor"]), after


def test_constants_spread_over_a_sum_become_one():
    def log_density(x):
        a, b = x[:, 0], x[:, 1] * x[:, 2]
        return ((a + 1.5) - (b - 2.0)) + 3.0 - torch.exp(x[:, 3]) + 0.25

    ops = _check(log_density, torch.zeros(4, 4, dtype=DTYPE))
    # one addition of the combined constant, and two to join a, b and exp(x3)
    assert ops.count("aten.add.Tensor") + ops.count("aten.sub.Tensor") == 3, ops


def test_a_constant_inside_a_reduction_moves_out_and_joins_the_others():
    offsets = torch.arange(6, dtype=DTYPE)

    def log_density(x):
        return (x ** 2 + offsets).sum(-1) - 4.0

    ops = _check(log_density, torch.zeros(2, 6, dtype=DTYPE))
    assert ops.count("aten.add.Tensor") + ops.count("aten.sub.Tensor") == 1, ops


def test_a_chain_through_a_broadcast_keeps_the_broadcast_shape():
    """``x [C, 1] + c [8]`` is ``[C, 8]``: the combined chain must still broadcast."""
    row = torch.linspace(-1, 1, 8, dtype=DTYPE)

    def function(x):
        return ((x[:, :1] + row) * 2.0 - 1.0) / 3.0

    ops = _check(function, torch.zeros(3, 2, dtype=DTYPE))
    assert len([op for op in ops if op.split(".")[1] in ("add", "sub", "mul", "div")]) == 2


def test_a_value_used_twice_is_not_folded_away():
    def function(x):
        shifted = x * 3.0 + 1.0  # used by both outputs
        return shifted * 2.0 - 5.0, shifted.exp()

    _check(function, torch.zeros(2, 3, dtype=DTYPE))


def test_transposed_products_with_data_become_one_product():
    """``vmap`` turns ``X @ w`` into ``(X @ w^T)^T``; it becomes ``w @ X^T``."""
    data = torch.randn(7, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(1))

    def function(w):
        return torch.vmap(lambda v: data @ v)(w).sum(-1)

    ops = _check(function, torch.zeros(4, 3, dtype=DTYPE))
    assert "aten.permute.default" not in ops, ops


@pytest.mark.parametrize("model", ["eight_schools", "logistic_regression"])
def test_built_in_models_lose_a_fifth_of_their_operations(model, monkeypatch):
    """The value and gradient still equal the model's (the traced-potential tests check
    six models to 1e-10); here, that the rewrite does what it is for."""
    import pyro

    from bayesdl.device import run_context
    from bayesdl.inference.potential import BatchedPotential
    from bayesdl.model_source import load_model_spec

    with run_context(torch.device("cpu"), DTYPE), pyro.validation_enabled(False):
        spec = load_model_spec(model, None, {}, torch.device("cpu"), DTYPE)
        potential = BatchedPotential(spec.model, spec.data)
        example = torch.zeros(4, potential.dim, dtype=DTYPE)
        before = _unsimplified(potential._batched_grad, example, monkeypatch)
        after = _check(potential._batched_grad, example)
    assert len(after) <= 0.8 * len(before), (len(before), len(after))


def test_a_fixed_covariance_takes_plain_matrix_products(monkeypatch):
    """A fixed covariance's triangular solves become products with constant inverses
    (traced_potential); here the batch of vectors is multiplied as one matrix instead of
    a broadcast ``matmul`` that expands the inverse for every chain."""
    import pyro
    import pyro.distributions as dist

    from bayesdl.inference.potential import BatchedPotential

    generator = torch.Generator().manual_seed(2)
    q, _ = torch.linalg.qr(torch.randn(9, 9, dtype=DTYPE, generator=generator))
    cov = (q * torch.logspace(-2, 0, 9, dtype=DTYPE)) @ q.T

    def model(cov):
        pyro.sample("x", dist.MultivariateNormal(torch.zeros(9, dtype=DTYPE),
                                                 covariance_matrix=cov))

    potential = BatchedPotential(model, {"cov": cov})
    example = torch.zeros(4, 9, dtype=DTYPE)
    with pyro.validation_enabled(False), pyro.poutine.block():
        before = _unsimplified(potential._batched_grad, example, monkeypatch)
        after = _check(potential._batched_grad, example)
    assert "aten.matmul.default" in before
    assert "aten.matmul.default" not in after and after.count("aten.mm.default") == 2, after


def test_other_data_of_the_same_shapes_give_the_same_graph_code():
    """Constants computed from tensors stay buffers whatever their values (zeros, ones,
    all equal): the code, and so the key of compiled code cached for it, does not
    change with the data."""
    import pyro

    from bayesdl.device import run_context
    from bayesdl.inference.potential import BatchedPotential
    from bayesdl.model_source import load_model_spec

    codes = []
    with run_context(torch.device("cpu"), DTYPE), pyro.validation_enabled(False):
        spec = load_model_spec("eight_schools", None, {}, torch.device("cpu"), DTYPE)
        for y, sigma in [(spec.data["y"], spec.data["sigma"]),
                         (torch.zeros(8, dtype=DTYPE), torch.ones(8, dtype=DTYPE))]:
            potential = BatchedPotential(spec.model, {**spec.data, "y": y, "sigma": sigma})
            example = torch.zeros(4, potential.dim, dtype=DTYPE)
            with pyro.poutine.block():
                codes.append(trace_graph(potential._batched_grad, example).code)
    assert codes[0] == codes[1]


def test_folding_values_too_removes_more_and_keeps_the_values():
    """For the graph TorchScript runs (never compiled, never cached), tensors of zeros
    or ones and tensors of equal elements fold as numbers: fewer operations still."""
    import copy

    from bayesdl.inference.graph_algebra import simplify_algebra

    loc, scale = torch.zeros(6, dtype=DTYPE), torch.full((6,), 2.0, dtype=DTYPE)

    def log_density(x):
        return (-((x - loc) / scale) ** 2 / 2 - scale.log()).sum(-1)

    example = torch.zeros(3, 6, dtype=DTYPE)
    graph = trace_graph(log_density, example)
    folded = copy.deepcopy(graph)
    simplify_algebra(folded, values=True)
    folded.recompile()
    assert len(_operations(folded)) < len(_operations(graph))
    assert "aten.sub.Tensor" not in _operations(folded)  # x - 0 is gone
    point = torch.randn(3, 6, dtype=DTYPE, generator=torch.Generator().manual_seed(8))
    torch.testing.assert_close(folded(point), log_density(point), rtol=1e-12, atol=1e-12)


def test_support_masks_that_cannot_fire_are_dropped():
    """``HalfCauchy(2).log_prob(exp(u)) + u`` (a scale parameter on unconstrained space):
    torch masks ``value < 0`` with -inf in the density and 0 in its gradient; ``exp`` is
    never below zero, so both masks go, exactly, also where ``exp`` underflows to 0. A
    mask on a value that can be negative stays."""
    from torch.func import grad_and_value, vmap

    half_cauchy = torch.distributions.HalfCauchy(torch.tensor(2.0, dtype=DTYPE),
                                                 validate_args=False)

    def scale_density(u):
        return (half_cauchy.log_prob(torch.exp(u)) + u).sum()

    def plain_density(x):
        return half_cauchy.log_prob(x).sum()

    gradient = vmap(grad_and_value(scale_density))
    example = torch.zeros(4, 3, dtype=DTYPE)
    ops = _check(gradient, example)
    assert not any("masked_fill" in op or op.startswith("aten.lt") for op in ops), ops
    graph = trace_graph(gradient, example)
    tails = torch.tensor([[-800.0, -30.0, 0.0], [30.0, 700.0, -1e-3]] * 2, dtype=DTYPE)
    for mine, theirs in zip(graph(tails), gradient(tails), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    kept = _check(vmap(grad_and_value(plain_density)), example + 1)
    assert any("masked_fill" in op or "where" in op for op in kept), kept


def test_a_tensor_plus_a_product_becomes_one_addmm():
    """``b + w @ X^T`` (a linear predictor with its intercept) and ``g + r @ X`` (two
    gradient terms) each become one ``addmm``, with the values of the sums."""
    data = torch.randn(7, 3, dtype=DTYPE, generator=torch.Generator().manual_seed(2))

    def predictor_and_gradient(flat):
        intercept, weights = flat[:, :1], flat[:, 1:]
        logits = intercept + weights @ data.T
        return torch.tanh(logits) @ data + weights * 0.5

    ops = _check(predictor_and_gradient, torch.zeros(4, 4, dtype=DTYPE))
    assert ops.count("aten.addmm.default") == 2, ops
    assert "aten.mm.default" not in ops, ops


def test_a_softplus_gradient_becomes_a_sigmoid_and_folds_with_its_offset():
    """A logistic likelihood ``sum(y x - softplus(x))`` (threshold 50, as the traced
    Bernoulli likelihood) has the gradient ``y - sigmoid(x)``: one ``sigmoid`` and one
    subtraction, no ``softplus_backward`` reading a constant as large as the data. Its
    values equal torch's autograd to 1e-12 also far in the tails, where the threshold
    switches; a softplus with torch's default threshold (20, below where a sigmoid
    rounds to 1) keeps its own derivative."""
    from torch.func import grad_and_value, vmap

    generator = torch.Generator().manual_seed(4)
    data = torch.randn(9, 3, dtype=DTYPE, generator=generator)
    labels = (torch.rand(9, dtype=DTYPE, generator=generator) > 0.5).to(DTYPE)

    def log_likelihood(weights, threshold=50.0):
        logits = data @ weights
        return (labels * logits - torch.nn.functional.softplus(logits, 1.0, threshold)).sum()

    gradient = vmap(grad_and_value(log_likelihood))
    example = torch.zeros(4, 3, dtype=DTYPE)
    ops = _check(gradient, example)
    assert "aten.softplus_backward.default" not in ops and "aten.sigmoid.default" in ops, ops
    assert "aten.neg.default" not in ops, ops
    graph = trace_graph(gradient, example)
    tails = torch.tensor([[800.0, 0.0, 0.0], [-800.0, 0.0, 0.0], [60.0, -1.0, 0.5],
                          [49.9 / data[0, 0].item(), 0.0, 0.0]], dtype=DTYPE)
    for mine, theirs in zip(graph(tails), gradient(tails), strict=True):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)
    default = _check(vmap(grad_and_value(lambda w: log_likelihood(w, 20.0))), example)
    assert "aten.softplus_backward.default" in default, default


def test_a_negation_with_an_offset_is_one_subtraction():
    """``-(x - k)`` (an affine chain with scale -1 and an offset) is ``k - x``, one
    operation, bit for bit what the negation and the addition gave."""
    offset = torch.linspace(-1.0, 2.0, 5, dtype=DTYPE)

    def shifted(x):
        return (-(x - offset)).sum(-1) + (-(x + 1.5)).prod(-1)

    ops = _check(shifted, torch.zeros(3, 5, dtype=DTYPE))
    assert "aten.neg.default" not in ops, ops
    point = torch.randn(3, 5, dtype=DTYPE, generator=torch.Generator().manual_seed(6))
    assert torch.equal(trace_graph(shifted, point)(point), shifted(point))


def test_a_nan_log_density_reads_as_minus_inf_and_infinities_stay():
    """The traced graph's NaN -> -inf step (one ``nan_to_num``) leaves +-inf and finite
    values as they are."""
    from bayesdl.inference.traced_potential import nan_log_density_to_minus_inf

    def log_density(x):
        return torch.log(x[:, 0]) + x[:, 1]  # log of a negative number is NaN

    graph = trace_graph(log_density, torch.ones(4, 2, dtype=DTYPE))
    nan_log_density_to_minus_inf(graph)
    point = torch.tensor([[-1.0, 0.0], [0.0, 1.0], [2.0, math.inf], [1.0, 3.0]], dtype=DTYPE)
    assert graph(point).tolist() == [-math.inf, -math.inf, math.inf, 3.0]


@pytest.mark.parametrize("model", ["eight_schools", "logistic_regression", "kidiq"])
def test_the_value_graph_is_the_forward_part_of_the_gradient_graph(model):
    """The log density alone comes from the traced gradient by dead-code elimination, not
    from a second trace: the same values, bit for bit, as tracing the log density itself,
    with none of the gradient's operations left."""
    import pyro

    from bayesdl.device import run_context
    from bayesdl.inference.potential import BatchedPotential
    from bayesdl.inference.traced_potential import value_graph
    from bayesdl.model_source import load_model_spec

    with run_context(torch.device("cpu"), DTYPE), pyro.validation_enabled(False):
        spec = load_model_spec(model, None, {}, torch.device("cpu"), DTYPE)
        potential = BatchedPotential(spec.model, spec.data)
        example = torch.zeros(4, potential.dim, dtype=DTYPE)
        with pyro.poutine.block():
            gradient = trace_graph(potential._batched_grad, example)
            traced_alone = trace_graph(potential._batched_log_density, example)
        forward = value_graph(gradient)
        points = torch.randn(4, potential.dim, dtype=DTYPE,
                             generator=torch.Generator().manual_seed(3))
        assert torch.equal(forward(points), traced_alone(points))
        assert torch.equal(forward(points), gradient(points)[1])
    assert len(_operations(forward)) <= len(_operations(traced_alone))
    assert len(_operations(forward)) < len(_operations(gradient))


def test_a_trace_builds_one_fake_tensor_mode_and_the_same_graph(monkeypatch):
    """``make_fx`` records every node's shape with a fake tensor; traced in one
    tracing context it builds one fake mode instead of one per node, and the graph is
    the same."""
    import contextlib

    import pyro
    from torch._subclasses.fake_tensor import FakeTensorMode

    from bayesdl.device import run_context
    from bayesdl.inference.potential import BatchedPotential
    from bayesdl.model_source import load_model_spec

    built = []
    original_init = FakeTensorMode.__init__

    def counted_init(self, *args, **kwargs):
        built.append(1)
        original_init(self, *args, **kwargs)

    monkeypatch.setattr(FakeTensorMode, "__init__", counted_init)
    codes, modes = [], []
    with run_context(torch.device("cpu"), DTYPE), pyro.validation_enabled(False):
        spec = load_model_spec("eight_schools", None, {}, torch.device("cpu"), DTYPE)
        potential = BatchedPotential(spec.model, spec.data)
        example = torch.zeros(4, potential.dim, dtype=DTYPE)
        for one_mode in (True, False):
            if not one_mode:
                monkeypatch.setattr(traced_potential, "_one_fake_mode", contextlib.nullcontext)
            built.clear()
            with pyro.poutine.block():
                codes.append(trace_graph(potential._batched_grad, example).code)
            modes.append(len(built))
    assert codes[0] == codes[1]
    assert modes[0] == 1 and modes[1] > 50, modes
