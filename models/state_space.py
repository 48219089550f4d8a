"""Linear-Gaussian state-space models as Pyro models whose likelihood is the Kalman filter's.

``LinearGaussianSSM`` is a distribution over a whole series ``y_1..y_T``: its
``log_prob`` is the filter's log marginal likelihood (the states are integrated out
exactly), and ``sample`` simulates the model, so NUTS, HMC, MH and SVI infer the
parameters and the posterior predictive works. Two built-ins use it:

- ``local_level`` (Durbin & Koopman 2012, ch. 2), by default on the Nile data:
  ``level_t = level_{t-1} + eta_t``, ``y_t = level_t + eps_t``, with the variances named
  as statsmodels' ``UnobservedComponents`` names them, ``sigma2_irregular`` (of eps) and
  ``sigma2_level`` (of eta). The first level is diffuse, handled exactly: conditioning
  on the first observation gives ``level_1 | y_1 ~ N(y_1, sigma2_irregular)``, and the
  likelihood is that of the rest given ``y_1`` plus D&K's diffuse term ``-log(2 pi) / 2``
  (eq. 7.2 with F_inf = 1), statsmodels' exact-diffuse log-likelihood.
  ``--arg flat_priors=true`` makes the MAP the maximum-likelihood estimate.
- ``linear_gaussian_ssm``: given ``F``, ``H``, ``m0``, ``P0`` (data), infer diagonal
  state and observation noise variances ``sigma2_state [d]`` and ``sigma2_obs [p]``.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions import constraints
from pyro.distributions.torch_distribution import TorchDistribution

from bayesdl.data_files import read_data_file
from bayesdl.data_schema import DataField
from bayesdl.errors import BayesdlError
from bayesdl.models.flat_prior import Flat
from bayesdl.models.kalman import kalman_filter, parallel_kalman_filter, rts_smoother
from bayesdl.models.registry import bundled_path, register

HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


class LinearGaussianSSM(TorchDistribution):
    """The series ``y [T, p]`` of a linear-Gaussian state-space model (see models/kalman.py).

    ``prefix`` (``[k, p]``, optional) holds the first ``k`` values, which are conditioned
    on rather than modelled: ``log_prob`` scores ``y[k:]`` only (plus ``offset``), and
    ``sample`` returns ``prefix`` followed by simulated values. ``univariate`` makes the
    event ``[T]`` for ``p = 1``. The likelihood uses the parallel-in-time filter.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, F: torch.Tensor, H: torch.Tensor, Q: torch.Tensor, R: torch.Tensor,
                 m0: torch.Tensor, P0: torch.Tensor, num_steps: int, *,
                 prefix: torch.Tensor | None = None, offset: float = 0.0,
                 univariate: bool = False, validate_args: bool | None = None):
        self.F, self.H, self.Q, self.R, self.m0, self.P0 = F, H, Q, R, m0, P0
        self.num_steps, self.prefix, self.offset, self.univariate = num_steps, prefix, offset, univariate
        p = H.shape[-2]
        if univariate and p != 1:
            raise BayesdlError(f"LinearGaussianSSM: univariate needs one observed component, got {p}")
        batch_shape = torch.broadcast_shapes(F.shape[:-2], H.shape[:-2], Q.shape[:-2], R.shape[:-2],
                                             m0.shape[:-1], P0.shape[:-2])
        event_shape = (num_steps,) if univariate else (num_steps, p)
        super().__init__(batch_shape, event_shape, validate_args=False)

    @constraints.dependent_property(is_discrete=False, event_dim=2)
    def support(self):
        return constraints.independent(constraints.real, len(self.event_shape))

    def expand(self, batch_shape, _instance=None):
        batch_shape = torch.Size(batch_shape)

        def grow(x: torch.Tensor, event: int) -> torch.Tensor:
            return x.expand(batch_shape + x.shape[x.dim() - event:])

        return LinearGaussianSSM(grow(self.F, 2), grow(self.H, 2), grow(self.Q, 2), grow(self.R, 2),
                                 grow(self.m0, 1), grow(self.P0, 2), self.num_steps,
                                 prefix=self.prefix, offset=self.offset, univariate=self.univariate)

    def _series(self, value: torch.Tensor) -> torch.Tensor:
        series = value[..., None] if self.univariate else value
        return series[..., self._skip():, :]

    def _skip(self) -> int:
        return 0 if self.prefix is None else self.prefix.shape[0]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        result = parallel_kalman_filter(self._series(value), self.F, self.H, self.Q, self.R,
                                        self.m0, self.P0)
        return result.log_likelihood + self.offset

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        with torch.no_grad():
            shape = torch.Size(sample_shape) + self.batch_shape
            d, p = self.m0.shape[-1], self.H.shape[-2]
            dtype, device = self.m0.dtype, self.m0.device

            def noise(cov: torch.Tensor, size: int) -> torch.Tensor:
                eps = torch.randn(*shape, size, 1, dtype=dtype, device=device)
                return (torch.linalg.cholesky(cov) @ eps)[..., 0]

            x = self.m0.expand(*shape, d) + noise(self.P0, d)
            rows = []
            for _ in range(self.num_steps - self._skip()):
                rows.append((self.H @ x[..., None])[..., 0] + noise(self.R, p))
                x = (self.F @ x[..., None])[..., 0] + noise(self.Q, d)
            series = torch.stack(rows, -2)
            if self.prefix is not None:
                series = torch.cat([self.prefix.to(dtype).expand(*shape, *self.prefix.shape), series], -2)
            return series[..., 0] if self.univariate else series


