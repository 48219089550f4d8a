"""Bernoulli-Bernoulli restricted Boltzmann machine (Smolensky 1986; Hinton 2002).

``E(v, h) = -v.b - h.c - v W h``, ``p(v, h) = exp(-E) / Z``, free energy
``F(v) = -v.b - sum_j softplus(c_j + v W_j)`` so ``p(v) = exp(-F(v)) / Z``. The
log-likelihood gradient is the difference of two expectations of the sufficient
statistics ``(v h', v, h)``: under the data (with ``h`` averaged out exactly) and under
the model. Here the model expectation is

- exact, by enumerating the smaller layer (``exact_gradient``; up to 24 units there),
- estimated by CD-k (Hinton 2002: k block-Gibbs sweeps started at the data) or
  persistent CD (Tieleman 2008: chains carried across updates), the sweeps run by the
  shared :class:`~bayesdl.inference.gibbs.BlockGibbsKernel` with per-chain random numbers.

``log Z`` is exact by enumeration for small models and estimated by annealed importance
sampling otherwise (Salakhutdinov & Murray 2008): the joint is annealed from a base RBM
with ``W = 0`` and visible biases ``b_A`` (the data's base rates), through
``p_beta(v, h) ∝ exp((1 - beta) v.b_A + beta (v.b + h.c + v W h))``, whose ``v``-marginal
is tractable, with block Gibbs at each temperature (:mod:`bayesdl.inference.annealed_importance`).

The built-in ``rbm`` is a Bayesian RBM over binary data ``v [N, V]``: Normal priors on
``W, b, c`` and the exact likelihood (hidden layer enumerated, so ``--arg num_hidden``
up to 16), so every method applies; ``--method svi --opt guide=delta`` is MAP. Training
by CD/PCD on bigger models is :func:`train_rbm`. Written by hand: no torch/Pyro library
has RBMs; scikit-learn's ``BernoulliRBM`` (the peer in tests and bench) is numpy PCD-1
only, without exact or AIS likelihoods.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
import torch.distributions as tdist
import torch.nn.functional as F

from bayesdl.data_schema import DataField
from bayesdl.errors import BayesdlError
from bayesdl.inference.annealed_importance import (
    AISResult,
    annealed_importance_sampling,
    geometric_schedule,
)
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.gibbs import BlockGibbsKernel, BlockGibbsState
from bayesdl.models.registry import register

MAX_ENUMERATED_UNITS = 24
_CHUNK = 1 << 14


class RBM(NamedTuple):
    """Parameters: ``weight [V, H]``, ``visible_bias [V]``, ``hidden_bias [H]``."""

    weight: torch.Tensor
    visible_bias: torch.Tensor
    hidden_bias: torch.Tensor

    @property
    def num_visible(self) -> int:
        return self.weight.shape[0]

    @property
    def num_hidden(self) -> int:
        return self.weight.shape[1]


def init_rbm(num_visible: int, num_hidden: int, scale: float = 0.01, seed: int = 0,
             dtype: torch.dtype = torch.float64) -> RBM:
    """Weights ``N(0, scale^2)``, biases 0 (as scikit-learn's BernoulliRBM starts)."""
    generator = torch.Generator().manual_seed(seed)
    weight = scale * torch.randn(num_visible, num_hidden, generator=generator, dtype=dtype,
                                 device="cpu").to(torch.get_default_device())
    return RBM(weight, torch.zeros(num_visible, dtype=dtype), torch.zeros(num_hidden, dtype=dtype))


def energy(rbm: RBM, v: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """``E(v, h) [...]`` for ``v [..., V]``, ``h [..., H]``."""
    return -(v @ rbm.visible_bias) - (h @ rbm.hidden_bias) - ((v @ rbm.weight) * h).sum(-1)


def free_energy(rbm: RBM, v: torch.Tensor) -> torch.Tensor:
    """``F(v) = -log sum_h exp(-E(v, h))`` ``[...]``."""
    return -(v @ rbm.visible_bias) - F.softplus(v @ rbm.weight + rbm.hidden_bias).sum(-1)


def hidden_free_energy(rbm: RBM, h: torch.Tensor) -> torch.Tensor:
    """``-log sum_v exp(-E(v, h)) [...]`` for ``h [..., H]``."""
    return -(h @ rbm.hidden_bias) - F.softplus(h @ rbm.weight.T + rbm.visible_bias).sum(-1)


def binary_states(n: int, dtype: torch.dtype = torch.float64, start: int = 0,
                  stop: int | None = None) -> torch.Tensor:
    """The binary vectors ``[stop - start, n]`` numbered ``start .. stop - 1`` (bit i = unit i)."""
    stop = 1 << n if stop is None else stop
    codes = torch.arange(start, stop, dtype=torch.int64)
    return ((codes[:, None] >> torch.arange(n)) & 1).to(dtype)


def _enumerate_layer(rbm: RBM) -> str:
    layer = "hidden" if rbm.num_hidden <= rbm.num_visible else "visible"
    units = min(rbm.num_hidden, rbm.num_visible)
    if units > MAX_ENUMERATED_UNITS:
        raise BayesdlError(f"exact RBM quantities enumerate the smaller layer; it has {units} "
                           f"units (at most {MAX_ENUMERATED_UNITS}); use AIS instead")
    return layer


def _chunks(n: int, dtype: torch.dtype):
    total = 1 << n
    for start in range(0, total, _CHUNK):
        yield binary_states(n, dtype, start, min(start + _CHUNK, total))


def exact_log_partition(rbm: RBM) -> torch.Tensor:
    """``log Z`` by enumerating the smaller layer (``2^min(V, H)`` terms)."""
    layer = _enumerate_layer(rbm)
    dtype = rbm.weight.dtype
    n = rbm.num_hidden if layer == "hidden" else rbm.num_visible
    fn = hidden_free_energy if layer == "hidden" else free_energy
    parts = [torch.logsumexp(-fn(rbm, states), 0) for states in _chunks(n, dtype)]
    return torch.logsumexp(torch.stack(parts), 0)


def exact_log_likelihood(rbm: RBM, v: torch.Tensor) -> torch.Tensor:
    """Mean ``log p(v)`` over the rows of ``v [N, V]``, exact."""
    return (-free_energy(rbm, v)).mean() - exact_log_partition(rbm)


def data_statistics(rbm: RBM, v: torch.Tensor) -> RBM:
    """``E_data[v h'], E[v], E[h]`` with ``h`` averaged out given ``v`` (the positive phase)."""
    h = torch.sigmoid(v @ rbm.weight + rbm.hidden_bias)
    return RBM(v.T @ h / v.shape[0], v.mean(0), h.mean(0))


def model_statistics(rbm: RBM) -> RBM:
    """``E_model[v h'], E[v], E[h]`` exactly, by enumerating the smaller layer."""
    layer = _enumerate_layer(rbm)
    dtype = rbm.weight.dtype
    log_z = exact_log_partition(rbm)
    vh = torch.zeros_like(rbm.weight)
    ev, eh = torch.zeros_like(rbm.visible_bias), torch.zeros_like(rbm.hidden_bias)
    if layer == "hidden":
        for h in _chunks(rbm.num_hidden, dtype):
            p = (-hidden_free_energy(rbm, h) - log_z).exp()
            v_mean = torch.sigmoid(h @ rbm.weight.T + rbm.visible_bias)
            vh += (v_mean * p[:, None]).T @ h
            ev += p @ v_mean
            eh += p @ h
    else:
        for v in _chunks(rbm.num_visible, dtype):
            p = (-free_energy(rbm, v) - log_z).exp()
            h_mean = torch.sigmoid(v @ rbm.weight + rbm.hidden_bias)
            vh += (v * p[:, None]).T @ h_mean
            ev += p @ v
            eh += p @ h_mean
    return RBM(vh, ev, eh)


def exact_gradient(rbm: RBM, v: torch.Tensor) -> RBM:
    """Gradient of the mean log-likelihood of ``v [N, V]``: data minus model statistics."""
    data, model = data_statistics(rbm, v), model_statistics(rbm)
    return RBM(*(d - m for d, m in zip(data, model, strict=True)))


# ----------------------------------------------------------------- block Gibbs
def gibbs_kernel(rbm: RBM, order: tuple[str, str] = ("h", "v"), beta: float = 1.0,
                 base_visible_bias: torch.Tensor | None = None) -> BlockGibbsKernel:
    """Block Gibbs on ``p_beta(v, h)`` (``beta = 1``: the RBM itself), blocks in ``order``."""
    base = torch.zeros_like(rbm.visible_bias) if base_visible_bias is None else base_visible_bias
    visible_field = (1 - beta) * base + beta * rbm.visible_bias

    def h_given_v(values: dict[str, torch.Tensor]) -> tdist.Bernoulli:
        logits = beta * (values["v"] @ rbm.weight + rbm.hidden_bias)
        return tdist.Bernoulli(logits=logits, validate_args=False)

    def v_given_h(values: dict[str, torch.Tensor]) -> tdist.Bernoulli:
        logits = beta * (values["h"] @ rbm.weight.T) + visible_field
        return tdist.Bernoulli(logits=logits, validate_args=False)

    conditionals = {"h": h_given_v, "v": v_given_h}
    return BlockGibbsKernel({name: conditionals[name] for name in order},
                            {"h": (rbm.num_hidden,), "v": (rbm.num_visible,)})


def gibbs_sweeps(rbm: RBM, rng: ChainRNG, first_step: int, v: torch.Tensor, h: torch.Tensor,
                 num_sweeps: int, order: tuple[str, str] = ("h", "v")
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """``num_sweeps`` block-Gibbs sweeps of chains ``(v [C, V], h [C, H])``."""
    kernel = gibbs_kernel(rbm, order)
    state = BlockGibbsState({"v": v, "h": h}, v.dtype)
    for sweep in range(num_sweeps):
        state, _ = kernel.step(rng, first_step + sweep, state, False)
    return state.values["v"], state.values["h"]


# ----------------------------------------------------------------- training
@dataclass
class RBMTraining:
    """Settings of :func:`train_rbm` (defaults: scikit-learn's BernoulliRBM, PCD-1).

    ``method``: ``pcd`` (persistent chains, one per batch row, as scikit-learn) or ``cd``
    (chains restarted at the data). ``learning_rate`` is per batch (divided by its size).
    """

    num_hidden: int = 64
    learning_rate: float = 0.1
    batch_size: int = 10
    epochs: int = 10
    k: int = 1
    method: str = "pcd"
    seed: int = 0
    init_scale: float = 0.01


@dataclass
class RBMTrainResult:
    rbm: RBM
    seconds: float
    epochs_per_second: float
    reconstruction_error: list[float] = field(default_factory=list)


def train_rbm(data: torch.Tensor, settings: RBMTraining | None = None) -> RBMTrainResult:
    """Fit an RBM to binary ``data [N, V]`` by CD-k or persistent CD with plain SGD.

    Batches are consecutive rows (as scikit-learn's); the update per batch is
    ``lr / n * (positive - negative statistics)`` with the negative ``h`` averaged out.
    """
    settings = settings or RBMTraining()
    if settings.method not in ("cd", "pcd"):
        raise BayesdlError(f"RBM training method must be cd or pcd, got {settings.method!r}")
    if data.dim() != 2 or not bool(((data == 0) | (data == 1)).all()):
        raise BayesdlError("RBM data must be a [N, V] tensor of 0/1 values")
    if settings.k < 1 or settings.batch_size < 1 or settings.epochs < 0 or settings.num_hidden < 1:
        raise BayesdlError("RBM training needs k, batch_size, num_hidden >= 1 and epochs >= 0")
    n, num_visible = data.shape
    rbm = init_rbm(num_visible, settings.num_hidden, settings.init_scale, settings.seed, data.dtype)
    batch = settings.batch_size
    rng = ChainRNG([settings.seed * 1_000_003 + i for i in range(batch)])
    h_chain = torch.zeros(batch, settings.num_hidden, dtype=data.dtype)
    v_chain = torch.zeros(batch, num_visible, dtype=data.dtype)
    errors: list[float] = []
    step = 0
    started = time.perf_counter()
    for _ in range(settings.epochs):
        sq_error = torch.zeros((), dtype=data.dtype)
        for start in range(0, n, batch):
            v_pos = data[start:start + batch]
            size = v_pos.shape[0]
            h_pos = torch.sigmoid(v_pos @ rbm.weight + rbm.hidden_bias)
            if settings.method == "pcd":
                v_neg, h_chain = gibbs_sweeps(rbm, rng, step, v_chain, h_chain, settings.k,
                                              ("v", "h"))
                v_chain = v_neg
            else:
                chain_rng = rng.select(slice(0, size))
                v_neg, _ = gibbs_sweeps(rbm, chain_rng, step, v_pos, h_chain[:size], settings.k,
                                        ("h", "v"))
            step += settings.k
            h_neg = torch.sigmoid(v_neg @ rbm.weight + rbm.hidden_bias)
            lr = settings.learning_rate / size
            rbm = RBM(rbm.weight + lr * (v_pos.T @ h_pos - v_neg.T @ h_neg),
                      rbm.visible_bias + lr * (v_pos.sum(0) - v_neg.sum(0)),
                      rbm.hidden_bias + lr * (h_pos.sum(0) - h_neg.sum(0)))
            recon = torch.sigmoid(h_pos @ rbm.weight.T + rbm.visible_bias)
            sq_error = sq_error + ((recon - v_pos) ** 2).sum()
        errors.append(float(sq_error) / n)
    seconds = time.perf_counter() - started
    return RBMTrainResult(rbm, seconds, settings.epochs / max(seconds, 1e-12), errors)


# ----------------------------------------------------------------- AIS
def base_rate_bias(data: torch.Tensor, smoothing: float = 1.0) -> torch.Tensor:
    """Visible biases of the base RBM: logits of the data's smoothed pixel means."""
    p = (data.sum(0) + smoothing) / (data.shape[0] + 2 * smoothing)
    return torch.log(p) - torch.log1p(-p)


def ais_log_partition(rbm: RBM, num_particles: int = 100, num_steps: int = 1000,
                      base_visible_bias: torch.Tensor | None = None, seed: int = 0) -> AISResult:
    """AIS estimate of ``log Z`` (Salakhutdinov & Murray 2008; see the module docstring).

    ``base_visible_bias``: the base RBM's visible biases (default 0; pass
    :func:`base_rate_bias` of the training data for a much better start).
    """
    base = (torch.zeros_like(rbm.visible_bias) if base_visible_bias is None
            else base_visible_bias.to(rbm.visible_bias))
    log_z_base = rbm.num_hidden * math.log(2.0) + F.softplus(base).sum()

    def log_intermediate(v: torch.Tensor, beta: float) -> torch.Tensor:
        return ((v @ ((1 - beta) * base + beta * rbm.visible_bias))
                + F.softplus(beta * (v @ rbm.weight + rbm.hidden_bias)).sum(-1))

    def transition(rng: ChainRNG, step: int, v: torch.Tensor, beta: float) -> torch.Tensor:
        kernel = gibbs_kernel(rbm, ("h", "v"), beta, base)
        h = v.new_zeros(v.shape[0], rbm.num_hidden)
        state, _ = kernel.step(rng, step, BlockGibbsState({"v": v, "h": h}, v.dtype), False)
        return state.values["v"]

    rng = ChainRNG([seed * 1_000_003 + p for p in range(num_particles)])
    u = rng.uniform(0, 99_991, (rbm.num_visible,), rbm.weight.dtype)
    initial = (u < torch.sigmoid(base)).to(rbm.weight.dtype)
    betas = geometric_schedule(num_steps, rbm.weight.dtype)
    return annealed_importance_sampling(log_intermediate, initial, log_z_base, betas, transition,
                                        rng)


def ais_log_likelihood(rbm: RBM, v: torch.Tensor, log_partition: torch.Tensor | float
                       ) -> torch.Tensor:
    """Mean ``log p(v)`` of ``v [N, V]`` given an estimate of ``log Z``."""
    return (-free_energy(rbm, v)).mean() - log_partition


# ----------------------------------------------------------------- the built-in model
def rbm_data(num_points: int = 200, seed: int = 0) -> dict:
    """``num_points`` binarised 8x8 digits from the training split (a seeded subset)."""
    from bayesdl.models.digits import digits

    images, _ = digits("train", binarise=True)
    order = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed), device="cpu")
    return {"v": images[order[:num_points]].tolist()}


@register(
    "rbm",
    "Bayesian RBM on binarised 8x8 digits, exact likelihood (hidden layer enumerated)",
    data=rbm_data,
    schema={"v": DataField(("row", "pixel"), kind="int")},
)
def rbm_model(v, num_hidden: int = 4, prior_scale: float = 1.0):
    """``W, b, c ~ N(0, prior_scale^2)``; ``v_n ~ RBM`` with the exact ``log Z``."""
    if num_hidden > 16:
        raise BayesdlError(f"the rbm model enumerates its hidden layer; num_hidden={num_hidden} > 16 "
                           "(train bigger RBMs with bayesdl.models.rbm.train_rbm)")
    v = torch.as_tensor(v)
    num_visible = v.shape[-1]
    zero = torch.zeros((), dtype=v.dtype, device=v.device)
    weight = pyro.sample("weight", dist.Normal(zero, prior_scale).expand([num_visible, num_hidden])
                         .to_event(2))
    b = pyro.sample("visible_bias", dist.Normal(zero, prior_scale).expand([num_visible]).to_event(1))
    c = pyro.sample("hidden_bias", dist.Normal(zero, prior_scale).expand([num_hidden]).to_event(1))
    rbm = RBM(weight, b, c)
    h = binary_states(num_hidden, v.dtype).to(v.device)
    log_z = torch.logsumexp(-hidden_free_energy(rbm, h), 0)
    pyro.factor("v_log_likelihood", (-free_energy(rbm, v)).sum(-1) - v.shape[0] * log_z)
