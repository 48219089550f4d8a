"""Determinantal point processes: kernels, exact sampling, k-DPPs, diverse mini-batches.

An L-ensemble ``P(Y = A) = det(L_A) / det(L + I)`` has marginal kernel
``K = L (L + I)^-1`` (and back, ``L = K (I - K)^-1`` when ``K``'s eigenvalues are
below one), with ``P(A subset of Y) = det(K_A)``. Exact sampling is the spectral
algorithm (Hough, Krishnapur, Peres & Virag 2006; Kulesza & Taskar 2012, Alg. 1):
keep eigenvector ``n`` with probability ``lambda_n / (1 + lambda_n)``, then draw
items one by one from the projection DPP they span, each with probability
proportional to its squared residual row norm, orthogonalising the rows against the
chosen item (Gram-Schmidt). A k-DPP keeps exactly ``k`` eigenvectors, chosen with
the elementary symmetric polynomials of the eigenvalues (Kulesza & Taskar 2011, Alg.
8), computed in log space. Many samples are drawn at once as a batch, with one
eigendecomposition.

:class:`DPPMiniBatchSampler` draws diverse mini-batches (a k-DPP on an RBF or linear
similarity of features or embeddings; Zhang, Kjellstrom & Mandt 2017) with the
inclusion probabilities ``pi_i`` needed to keep a mini-batch estimate of a sum over
data unbiased (weights ``1 / pi_i``, Horvitz-Thompson). Written by hand: torch, Pyro
and scipy have no DPP sampler (DPPy is NumPy-only and one sample at a time).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from bayesdl.errors import BayesdlError


def _check_symmetric(matrix: torch.Tensor, name: str) -> None:
    if matrix.dim() != 2 or matrix.shape[0] != matrix.shape[1]:
        raise BayesdlError(f"{name} must be a square matrix, got shape {tuple(matrix.shape)}")
    if not torch.isfinite(matrix).all():
        raise BayesdlError(f"{name} has NaN or infinite entries")
    if not torch.allclose(matrix, matrix.T, atol=1e-10 * (1 + float(matrix.abs().max()))):
        raise BayesdlError(f"{name} must be symmetric")


def _eigh(matrix: torch.Tensor, name: str, upper: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    _check_symmetric(matrix, name)
    values, vectors = torch.linalg.eigh(matrix)
    tol = 1e-10 * max(1.0, float(values.abs().max()))
    if float(values.min()) < -tol:
        raise BayesdlError(f"{name} must be positive semi-definite (smallest eigenvalue "
                           f"{float(values.min()):.3g})")
    if upper is not None and float(values.max()) > upper + tol:
        raise BayesdlError(f"{name} has an eigenvalue {float(values.max()):.6g} > {upper}")
    return values.clamp(min=0.0), vectors


def marginal_kernel(l_ensemble: torch.Tensor) -> torch.Tensor:
    """``K = L (L + I)^-1`` (through the eigendecomposition: eigenvalues ``l / (1 + l)``)."""
    values, vectors = _eigh(l_ensemble, "L")
    return (vectors * (values / (1 + values))) @ vectors.T


def l_ensemble(marginal: torch.Tensor) -> torch.Tensor:
    """``L = K (I - K)^-1``; ``K`` needs eigenvalues in ``[0, 1)`` (else no L-ensemble exists)."""
    values, vectors = _eigh(marginal, "K", upper=1.0)
    if float(values.max()) >= 1 - 1e-12:
        raise BayesdlError("K has an eigenvalue 1: it is not an L-ensemble (an item is certain)")
    return (vectors * (values / (1 - values))) @ vectors.T


def inclusion_probability(marginal: torch.Tensor, subset: torch.Tensor | list[int]) -> torch.Tensor:
    """``P(A subset of Y) = det(K_A)`` for the items ``subset`` (empty: 1)."""
    index = torch.as_tensor(subset, dtype=torch.int64, device=marginal.device)
    if index.numel() == 0:
        return marginal.new_ones(())
    return torch.linalg.det(marginal[index][:, index])


def log_probability(l_ensemble: torch.Tensor, subset: torch.Tensor | list[int]) -> torch.Tensor:
    """``log P(Y = A) = log det(L_A) - log det(L + I)``."""
    index = torch.as_tensor(subset, dtype=torch.int64, device=l_ensemble.device)
    eye = torch.eye(l_ensemble.shape[0], dtype=l_ensemble.dtype, device=l_ensemble.device)
    normaliser = torch.linalg.slogdet(l_ensemble + eye).logabsdet
    if index.numel() == 0:
        return -normaliser
    sign, logdet = torch.linalg.slogdet(l_ensemble[index][:, index])
    return torch.where(sign > 0, logdet, -math.inf) - normaliser


def log_elementary_symmetric(log_values: torch.Tensor, k: int) -> torch.Tensor:
    """``log e_j(lambda_1..lambda_n)`` for ``j = 0..k`` and ``n = 0..N``: ``[k + 1, N + 1]``
    (``e_j = 0`` appears as a huge negative number, not -inf)."""
    count = log_values.shape[0]
    # a huge negative number stands for log 0: -inf would make autograd's gradients NaN
    floor = torch.finfo(log_values.dtype).min / 4
    column = torch.cat([log_values.new_zeros(1), log_values.new_full((k,), floor)])
    columns = [column]
    for n in range(count):
        shifted = torch.cat([column.new_full((1,), floor), column[:-1]])
        column = torch.logaddexp(column, shifted + log_values[n])
        columns.append(column)
    return torch.stack(columns, 1)


def _select_eigenvectors_k(values: torch.Tensor, k: int, num: int,
                           generator: torch.Generator | None) -> torch.Tensor:
    """``[num, N]`` bool: exactly ``k`` eigenvectors per sample (Kulesza & Taskar Alg. 8)."""
    log_values = torch.log(values)
    table = log_elementary_symmetric(log_values, k)
    if float(table[k, -1]) < torch.finfo(values.dtype).min / 8:
        raise BayesdlError(f"k = {k} exceeds the rank of L; no subset of that size has "
                           "positive probability")
    remaining = torch.full((num,), k, dtype=torch.int64, device=values.device)
    chosen = torch.zeros((num, values.shape[0]), dtype=torch.bool, device=values.device)
    u = torch.rand((num, values.shape[0]), generator=generator, dtype=values.dtype,
                   device=values.device)
    for n in range(values.shape[0], 0, -1):
        needed = remaining > 0
        prev = table[(remaining - 1).clamp(min=0), n - 1]
        total = table[remaining, n]
        prob = torch.exp(log_values[n - 1] + prev - total)
        take = needed & (u[:, n - 1] < prob)
        chosen[:, n - 1] = take
        remaining = remaining - take.long()
    return chosen


def _sample_projection(vectors: torch.Tensor, chosen: torch.Tensor,
                       generator: torch.Generator | None) -> torch.Tensor:
    """Items ``[num, N]`` (bool) from the projection DPPs spanned by the chosen eigenvectors."""
    num, items = chosen.shape
    size = chosen.sum(1)
    width = int(size.max()) if num else 0
    mask = torch.zeros((num, items), dtype=torch.bool, device=vectors.device)
    if width == 0:
        return mask
    # each sample's chosen eigenvectors first, as rows of a [num, width, N] basis
    order = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :width]
    basis = vectors.T[order]
    live = torch.arange(width, device=vectors.device)[None, :] < size[:, None]
    basis = basis * live[:, :, None]
    batch = torch.arange(num, device=vectors.device)
    norms = (basis**2).sum(1)  # [num, N]: squared residual norm of every item
    for step in range(width):
        active = step < size
        weights = torch.where(mask, 0.0, norms.clamp(min=0))
        weights = torch.where(active[:, None], weights, 1.0)  # finished samples: dummy draws
        pick = torch.multinomial(weights, 1, generator=generator).squeeze(1)
        mask[batch[active], pick[active]] = True
        e = basis[batch, :, pick]  # [num, width]
        e = (active[:, None] * e) / e.norm(dim=-1, keepdim=True).clamp(min=1e-300)
        project = torch.bmm(e.unsqueeze(1), basis).squeeze(1)  # [num, N]: r_i . e
        basis = torch.baddbmm(basis, e.unsqueeze(2), project.unsqueeze(1), alpha=-1)
        norms = norms - project**2  # |r - (r.e) e|^2 = |r|^2 - (r.e)^2
    return mask


def sample_dpp(l_ensemble: torch.Tensor, num_samples: int = 1, k: int | None = None,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Exact draws ``[num_samples, N]`` (bool item masks) of the DPP with kernel ``L``
    (of the k-DPP when ``k`` is given)."""
    values, vectors = _eigh(l_ensemble, "L")
    return sample_dpp_spectral(values, vectors, num_samples, k, generator)


