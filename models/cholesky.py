"""Cholesky factors of covariance matrices, with jitter escalation and a clear error.

Kernel matrices are positive definite in exact arithmetic but often not in floating
point (near-duplicate inputs, long length-scales). ``jittered_cholesky`` first tries
the matrix as it is, then adds ``jitter * mean(diag) * I`` for jitter = 1e-10, 1e-9,
..., 1e-5 (float64; from 1e-7 in float32), and raises a `BayesdlError` naming the
matrix when even the largest fails. The check needs the factorisation's status on the
host, so this is for model code, not for the inside of a batched MCMC step.
"""

from __future__ import annotations

import torch

from bayesdl.errors import BayesdlError

MAX_JITTER = 1e-5


def jittered_cholesky(matrix: torch.Tensor, what: str = "covariance matrix") -> torch.Tensor:
    """Lower Cholesky factor of the symmetric ``matrix [..., n, n]``, adding jitter if needed."""
    if matrix.dim() < 2 or matrix.shape[-1] != matrix.shape[-2]:
        raise BayesdlError(f"{what} must be square [..., n, n], got shape {tuple(matrix.shape)}")
    factor, info = torch.linalg.cholesky_ex(matrix)
    if not bool((info != 0).any()):
        return factor
    if not bool(torch.isfinite(matrix).all()):
        raise BayesdlError(f"{what} holds NaN or Inf")
    scale = torch.diagonal(matrix, dim1=-2, dim2=-1).abs().mean(-1)[..., None, None]
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    jitter = 1e-10 if matrix.dtype == torch.float64 else 1e-7
    while jitter <= MAX_JITTER * (1 + 1e-9):
        factor, info = torch.linalg.cholesky_ex(matrix + jitter * scale * eye)
        if not bool((info != 0).any()):
            return factor
        jitter *= 10
    raise BayesdlError(f"{what} is not positive definite, even with {MAX_JITTER:g} x mean(diag) "
                       "added to its diagonal")


__all__ = ["jittered_cholesky", "MAX_JITTER"]
