"""Linear-Gaussian state-space models: Kalman filter, RTS smoother, log marginal likelihood.

    x_1 ~ N(m0, P0),   x_t = F x_{t-1} + w_t,  w_t ~ N(0, Q),   y_t = H x_t + v_t,  v_t ~ N(0, R)

``m0, P0`` are the moments of the first state before its observation (statsmodels'
``a_1, P_1``). Everything is batched: ``y`` is ``[..., T, p]`` and the parameters
``F [..., d, d]``, ``H [..., p, d]``, ``Q [..., d, d]``, ``R [..., p, p]``,
``m0 [..., d]``, ``P0 [..., d, d]`` broadcast over the leading dims. Missing
observations are NaN, any subset of the components of any ``y_t``: a missing component
gets a zero row of ``H``, a unit variance and a zero innovation, which leaves the
Kalman gain, the update and the likelihood exactly those of the observed components.
No branch depends on values, so the filter runs under ``torch.func.vmap`` and autograd.

Written here rather than taken from Pyro (``GaussianHMM`` has the likelihood only, no
missing values, no filtered or smoothed moments); statsmodels (NumPy, no autograd, no
batching) is the check. ``parallel_kalman_filter`` is the parallel-in-time form of
Sarkka & Garcia-Fernandez (2021), O(log T) sequential depth, for long series.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from bayesdl.errors import BayesdlError

LOG_2PI = math.log(2 * math.pi)


class FilterResult(NamedTuple):
    """Output of the Kalman filter; time is the axis before the state axes."""

    log_likelihood: torch.Tensor  # [...]
    filtered_mean: torch.Tensor  # [..., T, d]   E[x_t | y_1..y_t]
    filtered_cov: torch.Tensor  # [..., T, d, d]
    predicted_mean: torch.Tensor  # [..., T, d]  E[x_t | y_1..y_{t-1}]
    predicted_cov: torch.Tensor  # [..., T, d, d]


def _transpose(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(-1, -2)


def _check(y: torch.Tensor, F: torch.Tensor, H: torch.Tensor, Q: torch.Tensor,
           R: torch.Tensor, m0: torch.Tensor, P0: torch.Tensor) -> None:
    if y.dim() < 2:
        raise BayesdlError(f"kalman: y must be [..., T, p], got shape {tuple(y.shape)}")
    p, d = y.shape[-1], m0.shape[-1]
    expected = {"F": (F, (d, d)), "H": (H, (p, d)), "Q": (Q, (d, d)), "R": (R, (p, p)),
                "P0": (P0, (d, d))}
    for name, (value, shape) in expected.items():
        if tuple(value.shape[-2:]) != shape:
            raise BayesdlError(f"kalman: {name} must end in {shape} for {d} states and {p} "
                               f"observed components, got {tuple(value.shape)}")


def _batch_shape(y, F, H, Q, R, m0, P0) -> torch.Size:
    return torch.broadcast_shapes(y.shape[:-2], F.shape[:-2], H.shape[:-2], Q.shape[:-2],
                                  R.shape[:-2], m0.shape[:-1], P0.shape[:-2])


def _mask_observation(y_t: torch.Tensor, H: torch.Tensor, R: torch.Tensor):
    """``(y, H, R, n_observed)`` with NaN components replaced by zero rows / unit variance."""
    observed = ~torch.isnan(y_t)
    weight = observed.to(H.dtype)
    y0 = torch.where(observed, y_t, torch.zeros((), dtype=y_t.dtype, device=y_t.device))
    H_t = weight[..., :, None] * H
    R_t = weight[..., :, None] * R * weight[..., None, :] + torch.diag_embed(1 - weight)
    return y0, H_t, R_t, weight.sum(-1)


def _at(masked: tuple, t: int) -> tuple:
    """Time ``t`` of the masked ``(y, H, R, n_observed)``."""
    y0, H_t, R_t, n_obs = masked
    return y0[..., t, :], H_t[..., t, :, :], R_t[..., t, :, :], n_obs[..., t]


def _update(m: torch.Tensor, P: torch.Tensor, y0: torch.Tensor, H_t: torch.Tensor,
            R_t: torch.Tensor, n_obs: torch.Tensor):
    """One measurement update (masked ``y, H, R``): filtered moments and log p(y_t | past)."""
    innovation = y0 - (H_t @ m[..., None])[..., 0]
    if y0.shape[-1] == 1:  # one observed component: scalar algebra, a third of the ops
        PH = (P @ _transpose(H_t))[..., 0]
        S = (H_t[..., 0, :] * PH).sum(-1) + R_t[..., 0, 0]
        gain = PH / S[..., None]
        m_f = m + gain * innovation
        P_f = P - S[..., None, None] * gain[..., :, None] * gain[..., None, :]
        log_density = -0.5 * (innovation[..., 0].pow(2) / S + S.log() + n_obs * LOG_2PI)
        return m_f, 0.5 * (P_f + _transpose(P_f)), log_density
    S = H_t @ P @ _transpose(H_t) + R_t
    L = torch.linalg.cholesky(S)
    HP = H_t @ P
    gain = _transpose(torch.cholesky_solve(HP, L))  # P H' S^-1 (S, P symmetric)
    m_f = m + (gain @ innovation[..., None])[..., 0]
    eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
    IKH = eye - gain @ H_t
    P_f = IKH @ P @ _transpose(IKH) + gain @ R_t @ _transpose(gain)  # Joseph form: stays symmetric PSD
    white = torch.linalg.solve_triangular(L, innovation[..., None], upper=False)[..., 0]
    log_density = -0.5 * (white.pow(2).sum(-1) + n_obs * LOG_2PI) \
        - torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
    return m_f, 0.5 * (P_f + _transpose(P_f)), log_density


def kalman_filter(y: torch.Tensor, F: torch.Tensor, H: torch.Tensor, Q: torch.Tensor,
                  R: torch.Tensor, m0: torch.Tensor, P0: torch.Tensor) -> FilterResult:
    """Sequential Kalman filter: filtered and one-step predicted moments, log p(y_1..y_T)."""
    _check(y, F, H, Q, R, m0, P0)
    batch = _batch_shape(y, F, H, Q, R, m0, P0)
    d = m0.shape[-1]
    m, P = m0.expand(*batch, d), P0.expand(*batch, d, d)
    log_likelihood = torch.zeros((), dtype=y.dtype, device=y.device)
    fm, fc, pm, pc = [], [], [], []
    masked = _mask_observation(y, H[..., None, :, :], R[..., None, :, :])  # all t at once
    for t in range(y.shape[-2]):
        pm.append(m)
        pc.append(P)
        m_f, P_f, log_density = _update(m, P, *_at(masked, t))
        log_likelihood = log_likelihood + log_density
        fm.append(m_f)
        fc.append(P_f)
        m = (F @ m_f[..., None])[..., 0]
        P = F @ P_f @ _transpose(F) + Q
    return FilterResult(log_likelihood, torch.stack(fm, -2), torch.stack(fc, -3),
                        torch.stack(pm, -2), torch.stack(pc, -3))


def kalman_log_likelihood(y: torch.Tensor, F: torch.Tensor, H: torch.Tensor, Q: torch.Tensor,
                          R: torch.Tensor, m0: torch.Tensor, P0: torch.Tensor) -> torch.Tensor:
    """log p(y_1..y_T) of the linear-Gaussian model (differentiable, batched)."""
    return kalman_filter(y, F, H, Q, R, m0, P0).log_likelihood


def rts_smoother(result: FilterResult, F: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Rauch-Tung-Striebel smoother: E[x_t | y_1..y_T] and Cov[x_t | y_1..y_T]."""
    T = result.filtered_mean.shape[-2]
    m_s, P_s = result.filtered_mean[..., -1, :], result.filtered_cov[..., -1, :, :]
    means, covs = [m_s], [P_s]
    for t in range(T - 2, -1, -1):
        m_f, P_f = result.filtered_mean[..., t, :], result.filtered_cov[..., t, :, :]
        m_p, P_p = result.predicted_mean[..., t + 1, :], result.predicted_cov[..., t + 1, :, :]
        gain = _transpose(torch.linalg.solve(P_p, F @ P_f))  # P_f F' P_p^-1
        m_s = m_f + (gain @ (m_s - m_p)[..., None])[..., 0]
        P_s = P_f + gain @ (P_s - P_p) @ _transpose(gain)
        means.append(m_s)
        covs.append(0.5 * (P_s + _transpose(P_s)))
    return torch.stack(means[::-1], -2), torch.stack(covs[::-1], -3)