def sample_dpp_spectral(values: torch.Tensor, vectors: torch.Tensor, num_samples: int = 1,
                        k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """As :func:`sample_dpp`, from ``L``'s eigendecomposition (reuse it across calls)."""
    if num_samples < 1:
        raise BayesdlError(f"num_samples must be >= 1, got {num_samples}")
    if k is None:
        u = torch.rand((num_samples, values.shape[0]), generator=generator, dtype=values.dtype,
                       device=values.device)
        chosen = u < values / (1 + values)
    else:
        if not 0 <= k <= values.shape[0]:
            raise BayesdlError(f"k must be between 0 and the number of items ({values.shape[0]}), got {k}")
        chosen = _select_eigenvectors_k(values, k, num_samples, generator)
    return _sample_projection(vectors, chosen, generator)


def k_dpp_inclusion_probabilities(values: torch.Tensor, vectors: torch.Tensor, k: int) -> torch.Tensor:
    """``P(i in Y)`` for every item of the k-DPP: ``sum_n V_in^2 P(n chosen)``, with
    ``P(n chosen) = d log e_k / d log lambda_n`` (autograd through the log-space table)."""
    log_values = torch.log(values.detach()).requires_grad_(True)
    with torch.enable_grad():
        log_e = log_elementary_symmetric(log_values, k)[k, -1]
        (chosen,) = torch.autograd.grad(log_e, log_values)
    chosen = torch.nan_to_num(chosen, nan=0.0)
    return (vectors**2) @ chosen


class MiniBatch(NamedTuple):
    """Item ``indices [B]`` of a mini-batch and their Horvitz-Thompson ``weights [B]``
    (``1 / P(i in batch)``): ``sum_{i in batch} weights_i f_i`` is unbiased for ``sum_i f_i``."""

    indices: torch.Tensor
    weights: torch.Tensor


class UniformMiniBatchSampler:
    """Mini-batches of ``batch_size`` items uniformly without replacement (weights ``N / B``)."""

    def __init__(self, num_items: int, batch_size: int):
        if not 1 <= batch_size <= num_items:
            raise BayesdlError(f"batch_size must be between 1 and {num_items}, got {batch_size}")
        self.num_items, self.batch_size = num_items, batch_size

    def sample(self, generator: torch.Generator | None = None) -> MiniBatch:
        idx = torch.randperm(self.num_items, generator=generator)[: self.batch_size]
        return MiniBatch(idx, torch.full((self.batch_size,), self.num_items / self.batch_size,
                                         dtype=torch.float64))


class DPPMiniBatchSampler:
    """Diverse mini-batches of exactly ``batch_size`` items: a k-DPP with ``L`` the
    similarity of ``features [N, F]`` (``kernel="rbf"``: ``exp(-|x - y|^2 / (2 l^2))``,
    ``lengthscale`` by default the median pairwise distance; ``"linear"``: ``x . y``),
    plus ``jitter`` on the diagonal. The eigendecomposition is done once."""

    def __init__(self, features: torch.Tensor, batch_size: int, kernel: str = "rbf",
                 lengthscale: float | None = None, jitter: float = 1e-6, buffer: int = 256):
        if features.dim() != 2:
            raise BayesdlError(f"features must be [N, F], got shape {tuple(features.shape)}")
        if torch.isnan(features).any():
            raise BayesdlError("features contain NaN")
        n = features.shape[0]
        if not 1 <= batch_size <= n:
            raise BayesdlError(f"batch_size must be between 1 and {n}, got {batch_size}")
        x = features.to(torch.float64)
        if kernel == "rbf":
            dist2 = torch.cdist(x, x).pow(2)
            if lengthscale is None:
                off = dist2[~torch.eye(n, dtype=torch.bool, device=x.device)]
                lengthscale = float(off.sqrt().median()) if off.numel() else 1.0
            if not lengthscale > 0:
                raise BayesdlError(f"lengthscale must be > 0, got {lengthscale}")
            similarity = torch.exp(-dist2 / (2 * lengthscale**2))
        elif kernel == "linear":
            similarity = x @ x.T
        else:
            raise BayesdlError(f"unknown kernel {kernel!r}; choose rbf or linear")
        similarity = similarity + jitter * torch.eye(n, dtype=x.dtype, device=x.device)
        self.num_items, self.batch_size, self.buffer = n, batch_size, max(1, buffer)
        self._buffer: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.values, self.vectors = _eigh(0.5 * (similarity + similarity.T), "L")
        self.inclusion = k_dpp_inclusion_probabilities(self.values, self.vectors, batch_size)

    def sample_many(self, num: int, generator: torch.Generator | None = None) -> MiniBatch:
        """``num`` mini-batches at once: ``indices [num, B]`` and ``weights [num, B]``."""
        mask = sample_dpp_spectral(self.values, self.vectors, num, self.batch_size, generator)
        index = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, : self.batch_size]
        return MiniBatch(index, 1.0 / self.inclusion[index])

    def sample(self, generator: torch.Generator | None = None) -> MiniBatch:
        """One mini-batch: ``indices [B]`` and ``weights [B]``. Batches are drawn
        ``buffer`` at a time (one batched draw) and handed out one per call."""
        if not self._buffer:
            drawn = self.sample_many(self.buffer, generator)
            self._buffer = list(zip(drawn.indices.unbind(0), drawn.weights.unbind(0), strict=True))[::-1]
        return MiniBatch(*self._buffer.pop())


def subsample_data(data: dict, batch: MiniBatch, num_items: int) -> dict:
    """The model's keyword arguments restricted to a mini-batch: every tensor whose first
    dimension has ``num_items`` entries is indexed by ``batch.indices``; the rest stays."""
    return {key: value[batch.indices.to(value.device)]
            if torch.is_tensor(value) and value.dim() >= 1 and value.shape[0] == num_items else value
            for key, value in data.items()}


def scale_observed(model, weights: torch.Tensor):
    """``model`` with each observed site's log-likelihood terms multiplied by ``weights``
    (per data point, broadcast against the site's batch shape): with :func:`subsample_data`,
    the ELBO's likelihood term becomes the unbiased Horvitz-Thompson estimate of the
    full-data one. Latent sites (priors, global parameters) are left unscaled."""
    from pyro.poutine.messenger import Messenger

    class _ScaleObserved(Messenger):
        def _process_message(self, msg):
            if msg["type"] == "sample" and msg["is_observed"] and not msg.get("_subsample", False):
                msg["scale"] = msg["scale"] * weights

    def scaled(*args, **kwargs):
        with _ScaleObserved():
            return model(*args, **kwargs)

    return scaled
