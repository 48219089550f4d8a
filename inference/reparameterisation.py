"""Reparameterisations: samples as differentiable functions of parameter-free noise.

Each function maps noise that does not depend on the parameters (uniforms, standard
normals, fair coin flips, unit-rate gammas) to a draw of the target, so gradients of
an expectation flow through the draw (the pathwise estimator). The one-liners are the
classic table (Devroye 1986; S. Mohamed's "reparameterisation tricks"): Exponential,
Cauchy, Laplace by a log-ratio and by inversion, Gaussian by Box-Muller and by
``mu + R eps``, Rademacher, Log-Normal and Inverse-Gamma. Written by hand because
torch.distributions draws its own noise from the global generator and hides the map,
while here the noise is an argument (explicit seeding, fixed-noise gradient checks).
"""

from __future__ import annotations

import math

import torch

from bayesdl.device import generator_device
from bayesdl.errors import BayesdlError

TensorLike = torch.Tensor | float


def _open_unit(u: torch.Tensor, name: str) -> torch.Tensor:
    if not torch.is_tensor(u):
        raise BayesdlError(f"{name} must be a tensor of uniform noise")
    return u


def uniform_noise(shape: tuple[int, ...], generator: torch.Generator | None = None,
                  dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Uniform draws on the open interval (0, 1) (a zero would make ``log u`` infinite)."""
    u = torch.rand(shape, generator=generator, dtype=dtype, device=generator_device(generator))
    return u.clamp(min=torch.finfo(dtype).tiny)


def normal_noise(shape: tuple[int, ...], generator: torch.Generator | None = None,
                 dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """Standard normal draws."""
    return torch.randn(shape, generator=generator, dtype=dtype, device=generator_device(generator))


def exponential(u: torch.Tensor, rate: TensorLike = 1.0) -> torch.Tensor:
    """Exponential(rate) from ``u ~ U(0, 1)``: ``log(1/u) / rate``."""
    return -torch.log(_open_unit(u, "u")) / rate


def cauchy(u: torch.Tensor, loc: TensorLike = 0.0, scale: TensorLike = 1.0) -> torch.Tensor:
    """Cauchy(loc, scale) from ``u ~ U(0, 1)``: ``loc + scale * tan(pi (u - 1/2))``."""
    return loc + scale * torch.tan(math.pi * (_open_unit(u, "u") - 0.5))


def laplace_log_ratio(u1: torch.Tensor, u2: torch.Tensor, loc: TensorLike = 0.0,
                      scale: TensorLike = 1.0) -> torch.Tensor:
    """Laplace(loc, scale) from two uniforms: ``loc + scale * log(u1 / u2)``.

    ``log u1 - log u2`` is the difference of two unit exponentials, a standard Laplace.
    """
    return loc + scale * (torch.log(_open_unit(u1, "u1")) - torch.log(_open_unit(u2, "u2")))


def laplace_inverse_cdf(e: torch.Tensor, loc: TensorLike = 0.0, scale: TensorLike = 1.0) -> torch.Tensor:
    """Laplace(loc, scale) from ``e ~ U(-1/2, 1/2)``: ``loc - scale sgn(e) log(1 - 2|e|)``."""
    return loc - scale * torch.sign(e) * torch.log1p(-2 * e.abs())


def box_muller(u1: torch.Tensor, u2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Two independent standard normals from two uniforms (Box & Muller 1958):
    ``r cos(2 pi u2)`` and ``r sin(2 pi u2)`` with ``r = sqrt(2 log(1/u1))``."""
    radius = torch.sqrt(-2 * torch.log(_open_unit(u1, "u1")))
    angle = 2 * math.pi * u2
    return radius * torch.cos(angle), radius * torch.sin(angle)


def gaussian(eps: torch.Tensor, loc: torch.Tensor, scale_tril: torch.Tensor) -> torch.Tensor:
    """N(loc, R R^T) from ``eps ~ N(0, I)`` shaped ``[..., d]``: ``loc + R eps``."""
    if scale_tril.dim() < 2 or scale_tril.shape[-1] != scale_tril.shape[-2]:
        raise BayesdlError(f"scale_tril must be a square matrix, got shape {tuple(scale_tril.shape)}")
    if eps.shape[-1] != scale_tril.shape[-1]:
        raise BayesdlError(f"eps has {eps.shape[-1]} coordinates, scale_tril {scale_tril.shape[-1]}")
    return loc + (scale_tril @ eps.unsqueeze(-1)).squeeze(-1)


def rademacher(coin: torch.Tensor) -> torch.Tensor:
    """Rademacher (+1 or -1 with probability 1/2) from a fair coin ``coin in {0, 1}``: ``2 coin - 1``."""
    return 2 * coin - 1


def log_normal(eps: torch.Tensor, loc: TensorLike = 0.0, scale: TensorLike = 1.0) -> torch.Tensor:
    """LogNormal(loc, scale) from ``eps ~ N(0, 1)``: ``exp(loc + scale eps)``."""
    return torch.exp(loc + scale * eps)


def inverse_gamma(unit_gamma: torch.Tensor, scale: TensorLike = 1.0) -> torch.Tensor:
    """InverseGamma(k, scale) from ``unit_gamma ~ Gamma(k, rate 1)``: ``scale / unit_gamma``.

    ``unit_gamma / scale`` is Gamma(k, rate=scale) and its reciprocal is InverseGamma(k,
    scale). For a gradient in ``k``, draw ``unit_gamma`` with
    ``torch.distributions.Gamma(k, 1.0).rsample()`` (implicit reparameterisation).
    """
    return scale / unit_gamma
