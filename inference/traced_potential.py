"""A Pyro model's batched log density and gradient, traced once into a lean tensor graph.

Evaluating a Pyro model runs its Python code and Pyro's handlers on every call: about
2.5 ms for eight schools, whatever the number of chains. Gradient-based samplers call
it thousands of times, so we trace ``vmap(grad_and_value(log_density))`` once with
``make_fx`` into a graph of ATen operations, simplify that graph, and run it with
TorchScript's Static Runtime (about 10x faster than Pyro here, no compile step).
:func:`compile_graph` hands a traced graph (or a bigger function built around one, as
the whole NUTS transition) to Inductor instead: fused kernels, seconds of compilation per model
(cached on disk); it is the ``compile`` choice, for long runs.

The simplifications are written here because no library offers them on a plain
``make_fx`` graph (torch.compile's passes come only with its whole compiler):
constant folding (everything that depends only on the data), triangular solves with a
constant matrix turned into products with its inverse, removal of additions of zeros
and other identities, common-subexpression elimination, and elementary algebra on the
constants that are left (:mod:`~bayesdl.inference.graph_algebra`: a third fewer
operations on eight schools and logistic regression). While tracing, composite losses
run in their shortest exact form (:mod:`~bayesdl.inference.lean_composites`: a logistic
likelihood is ``softplus``, not a dozen exp/log/max operations).

A traced graph fixes Python control flow at the point it was traced: a model that
branches on a latent value, or draws its own random numbers, would be wrong elsewhere.
So the graph is checked against the model at several random points and discarded
(with a warning, falling back to the model itself) if it ever disagrees.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import warnings
from collections.abc import Callable, Iterator
from typing import NamedTuple

import torch
import torch.fx as fx
from torch.func import functionalize
from torch.fx.experimental.proxy_tensor import make_fx

from bayesdl.inference.graph_algebra import simplify_algebra
from bayesdl.inference.lean_composites import LeanComposites

aten = torch.ops.aten
GradFn = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""``flat [C, D] -> (grad [C, D], log_density [C])`` (``grad_and_value``'s order)."""

_ZERO_MAKERS = {aten.zeros_like.default, aten.new_zeros.default, aten.zeros.default}
_FILL_MAKERS = {aten.full_like.default, aten.full.default, aten.new_full.default}
_SHAPE_OPS = {aten.view.default, aten.expand.default, aten.unsqueeze.default,
              aten._unsafe_view.default, aten.reshape.default, aten.squeeze.dim,
              aten.clone.default, aten.alias.default, aten._to_copy.default}


_SHAPE_ONLY = {aten.zeros_like.default: 0.0, aten.ones_like.default: 1.0}


def _from_meta(node: fx.Node) -> torch.Tensor:
    meta = node.meta["val"]
    return torch.full(meta.shape, _SHAPE_ONLY[node.target], dtype=meta.dtype, device=meta.device)


def _val(node: fx.Node):
    return node.meta.get("val") if isinstance(node, fx.Node) else None


def _same_meta(a: fx.Node, b: fx.Node) -> bool:
    va, vb = _val(a), _val(b)
    return (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor)
            and va.shape == vb.shape and va.dtype == vb.dtype and va.device == vb.device)


def _fold_constants(gm: fx.GraphModule) -> None:
    """Evaluate every node that does not depend on the input; keep the results as buffers."""
    depends: dict[fx.Node, bool] = {}
    values: dict[fx.Node, object] = {}
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            depends[node] = True
            continue
        if node.op == "output":
            continue
        target = node.target
        random = hasattr(target, "tags") and torch.Tag.nondeterministic_seeded in target.tags
        if target in _SHAPE_ONLY:  # the value depends on the input's shape only, which is fixed
            depends[node] = False
            values[node] = _from_meta(node)
            continue
        depends[node] = random or any(depends[i] for i in node.all_input_nodes)
        if not depends[node]:
            if node.op == "get_attr":
                values[node] = getattr(gm, target)
            else:
                args = fx.node.map_arg(node.args, lambda n: values[n])
                kwargs = fx.node.map_arg(node.kwargs, lambda n: values[n])
                values[node] = target(*args, **kwargs)
    count = 0
    for node in list(gm.graph.nodes):
        if node.op in ("placeholder", "output", "get_attr") or depends.get(node, True):
            continue
        value = values[node]
        if value is None and not node.users:
            # a check on constants (e.g. that a Cholesky factorisation succeeded): it ran
            # once just now; kept, it would keep the factorisation in every call
            gm.graph.erase_node(node)
            continue
        if not isinstance(value, torch.Tensor):
            continue
        if any(depends.get(user, True) for user in node.users):
            name = f"_constant_{count}"
            count += 1
            gm.register_buffer(name, value)
            with gm.graph.inserting_before(node):
                constant = gm.graph.get_attr(name)
            constant.meta["val"] = node.meta.get("val")
            node.replace_all_uses_with(constant)
    # what is left of the constant part has no users but may look impure to
    # eliminate_dead_code (an in-place fill of a scratch tensor): its effect is in the
    # buffers above already
    for node in reversed(list(gm.graph.nodes)):
        if node.op == "call_function" and not depends.get(node, True) and not node.users:
            gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()