# ------------------------------------------------------------------ parallel in time
def _combine(first: tuple, second: tuple) -> tuple:
    """The associative operator of Sarkka & Garcia-Fernandez (2021), eq. (14)-(16).

    With one state every matrix is 1 x 1 and the products are elementwise (a tenth of
    the time of batched ``@`` and ``inv`` on tiny matrices).
    """
    A1, b1, C1, e1, J1 = first
    A2, b2, C2, e2, J2 = second
    if A1.shape[-1] == 1:
        scale = 1 / (1 + C1 * J2)
        left, right = A2 * scale, A1 * scale
        A = left * A1
        b = left[..., 0] * (b1 + C1[..., 0] * e2) + b2
        C = left * C1 * A2 + C2
        e = right[..., 0] * (e2 - J2[..., 0] * b1) + e1
        J = right * J2 * A1 + J1
        return A, b, C, e, J
    eye = torch.eye(A1.shape[-1], dtype=A1.dtype, device=A1.device)
    left = A2 @ torch.linalg.inv(eye + C1 @ J2)  # A2 (I + C1 J2)^-1
    right = _transpose(A1) @ torch.linalg.inv(eye + J2 @ C1)  # A1' (I + J2 C1)^-1
    A = left @ A1
    b = (left @ (b1 + (C1 @ e2[..., None])[..., 0])[..., None])[..., 0] + b2
    C = left @ C1 @ _transpose(A2) + C2
    e = (right @ (e2 - (J2 @ b1[..., None])[..., 0])[..., None])[..., 0] + e1
    J = right @ J2 @ A1 + J1
    return A, b, 0.5 * (C + _transpose(C)), e, 0.5 * (J + _transpose(J))