# ------------------------------------------------------------------ local level
def nile_data() -> dict:
    """Annual flow of the Nile at Aswan, 1871-1970 (bundled; Cobb 1978)."""
    with bundled_path("nile.csv") as path:
        return {"y": read_data_file(path)["volume"]}


def _first_observed(y: torch.Tensor) -> int:
    observed = torch.nonzero(~torch.isnan(y))
    if observed.numel() == 0:
        raise BayesdlError("local_level: every observation is missing")
    return int(observed[0, 0])


def _positive_prior(flat: bool, scale: torch.Tensor) -> dist.Distribution:
    return Flat(scale, constraints.positive) if flat else dist.HalfCauchy(scale)


@register(
    "local_level",
    "local level model with Kalman-filter likelihood, Nile data (--arg flat_priors=true: MAP = MLE)",
    data=nile_data,
    schema={"y": DataField(("time",))},
    dims={"y": ["time"]},
)
def local_level(y, flat_priors: bool = False):
    """Random-walk level plus noise; half-Cauchy priors scaled by var(y), or flat ones."""
    scale = torch.as_tensor(np.nanvar(y.detach().cpu().numpy()), dtype=y.dtype, device=y.device)
    sigma2_irregular = pyro.sample("sigma2_irregular", _positive_prior(flat_priors, scale))
    sigma2_level = pyro.sample("sigma2_level", _positive_prior(flat_priors, scale))
    pyro.sample("y", local_level_distribution(y, sigma2_irregular, sigma2_level), obs=y)


def local_level_distribution(y: torch.Tensor, sigma2_irregular: torch.Tensor,
                             sigma2_level: torch.Tensor) -> LinearGaussianSSM:
    """The exact-diffuse local level model of the series ``y`` (see the module docstring)."""
    first = _first_observed(y)
    one = torch.ones(1, 1, dtype=y.dtype, device=y.device)
    irregular, level = sigma2_irregular[..., None, None], sigma2_level[..., None, None]
    return LinearGaussianSSM(one, one, level * one, irregular * one, y[first].reshape(1),
                             irregular + level, y.shape[-1], prefix=y[: first + 1, None],
                             offset=-HALF_LOG_2PI, univariate=True)


def local_level_smoother(y: torch.Tensor, sigma2_irregular: float,
                         sigma2_level: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Smoothed level E[level_t | y] and its variance, exact diffuse start; NaN = missing."""
    first = _first_observed(y)
    one = torch.ones(1, 1, dtype=y.dtype, device=y.device)
    tail = y[first:, None].clone()
    tail[0] = float("nan")  # y_first enters through the prior level | y_first
    result = kalman_filter(tail, one, one, sigma2_level * one, sigma2_irregular * one,
                           y[first].reshape(1), sigma2_irregular * one)
    mean, cov = rts_smoother(result, one)
    mean, var = mean[:, 0], cov[:, 0, 0]
    # levels before the first observation: a random walk run backwards from level_first
    back = torch.arange(first, 0, -1, dtype=y.dtype, device=y.device)
    return (torch.cat([mean[0].expand(first), mean]),
            torch.cat([var[0] + back * sigma2_level, var]))


# ------------------------------------------------------------------ general LGSSM
def linear_gaussian_ssm_data(num_steps: int = 200, seed: int = 0) -> dict:
    """A damped rotation observed in noise: d = p = 2, Q = diag(0.5, 0.2), R = diag(0.3, 0.6)."""
    rng = np.random.default_rng(seed)
    F = np.array([[0.9, 0.2], [-0.2, 0.9]])
    H = np.eye(2)
    q, r = np.array([0.5, 0.2]), np.array([0.3, 0.6])
    x = rng.normal(size=2) * np.sqrt(10.0)
    y = np.empty((num_steps, 2))
    for t in range(num_steps):
        y[t] = H @ x + rng.normal(size=2) * np.sqrt(r)
        x = F @ x + rng.normal(size=2) * np.sqrt(q)
    return {"y": y, "F": F, "H": H, "m0": np.zeros(2), "P0": 10.0 * np.eye(2)}


@register(
    "linear_gaussian_ssm",
    "linear-Gaussian state-space model (Kalman likelihood); infers diagonal Q and R",
    data=linear_gaussian_ssm_data,
    schema={"y": DataField(("time", "obs_dim")), "F": DataField(("state", "state")),
            "H": DataField(("obs_dim", "state")), "m0": DataField(("state",)),
            "P0": DataField(("state", "state"))},
    dims={"y": ["time", "obs_dim"], "sigma2_state": ["state"], "sigma2_obs": ["obs_dim"]},
)
def linear_gaussian_ssm(y, F, H, m0, P0, flat_priors: bool = False):
    """x_t = F x_{t-1} + N(0, diag(sigma2_state)), y_t = H x_t + N(0, diag(sigma2_obs))."""
    d, p = F.shape[-1], H.shape[-2]
    scale = torch.as_tensor(np.nanvar(y.detach().cpu().numpy(), axis=0), dtype=y.dtype, device=y.device)
    state_scale, obs_scale = scale.mean().expand(d), scale.expand(p)
    state_prior = _positive_prior(flat_priors, state_scale).to_event(1)
    obs_prior = _positive_prior(flat_priors, obs_scale).to_event(1)
    sigma2_state = pyro.sample("sigma2_state", state_prior)
    sigma2_obs = pyro.sample("sigma2_obs", obs_prior)
    pyro.sample("y", LinearGaussianSSM(F, H, torch.diag_embed(sigma2_state), torch.diag_embed(sigma2_obs),
                                       m0, P0, y.shape[-2]), obs=y)


__all__ = ["LinearGaussianSSM", "local_level", "local_level_distribution", "local_level_smoother",
           "linear_gaussian_ssm", "nile_data", "linear_gaussian_ssm_data"]