def _is_zero(node: object, zeros: set[fx.Node]) -> bool:
    return isinstance(node, fx.Node) and node in zeros


def _is_number(value: object, number: float) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == number


def _simplify(gm: fx.GraphModule) -> None:
    """Drop additions of zeros, multiplications by one, shape no-ops and the like."""
    zeros: set[fx.Node] = set()
    for node in list(gm.graph.nodes):
        if node.op != "call_function":
            continue
        target, args = node.target, node.args
        if target in _ZERO_MAKERS or (target in _FILL_MAKERS and args[-1] == 0):
            zeros.add(node)
            continue
        replacement = None
        if target in _SHAPE_OPS and isinstance(args[0], fx.Node):
            if _is_zero(args[0], zeros):
                zeros.add(node)
            elif _same_meta(node, args[0]):
                replacement = args[0]
        elif target in (aten.add.Tensor, aten.sub.Tensor) and len(args) == 2:
            a, b = args
            if _is_zero(b, zeros) or _is_number(b, 0):
                replacement = a
            elif (target is aten.add.Tensor and node.kwargs.get("alpha", 1) == 1
                  and (_is_zero(a, zeros) or _is_number(a, 0))):
                replacement = b
        elif target in (aten.mul.Tensor, aten.mul.Scalar):
            a, b = args
            if _is_zero(a, zeros) or _is_zero(b, zeros):
                zeros.add(node)
            elif _is_number(b, 1):
                replacement = a
            elif _is_number(a, 1):
                replacement = b
        elif target is aten.permute.default and list(args[1]) == list(range(len(args[1]))):
            replacement = args[0]
        elif target is aten.cat.default and len(args[0]) == 1:
            replacement = args[0][0]
        elif target is aten.pow.Tensor_Scalar and _is_number(args[1], 1):
            replacement = args[0]
        elif (target is aten.neg.default and isinstance(args[0], fx.Node)
              and args[0].target is aten.neg.default):
            replacement = args[0].args[0]
        elif target in (aten.div.Tensor, aten.div.Scalar):
            a, b = args
            if _is_number(b, 1):
                replacement = a
        elif target in (aten.sum.dim_IntList, aten.sum.default, aten.neg.default):
            if _is_zero(args[0], zeros):
                zeros.add(node)
            elif target is aten.sum.dim_IntList and isinstance(args[0], fx.Node):
                # sum over a dimension of size one that an unsqueeze just added
                source = args[0]
                dims = args[1]
                if (source.op == "call_function" and source.target is aten.unsqueeze.default
                        and len(dims) == 1 and not node.kwargs.get("keepdim", False)
                        and len(args) < 3 and _val(source) is not None
                        and dims[0] % _val(source).dim() == source.args[1] % _val(source).dim()):
                    replacement = source.args[0]
        if isinstance(replacement, fx.Node) and _same_meta(node, replacement):
            node.replace_all_uses_with(replacement)
    gm.graph.eliminate_dead_code()