def _scan(elements: tuple) -> tuple:
    """Inclusive prefix 'sum' over time (Hillis-Steele: log2(T) vectorised passes).

    ``elements`` hold vectors ``[..., T, d]`` and matrices ``[..., T, d, d]``.
    """
    axes = [-2 if i in (1, 3) else -3 for i in range(len(elements))]
    items = [x.movedim(axis, 0) for x, axis in zip(elements, axes, strict=True)]
    T, offset = items[0].shape[0], 1
    while offset < T:
        combined = _combine(tuple(x[: T - offset] for x in items), tuple(x[offset:] for x in items))
        items = [torch.cat([x[:offset], c]) for x, c in zip(items, combined, strict=True)]
        offset *= 2
    return tuple(x.movedim(0, axis) for x, axis in zip(items, axes, strict=True))


def parallel_kalman_filter(y: torch.Tensor, F: torch.Tensor, H: torch.Tensor, Q: torch.Tensor,
                           R: torch.Tensor, m0: torch.Tensor, P0: torch.Tensor) -> FilterResult:
    """The Kalman filter as an associative scan over time (Sarkka & Garcia-Fernandez 2021).

    Same result as :func:`kalman_filter` (to rounding); every step is a vectorised
    operation over all T time points, so T = 10^5 takes 17 passes, not 10^5 steps.
    """
    _check(y, F, H, Q, R, m0, P0)
    T, d = y.shape[-2], m0.shape[-1]
    batch = _batch_shape(y, F, H, Q, R, m0, P0)
    eye = torch.eye(d, dtype=y.dtype, device=y.device)
    y0, H_t, R_t, n_obs = _mask_observation(y, H[..., None, :, :], R[..., None, :, :])
    Fx, Qx = F[..., None, :, :], Q[..., None, :, :]
    # generic elements (t >= 2): condition the transition from an unknown x_{t-1} on y_t
    S = H_t @ Qx @ _transpose(H_t) + R_t
    L = torch.linalg.cholesky(S)
    gain = _transpose(torch.cholesky_solve(H_t @ Qx, L))
    IKH = eye - gain @ H_t
    A = IKH @ Fx
    b = (gain @ y0[..., None])[..., 0]
    C = IKH @ Qx
    HF = H_t @ Fx
    e = (_transpose(HF) @ torch.cholesky_solve(y0[..., None], L))[..., 0]
    J = _transpose(HF) @ torch.cholesky_solve(HF, L)
    # the first element: the prior N(m0, P0) updated with y_1
    m1, P1, _ = _update(m0, P0, *_at((y0, H_t, R_t, n_obs), 0))
    A = torch.cat([torch.zeros_like(A[..., :1, :, :]).expand(*batch, 1, d, d),
                   A[..., 1:, :, :].expand(*batch, T - 1, d, d)], -3)
    b = torch.cat([m1.expand(*batch, d)[..., None, :], b[..., 1:, :].expand(*batch, T - 1, d)], -2)
    C = torch.cat([P1.expand(*batch, d, d)[..., None, :, :],
                   C[..., 1:, :, :].expand(*batch, T - 1, d, d)], -3)
    e = torch.cat([torch.zeros_like(b[..., :1, :]), e[..., 1:, :].expand(*batch, T - 1, d)], -2)
    J = torch.cat([torch.zeros_like(A[..., :1, :, :]), J[..., 1:, :, :].expand(*batch, T - 1, d, d)],
                  -3)
    _, filtered_mean, filtered_cov, _, _ = _scan((A, b, C, e, J))
    # one-step predictions and the likelihood of every y_t, all t at once
    predicted_mean = torch.cat([m0.expand(*batch, d)[..., None, :],
                                (Fx @ filtered_mean[..., :-1, :, None])[..., 0]], -2)
    predicted_cov = torch.cat([P0.expand(*batch, d, d)[..., None, :, :],
                               Fx @ filtered_cov[..., :-1, :, :] @ _transpose(Fx) + Qx], -3)
    innovation = y0 - (H_t @ predicted_mean[..., None])[..., 0]
    L = torch.linalg.cholesky(H_t @ predicted_cov @ _transpose(H_t) + R_t)
    white = torch.linalg.solve_triangular(L, innovation[..., None], upper=False)[..., 0]
    log_density = -0.5 * (white.pow(2).sum(-1) + n_obs * LOG_2PI) \
        - torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
    return FilterResult(log_density.sum(-1), filtered_mean, filtered_cov, predicted_mean,
                        predicted_cov)


__all__ = ["FilterResult", "kalman_filter", "kalman_log_likelihood", "rts_smoother",
           "parallel_kalman_filter"]