def _errors_to_nan(gm: fx.GraphModule) -> None:
    """A failed error check (``_linalg_check_errors``: e.g. the Cholesky factorisation of a
    latent-dependent covariance that is not positive definite at this point) raises in
    the model; in the graph it makes that chain's outputs NaN instead, which samplers
    read as log density -inf: the point is rejected, and the other chains run on. (A
    side-effect-only check also cannot sit in a compiled loop body.)"""
    failed, batched = None, False  # failed: [C] if batched, else a scalar
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not aten._linalg_check_errors.default:
            continue
        info = node.args[0]
        shape = _val(info).shape
        batched = batched or len(shape) > 0
        with gm.graph.inserting_before(node):
            bad = gm.graph.call_function(aten.ne.Scalar, (info, 0))
            if len(shape) > 1:
                bad = gm.graph.call_function(aten.view.default, (bad, [shape[0], -1]))
                bad = gm.graph.call_function(aten.any.dim, (bad, 1))
            if failed is not None:
                bad = gm.graph.call_function(aten.logical_or.default, (failed, bad))
        failed = bad
        gm.graph.erase_node(node)
    if failed is None:
        return
    output = next(node for node in gm.graph.nodes if node.op == "output")
    results = output.args[0]
    single = isinstance(results, fx.Node)
    poisoned = []
    for result in ([results] if single else results):
        dims = _val(result).dim()
        with gm.graph.inserting_before(output):
            mask = failed
            if dims > 1 and batched:
                mask = gm.graph.call_function(aten.view.default,
                                              (failed, [-1] + [1] * (dims - 1)))
            poisoned.append(gm.graph.call_function(aten.where.ScalarSelf,
                                                   (mask, math.nan, result)))
    output.args = (poisoned[0] if single else tuple(poisoned),)


def _invert_constant_solves(gm: fx.GraphModule) -> None:
    """``solve_triangular(A, B)`` with a constant ``A`` (a fixed covariance's Cholesky
    factor) becomes ``A^{-1} @ B`` with the inverse computed once: a batched solve of a
    few right-hand sides costs far more per call on CPU than a matrix product."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.target is not aten.linalg_solve_triangular.default:
            continue
        matrix, rhs = node.args[0], node.args[1]
        upper = node.args[2] if len(node.args) > 2 else node.kwargs.get("upper")
        left = node.kwargs.get("left", True) if len(node.args) < 4 else node.args[3]
        unit = node.kwargs.get("unitriangular", False) if len(node.args) < 5 else node.args[4]
        if not (isinstance(matrix, fx.Node) and matrix.op == "get_attr" and left
                and isinstance(upper, bool)):
            continue
        factor = getattr(gm, matrix.target)
        eye = torch.eye(factor.shape[-1], dtype=factor.dtype, device=factor.device)
        inverse = torch.linalg.solve_triangular(factor, eye, upper=upper, unitriangular=unit)
        name = f"_inverse_{count}"
        count += 1
        gm.register_buffer(name, inverse)
        with gm.graph.inserting_before(node):
            constant = gm.graph.get_attr(name)
            product = gm.graph.call_function(aten.matmul.default, (constant, rhs))
        product.meta["val"] = node.meta.get("val")
        node.replace_all_uses_with(product)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()


def _eliminate_common_subexpressions(gm: fx.GraphModule) -> None:
    seen: dict[tuple, fx.Node] = {}
    for node in list(gm.graph.nodes):
        if node.op not in ("call_function", "get_attr"):
            continue
        target = node.target
        if hasattr(target, "tags") and torch.Tag.nondeterministic_seeded in target.tags:
            continue
        try:
            key = (node.op, target, _hashable(node.args), _hashable(node.kwargs))
            hash(key)
        except TypeError:
            continue
        if key in seen:
            node.replace_all_uses_with(seen[key])
        else:
            seen[key] = node
    gm.graph.eliminate_dead_code()


def _hashable(value: object) -> object:
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if isinstance(value, torch.Tensor):
        raise TypeError("tensor literal")
    return value


def _one_fake_mode() -> contextlib.AbstractContextManager:
    """One fake-tensor mode for the shapes ``make_fx`` records on every node: without a
    mode in a tracing context it builds a new one per node, each reading the Python stack
    (a third of a trace, 0.06-0.1 s per model here). PyTorch's internal API, so
    optional."""
    try:
        from torch._guards import TracingContext, tracing
        from torch._subclasses.fake_tensor import FakeTensorMode

        if TracingContext.try_get() is not None:
            return contextlib.nullcontext()
        return tracing(TracingContext(FakeTensorMode(allow_fallback_kernels=True)))
    except (ImportError, AttributeError, TypeError):
        return contextlib.nullcontext()


def trace_graph(grad_fn: Callable, example: torch.Tensor) -> fx.GraphModule:
    """Trace ``grad_fn`` (a log density or its ``grad_and_value``) at ``example [C, D]``
    into a simplified graph of ATen operations (constants folded, identities removed,
    common subexpressions shared). Composite losses are traced in their shortest exact
    form (:class:`~bayesdl.inference.lean_composites.LeanComposites`)."""

    def lean(flat: torch.Tensor):
        with LeanComposites():
            return grad_fn(flat)

    with _one_fake_mode():
        gm = make_fx(functionalize(lean, remove="mutations"))(example)
    _fold_constants(gm)
    _errors_to_nan(gm)
    _invert_constant_solves(gm)
    _simplify(gm)
    _eliminate_common_subexpressions(gm)
    simplify_algebra(gm)
    _eliminate_common_subexpressions(gm)
    gm.recompile()
    return gm


def value_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """A copy of a traced ``grad_and_value`` graph that returns only the value (its last
    output): the forward part, left after dead-code elimination, so that the log density
    alone needs no second trace of the model (a trace is most of a run's set-up)."""
    return output_graph(gm, -1)


def output_graph(gm: fx.GraphModule, index: int) -> fx.GraphModule:
    """A copy of a graph with several outputs that returns only output ``index``, with
    the operations only the others needed removed (dead-code elimination): the rest is
    the same operations, so the same bits."""
    part = copy.deepcopy(gm)
    output = next(node for node in part.graph.nodes if node.op == "output")
    output.args = (output.args[0][index],)
    part.graph.eliminate_dead_code()
    part.recompile()
    return part


def nan_log_density_to_minus_inf(gm: fx.GraphModule) -> None:
    """Make the graph's last output (the log density) -inf where it is NaN, as samplers
    read it: one operation in the graph (``nan_to_num`` keeping +-inf, 5 us less than
    ``where(isnan)`` on a 2-core EPYC) instead of two Python calls per gradient."""
    output = next(node for node in gm.graph.nodes if node.op == "output")
    results = output.args[0]
    single = isinstance(results, fx.Node)
    value = results if single else results[-1]
    with gm.graph.inserting_before(output):
        guarded = gm.graph.call_function(aten.nan_to_num.default,
                                         (value, -math.inf, math.inf, -math.inf))
    if _val(value) is not None:
        guarded.meta["val"] = _val(value)
    output.args = (guarded if single else (*results[:-1], guarded),)
    gm.recompile()


class TracedGradient(NamedTuple):
    """A traced ``flat -> (grad, log_density)`` as an unfrozen TorchScript module, for
    positions of ``shape`` only: what a sampler embeds in its own scripted step.
    ``split()`` builds the same graph's two halves as modules, ``(flat -> grad,
    flat -> log_density)``: a leapfrog trajectory needs the log density only at its end."""

    module: torch.jit.ScriptModule
    shape: torch.Size
    split: Callable[[], tuple[torch.jit.ScriptModule, torch.jit.ScriptModule]]


def script_graph(gm: fx.GraphModule, example: torch.Tensor) -> Callable:
    """Run a traced graph with TorchScript (no compile step): :func:`static_runtime` of
    the frozen module."""
    return static_runtime(torch.jit.freeze(torchscript_module(gm, example).eval()), example)


def torchscript_module(gm: fx.GraphModule, example: torch.Tensor) -> torch.jit.ScriptModule:
    """The graph as an unfrozen TorchScript module, which other scripted modules can
    call (a frozen one cannot be a submodule)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.trace(gm, (example,), check_trace=False)


def static_runtime(frozen: torch.jit.ScriptModule, example: torch.Tensor) -> Callable:
    """``frozen`` run by TorchScript's Static Runtime on CPU, else by its interpreter.

    The Static Runtime plans the graph's memory once and calls each operation's
    out-variant kernel directly, skipping most of the dispatcher: 49 -> 38 us per
    gradient of logistic regression, 118 -> 82 us per NUTS leaf (traced potential and
    leaf bookkeeping in one module). It is TorchScript's own, for CPU inference; where
    it declines a graph, or off CPU, the interpreter runs it as before.
    """
    to_static = getattr(torch._C, "_jit_to_static_module", None)
    if to_static is None or example.device.type != "cpu":
        return frozen
    try:
        return to_static(frozen._c)
    except Exception:  # noqa: BLE001 - an operation it does not support: interpreter
        return frozen


def trace_gradient(grad_fn: Callable, example: torch.Tensor) -> tuple[Callable, int]:
    """``grad_fn`` traced at ``example`` (:func:`trace_graph`) and run by TorchScript.

    Returns the function and the number of operations left in its graph.
    """
    gm = trace_graph(grad_fn, example)
    operations = sum(1 for n in gm.graph.nodes if n.op == "call_function")
    return script_graph(gm, example), operations


_PARALLEL_ELEMENTS = 2**16
"""Tensors below this size are not worth splitting across threads in compiled code."""
_VECTOR_ELEMENTS = 2**10
"""Graphs whose tensors are all below this size are compiled without vector code."""


def _largest_tensor(gm: fx.GraphModule) -> int:
    """The most elements of any tensor a traced graph (loop bodies included) makes or
    takes, from the shapes ``make_fx`` recorded."""
    largest = 0
    for module in gm.modules():
        if isinstance(module, fx.GraphModule):
            for node in module.graph.nodes:
                value = node.meta.get("val")
                if isinstance(value, torch.Tensor):
                    largest = max(largest, value.numel())
    return largest


@contextlib.contextmanager
def _dtype_rules_built_once() -> Iterator[None]:
    """Build Inductor's table of dtype rules once per compilation, not once per operation.

    ``DtypePropagationOpsHandler`` is a singleton, but its ``__init__`` (which rebuilds
    the table from the registered rules) runs at every construction, about 20,000 times
    for a NUTS transition: 1.7 s of a 15 s compilation. The rules are registered when
    Inductor is imported, so within one compilation rebuilding gives the same table.
    """
    try:
        from torch._inductor.dtype_propagation import DtypePropagationOpsHandler
    except ImportError:  # another torch: nothing to speed up
        yield
        return
    build = DtypePropagationOpsHandler.__init__
    built: set[int] = set()

    def build_once(self) -> None:
        if id(self) not in built:
            build(self)
            built.add(id(self))

    DtypePropagationOpsHandler.__init__ = build_once
    try:
        yield
    finally:
        DtypePropagationOpsHandler.__init__ = build


@contextlib.contextmanager
def _no_instruction_extension_probes() -> Iterator[None]:
    """Skip Inductor's probes for the bf16, VNNI and AMX instruction extensions.

    Inductor checks each extension the CPU reports by building a small library with
    g++ and loading it in a child Python: six builds (2 s) in a new cache directory,
    six child processes (0.4 s) in every process that compiles or loads a cached
    graph. Those extensions speed up bf16 and int8 matrix products only, never the
    float32/float64 code of a sampler, so here they read as absent (plain AVX-512 or
    AVX2 code). The probes' answers are cached for the whole process, so the caches
    are emptied on the way out: code compiled elsewhere in the process probes as usual.
    """
    try:
        from torch._inductor import cpu_vec_isa
        probe = cpu_vec_isa.VecISA.check_build
        base_code = cpu_vec_isa.VecISA._avx_code
    except (ImportError, AttributeError):  # another torch: nothing to skip
        yield
        return

    def base_probe_only(self, code: str) -> bool:
        return probe(self, code) if code == base_code else False

    caches = [getattr(cpu_vec_isa, "valid_vec_isa_list", None)] + [
        getattr(getattr(cpu_vec_isa, name, None), method, None)
        for name in ("VecAVX512", "VecAVX512VNNI", "VecAMX")
        for method in ("__bool__", "is_avx512_bf16_supported", "is_amx_fp16_supported")]

    def clear() -> None:
        for cache in caches:
            getattr(cache, "cache_clear", lambda: None)()

    clear()
    cpu_vec_isa.VecISA.check_build = base_probe_only
    try:
        yield
    finally:
        cpu_vec_isa.VecISA.check_build = probe
        clear()


def compile_graph(function: Callable, example_inputs: list[torch.Tensor],
                  cpp_wrapper: bool = False) -> Callable:
    """Trace ``function(*example_inputs)`` (tensors in, a tuple of tensors out) into one
    ATen graph and compile it with Inductor for exactly these shapes, dtypes and device.

    Inductor's graph compiler is called directly rather than through torch.compile:
    the graph is already captured, and skipping Dynamo's guards saves tens of
    microseconds per call, which is the point on CPU. Raises whatever Inductor raises
    (e.g. when no C++ compiler is installed); callers fall back to :func:`script_graph`.
    ``cpp_wrapper``: Inductor writes the code that calls its kernels (and runs loops of
    ``torch.while_loop``) in C++ rather than Python: slower to compile, microseconds
    less per kernel call.
    """
    from torch._inductor import config as inductor_config
    from torch._inductor.compile_fx import compile_fx
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    gm = make_fx(function)(*example_inputs)
    largest = _largest_tensor(gm)
    for node in gm.graph.nodes:  # metadata from make_fx's tracing confuses a second trace
        node.meta.clear()
    gm.recompile()
    # fake inputs with a shape environment: without one Inductor bypasses its on-disk
    # cache of compiled graphs, and every run would compile again
    fake_mode = FakeTensorMode(shape_env=ShapeEnv())
    fake_inputs = [fake_mode.from_tensor(tensor, static_shapes=True) for tensor in example_inputs]
    # one process: a pool of compile workers costs more to start than it saves here;
    # (size_asserts: the callers pass contiguous tensors of the traced shapes; checking
    # every argument on every call would cost more than the fused kernels themselves)
    # (Inductor declines to cache graphs with loops unless told: its cache key hashes the
    # loop's body and condition graphs like the rest, so marking them is safe)
    cacheable = {"torch.ops.higher_order.while_loop": torch.__version__}
    # (Inductor's precompiled headers stay on: building them, once per machine and torch
    # version, adds ~8 s to the first compilation; every later model then skips parsing
    # torch's headers, ~2 s per file, and a cached graph pays ~0.3 s to check them)
    settings = dict(compile_threads=1, size_asserts=False, cpp_wrapper=cpp_wrapper,
                    unsafe_marked_cacheable_functions=cacheable)
    if all(tensor.device.type == "cpu" for tensor in example_inputs):
        # (no vectorised loop tails: a few chains by tens of coordinates make every loop
        # mostly tail, and the extra variant of each kernel cost more to generate and
        # compile than it saved: 31 -> 25 us per NUTS leaf on eight schools, 55 -> 41 on
        # the 100-d Gaussian, a second less compilation)
        # (the C++ wrapper, which runs the loops, built apart from the kernels: -O1 for
        # it, -O3 for them, 7 -> 5 s of g++ for a NUTS transition)
        settings.update(cpp_wrapper_build_separate=True, **{"cpp.enable_loop_tail_vec": False})
        if largest < _PARALLEL_ELEMENTS:
            # every kernel small: Inductor would still split those over 512 elements
            # across threads and wait at a barrier after each small kernel beside them;
            # with two threads that cost 12-15% of a NUTS run (logistic regression, 100-d)
            settings["cpp.threads"] = 1
        if largest < _VECTOR_ELEMENTS:
            # no vector code at all: no loop is long enough to gain from it, and
            # generating and building it is a sixth of the compilation
            settings["cpp.simdlen"] = 1  # no instruction set is 1 bit wide: scalar code
    # (Inductor logs a warning for every operation it calls back into ATen for, e.g. a
    # triangular solve: expected here, and noise to a user)
    lowering_log = logging.getLogger("torch._inductor.ir")
    level = lowering_log.level
    lowering_log.setLevel(logging.ERROR)
    try:
        with _dtype_rules_built_once():
            try:  # trust the vector instructions the CPU reports: Inductor otherwise
                # checks each by building and loading a library in ten subprocesses
                # (and skip the bf16/int8 extensions' probes, see the context manager)
                with (inductor_config.patch(**settings, **{"cpp.vec_isa_ok": True}),
                      _no_instruction_extension_probes()):
                    compiled = compile_fx(gm, fake_inputs)
                    compiled(*example_inputs)  # compile now, not at the first real call
            except Exception:  # noqa: BLE001 - e.g. a compiler without those instructions
                with inductor_config.patch(**settings):
                    compiled = compile_fx(gm, fake_inputs)
                    compiled(*example_inputs)
    finally:
        lowering_log.setLevel(level)
    return compiled


def agrees(fast: Callable, reference: Callable, points: list[torch.Tensor]) -> bool:
    """Whether ``fast`` and ``reference`` give the same outputs (a tensor or a tuple of
    tensors: values, gradients) at ``points``."""
    tolerance = 1e-7 if points[0].dtype == torch.float64 else 1e-3
    for point in points:
        outputs, expected = fast(point), reference(point)
        if isinstance(outputs, torch.Tensor):
            outputs, expected = (outputs,), (expected,)
        if len(outputs) != len(expected):
            return False
        for mine, theirs in zip(outputs, expected, strict=True):
            finite = torch.isfinite(theirs)
            if not torch.equal(finite, torch.isfinite(mine)):
                return False
            if not torch.allclose(mine[finite], theirs[finite], rtol=tolerance,
                                  atol=tolerance):
                return False
    return True
