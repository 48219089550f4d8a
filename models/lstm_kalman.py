"""LSTM-Kalman filter (Coskun et al. 2017, "Long Short-Term Memory Kalman Filters").

A Kalman filter whose pieces are learned: one LSTM gives the transition mean
f(x_{t-1}), a second the process noise Q_t, a third the measurement noise R_t (both
diagonal, softplus). The state is the tracked position (H = I), and the covariance
prediction uses the Jacobian of the transition, as an extended Kalman filter does:

    x-_t = f(x_{t-1}),  P-_t = J P_{t-1} J' + Q_t,  J = df/dx_{t-1}  (from the LSTM gates)
    K = P-_t (P-_t + R_t)^-1,  x_t = x-_t + K (z_t - x-_t),  P_t = (I - K) P-_t

Trained end to end (:func:`train_supervised`: mean squared error of x_t against the
true positions, as in the paper) on a synthetic coordinated-turn tracking task
(:func:`coordinated_turn_tracks`), and compared on held-out tracks with a
constant-velocity Kalman filter fitted by maximum likelihood and a bootstrap particle
filter that knows the true dynamics (:func:`compare_filters`).

Choices where the paper leaves room, all so that the filter is translation invariant
and its likelihood is a proper sequential density: the transition LSTM reads the last
step x_{t-1} - x_{t-2} and f adds its output to x_{t-1}; the Q-LSTM reads that predicted
step; the R-LSTM reads the previous innovation (the paper feeds z_t itself). The first
position is diffuse: x_1 = z_1, P_1 = R_1.

The built-in ``lstm_kalman`` is a Pyro model over observed tracks ``z``: the network is
a ``pyro.module`` (``--method svi`` trains it by the filter's marginal likelihood,
p(z_t | z_<t) = N(x-_t, P-_t + R_t), without ground truth), and two latent scales,
``log_q_scale`` and ``log_r_scale``, calibrate the learned noise.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NamedTuple

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from bayesdl.data_schema import DataField
from bayesdl.device import generator_device
from bayesdl.errors import BayesdlError
from bayesdl.inference.particle_filter import StateSpaceModel, filter_series
from bayesdl.models.kalman import kalman_filter, kalman_log_likelihood
from bayesdl.models.registry import register

LOG_2PI = math.log(2 * math.pi)


# ------------------------------------------------------------------ the tracking task
@dataclass(frozen=True)
class CoordinatedTurn:
    """A target moving at speed ~1 and turning at a slowly varying rate; position observed.

    State (px, py, heading, speed, turn rate): p += speed * (cos, sin)(heading);
    heading += turn; speed = 1 + 0.9 (speed - 1) + N(0, speed_sd^2);
    turn = 0.95 turn + N(0, turn_sd^2); z = p + N(0, obs_sd^2 I).
    """

    speed_sd: float = 0.05
    turn_sd: float = 0.05
    obs_sd: float = 0.5

    def initial(self, n: int, generator: torch.Generator | None, dtype=torch.float64) -> torch.Tensor:
        """Draws of the first state: at the origin, any heading, speed ~ 1, turn ~ N(0, 0.1^2)."""
        device = generator_device(generator)
        u = torch.rand(n, generator=generator, dtype=dtype, device=device)
        e = torch.randn(n, 2, generator=generator, dtype=dtype, device=device)
        zeros = torch.zeros(n, dtype=dtype, device=u.device)
        return torch.stack([zeros, zeros, 2 * math.pi * u, 1 + 0.1 * e[:, 0], 0.1 * e[:, 1]], -1)

    def transition(self, x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        """One step of the dynamics for states ``[..., 5]``."""
        e = torch.randn(*x.shape[:-1], 2, generator=generator, dtype=x.dtype, device=x.device)
        px, py, heading, speed, turn = x.unbind(-1)
        return torch.stack([px + speed * torch.cos(heading), py + speed * torch.sin(heading),
                            heading + turn, 1 + 0.9 * (speed - 1) + self.speed_sd * e[..., 0],
                            0.95 * turn + self.turn_sd * e[..., 1]], -1)

    def state_space_model(self) -> StateSpaceModel:
        """The task for the particle filter: the dynamics as samplers (torch's global generator,
        which the filter seeds), positions observed with N(0, obs_sd^2 I) noise."""
        return StateSpaceModel(
            initial=lambda: _Sampler(lambda shape: self.initial(math.prod(shape), None).reshape(*shape, 5)),
            transition=lambda x, t: _Sampler(lambda shape: self.transition(x.expand(*shape, *x.shape), None)),
            observation=lambda x, t: dist.Normal(x[..., :2], self.obs_sd).to_event(1),
        )


class _Sampler(torch.distributions.Distribution):
    """A distribution known only by a sampler: all the bootstrap filter needs of the dynamics."""

    def __init__(self, draw):
        super().__init__(validate_args=False)
        self.draw = draw

    def sample(self, sample_shape: tuple[int, ...] = ()) -> torch.Tensor:
        return self.draw(torch.Size(sample_shape))


def coordinated_turn_tracks(num_sequences: int, num_steps: int, seed: int = 0,
                            task: CoordinatedTurn = CoordinatedTurn()) -> tuple[torch.Tensor, torch.Tensor]:
    """(true positions, observations), each ``[num_sequences, num_steps, 2]`` (float64)."""
    generator = torch.Generator().manual_seed(seed)
    x = task.initial(num_sequences, generator)
    states = [x]
    for _ in range(num_steps - 1):
        x = task.transition(x, generator)
        states.append(x)
    positions = torch.stack(states, 1)[..., :2]
    noise = task.obs_sd * torch.randn(positions.shape, generator=generator, dtype=positions.dtype,
                                      device=positions.device)
    return positions, positions + noise


# ------------------------------------------------------------------ the filter
class LSTMKalmanOutput(NamedTuple):
    """Filtered positions ``[B, T, d]``, their covariances and log p(z_2..z_T | z_1) ``[B]``."""

    filtered_mean: torch.Tensor
    filtered_cov: torch.Tensor
    log_likelihood: torch.Tensor


class LSTMStep(nn.Module):
    """One LSTM cell step (the gates of ``nn.LSTMCell``) that also returns dh'/du.

    Written out (not ``nn.LSTMCell``) because the filter needs the Jacobian of the
    transition every step: from the gates it is a few elementwise products, where
    automatic differentiation would run the cell once more per state dimension.
    """

    def __init__(self, input_size: int, hidden: int):
        super().__init__()
        self.hidden = hidden
        self.input = nn.Linear(input_size, 4 * hidden)
        self.recurrent = nn.Linear(hidden, 4 * hidden, bias=False)

    def forward(self, u: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None,
                jacobian: bool = False):
        """``(h', c')`` and, if asked, ``dh'/du [..., hidden, input]``."""
        if state is None:
            zeros = torch.zeros(*u.shape[:-1], self.hidden, dtype=u.dtype, device=u.device)
            state = (zeros, zeros)
        h, c = state
        i, f, g, o = (self.input(u) + self.recurrent(h)).chunk(4, -1)
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c_new = f * c + i * g
        tanh_c = torch.tanh(c_new)
        h_new = o * tanh_c
        if not jacobian:
            return h_new, c_new, None
        W_i, W_f, W_g, W_o = self.input.weight.chunk(4, 0)  # [hidden, input] each
        dc = ((c * f * (1 - f))[..., None] * W_f + (g * i * (1 - i))[..., None] * W_i
              + (i * (1 - g.pow(2)))[..., None] * W_g)
        dh = (tanh_c * o * (1 - o))[..., None] * W_o + (o * (1 - tanh_c.pow(2)))[..., None] * dc
        return h_new, c_new, dh


class LSTMKalmanFilter(nn.Module):
    """The three LSTMs and the filter that uses them (see the module docstring)."""

    def __init__(self, dim: int = 2, hidden: int = 32):
        super().__init__()
        self.dim = dim
        self.f_cell, self.f_out = LSTMStep(dim, hidden), nn.Linear(hidden, dim)
        self.q_cell, self.q_out = LSTMStep(dim, hidden), nn.Linear(hidden, dim)
        self.r_cell, self.r_out = LSTMStep(dim, hidden), nn.Linear(hidden, dim)
        for layer in (self.f_out, self.q_out, self.r_out):
            nn.init.zeros_(layer.weight)
        nn.init.zeros_(self.f_out.bias)
        nn.init.constant_(self.q_out.bias, -2.0)  # Q ~ softplus(-2) = 0.13 at the start
        nn.init.constant_(self.r_out.bias, 0.0)  # R ~ 0.69

    def _noise(self, cell: LSTMStep, out: nn.Linear, inputs: torch.Tensor, state):
        h, c, _ = cell(inputs, state)
        return torch.nn.functional.softplus(out(h)) + 1e-4, (h, c)

    def forward(self, z: torch.Tensor, q_scale: torch.Tensor | float = 1.0,
                r_scale: torch.Tensor | float = 1.0) -> LSTMKalmanOutput:
        """Filter the tracks ``z [B, T, d]``; ``q_scale``, ``r_scale`` multiply Q_t and R_t."""
        if z.dim() != 3 or z.shape[-1] != self.dim:
            raise BayesdlError(f"lstm_kalman: z must be [sequences, time, {self.dim}], got {tuple(z.shape)}")
        T, d = z.shape[-2:]
        eye = torch.eye(d, dtype=z.dtype, device=z.device)
        f_state = q_state = r_state = None
        r_diag, r_state = self._noise(self.r_cell, self.r_out, torch.zeros_like(z[:, 0]), r_state)
        x, P = z[:, 0], torch.diag_embed(r_scale * r_diag)
        previous, innovation = x, torch.zeros_like(x)
        means, covs = [x], [P]
        log_likelihood = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for t in range(1, T):
            h, c, dh = self.f_cell(x - previous, f_state, jacobian=True)
            f_state = (h, c)
            prediction = x + self.f_out(h)
            jacobian = eye + self.f_out.weight @ dh  # d/dx_{t-1} of x_{t-1} + out(h(x_{t-1} - x_{t-2}))
            q_diag, q_state = self._noise(self.q_cell, self.q_out, prediction - x, q_state)
            r_diag, r_state = self._noise(self.r_cell, self.r_out, innovation, r_state)
            P_pred = jacobian @ P @ jacobian.transpose(-1, -2) + torch.diag_embed(q_scale * q_diag)
            S = P_pred + torch.diag_embed(r_scale * r_diag)
            innovation = z[:, t] - prediction
            L = torch.linalg.cholesky(S)
            white = torch.linalg.solve_triangular(L, innovation[..., None], upper=False)[..., 0]
            log_likelihood = log_likelihood - 0.5 * (white.pow(2).sum(-1) + d * LOG_2PI) \
                - torch.diagonal(L, dim1=-2, dim2=-1).log().sum(-1)
            gain = torch.cholesky_solve(P_pred, L).transpose(-1, -2)  # P- S^-1
            previous, x = x, prediction + (gain @ innovation[..., None])[..., 0]
            P = (eye - gain) @ P_pred
            P = 0.5 * (P + P.transpose(-1, -2))
            means.append(x)
            covs.append(P)
        return LSTMKalmanOutput(torch.stack(means, 1), torch.stack(covs, 1), log_likelihood)


def train_supervised(net: LSTMKalmanFilter, positions: torch.Tensor, observations: torch.Tensor,
                     steps: int = 300, batch_size: int = 32, lr: float = 3e-3,
                     seed: int = 0) -> list[float]:
    """Train end to end on the mean squared error of the filtered positions (Adam)."""
    generator = torch.Generator().manual_seed(seed)
    optimiser = torch.optim.Adam(net.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        index = torch.randint(0, positions.shape[0], (batch_size,), generator=generator, device="cpu")
        loss = (net(observations[index]).filtered_mean - positions[index]).pow(2).sum(-1).mean()
        optimiser.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 10.0)
        optimiser.step()
        losses.append(float(loss.detach()))
    return losses


# ------------------------------------------------------------------ the baselines
def constant_velocity_matrices(q: torch.Tensor, r: torch.Tensor, dim: int = 2):
    """F, H, Q, R of the constant-velocity model (state: position, velocity; white-noise
    acceleration of variance ``q``; observation noise ``r``)."""
    dtype = q.dtype
    eye = torch.eye(dim, dtype=dtype)
    zero = torch.zeros(dim, dim, dtype=dtype)
    F = torch.cat([torch.cat([eye, eye], 1), torch.cat([zero, eye], 1)], 0)
    H = torch.cat([eye, zero], 1)
    Q = q * torch.cat([torch.cat([eye / 3, eye / 2], 1), torch.cat([eye / 2, eye], 1)], 0)
    return F, H, Q, r * eye


def _cv_prior(z: torch.Tensor, r: torch.Tensor):
    """x_1 given z_1 under a diffuse position prior: position N(z_1, r), velocity N(0, 4)."""
    d = z.shape[-1]
    m0 = torch.cat([z[:, 0], torch.zeros_like(z[:, 0])], -1)
    P0 = torch.diag(torch.cat([r.expand(d), torch.full((d,), 4.0, dtype=z.dtype)]))
    return m0, P0


def fit_constant_velocity(observations: torch.Tensor) -> tuple[float, float]:
    """(q, r) of the constant-velocity Kalman filter maximising the likelihood of the
    training tracks (L-BFGS on log q, log r; first position z_1 with variance r)."""
    log_params = torch.zeros(2, dtype=observations.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([log_params], max_iter=100, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        q, r = log_params.exp()
        F, H, Q, R = constant_velocity_matrices(q, r)
        m0, P0 = _cv_prior(observations, r)
        loss = -kalman_log_likelihood(observations[:, 1:], F, H, Q, R, (F @ m0[..., None])[..., 0],
                                      F @ P0 @ F.T + Q).sum()
        loss.backward()
        return loss

    optimiser.step(closure)
    q, r = log_params.detach().exp()
    return float(q), float(r)


def constant_velocity_filter(observations: torch.Tensor, q: float, r: float) -> torch.Tensor:
    """Filtered positions ``[B, T, 2]`` of the constant-velocity Kalman filter."""
    qt, rt = torch.tensor(q, dtype=observations.dtype), torch.tensor(r, dtype=observations.dtype)
    F, H, Q, R = constant_velocity_matrices(qt, rt)
    m0, P0 = _cv_prior(observations, rt)
    result = kalman_filter(observations[:, 1:], F, H, Q, R, (F @ m0[..., None])[..., 0], F @ P0 @ F.T + Q)
    return torch.cat([observations[:, :1], result.filtered_mean[..., :2]], 1)


@dataclass
class Comparison:
    """Position RMSE on held-out tracks of each filter, and the raw observations'."""

    rmse: dict[str, float]
    seconds: dict[str, float]


def compare_filters(num_train: int = 256, num_test: int = 128, num_steps: int = 50,
                    train_steps: int = 300, hidden: int = 32, particles: int = 5000,
                    seed: int = 0) -> Comparison:
    """Train the LSTM-KF, fit the constant-velocity KF, run the particle filter; RMSE on test."""
    task = CoordinatedTurn()
    train_x, train_z = coordinated_turn_tracks(num_train, num_steps, seed, task)
    test_x, test_z = coordinated_turn_tracks(num_test, num_steps, seed + 1, task)
    timings, estimates = {}, {}
    torch.manual_seed(seed)
    started = time.perf_counter()
    net = LSTMKalmanFilter(hidden=hidden).double()
    train_supervised(net, train_x, train_z, steps=train_steps, seed=seed)
    with torch.no_grad():
        estimates["lstm_kalman"] = net(test_z).filtered_mean
    timings["lstm_kalman"] = time.perf_counter() - started
    started = time.perf_counter()
    q, r = fit_constant_velocity(train_z)
    estimates["kalman_cv"] = constant_velocity_filter(test_z, q, r)
    timings["kalman_cv"] = time.perf_counter() - started
    started = time.perf_counter()
    estimates["particle_filter"] = filter_series(task.state_space_model(), test_z, particles,
                                                 seed=seed).mean[..., :2]
    timings["particle_filter"] = time.perf_counter() - started
    estimates["observations"] = test_z

    def rmse(estimate):
        return float((estimate - test_x).pow(2).sum(-1).mean().sqrt())

    return Comparison({k: rmse(v) for k, v in estimates.items()}, timings)


# ------------------------------------------------------------------ the built-in model
_NETWORKS: dict[tuple, LSTMKalmanFilter] = {}


def _network(dim: int, hidden: int, dtype: torch.dtype, device: torch.device) -> LSTMKalmanFilter:
    key = (dim, hidden, dtype, str(device))
    if key not in _NETWORKS:
        generator_state = torch.random.get_rng_state()
        torch.manual_seed(0)  # the same initial network every time
        _NETWORKS[key] = LSTMKalmanFilter(dim, hidden).to(dtype=dtype, device=device)
        torch.random.set_rng_state(generator_state)
    return _NETWORKS[key]


def lstm_kalman_data(num_sequences: int = 16, num_steps: int = 30, seed: int = 0) -> dict:
    """Observed coordinated-turn tracks ``z [sequences, time, 2]`` (fixed seed)."""
    return {"z": coordinated_turn_tracks(num_sequences, num_steps, seed)[1].numpy()}


@register(
    "lstm_kalman",
    "LSTM-Kalman filter on tracking data; svi trains the LSTMs by the filter's likelihood",
    data=lstm_kalman_data,
    schema={"z": DataField(("sequence", "time", "coord"))},
)
def lstm_kalman(z, hidden: int = 16):
    """log p(z) from the LSTM-KF; latent log-scales of Q_t and R_t with N(0, 1) priors."""
    net = pyro.module("lstm_kalman", _network(z.shape[-1], hidden, z.dtype, z.device))
    log_q_scale = pyro.sample("log_q_scale", dist.Normal(torch.zeros((), dtype=z.dtype), 1.0))
    log_r_scale = pyro.sample("log_r_scale", dist.Normal(torch.zeros((), dtype=z.dtype), 1.0))
    output = net(z, log_q_scale.exp()[..., None, None], log_r_scale.exp()[..., None, None])
    pyro.factor("z_log_likelihood", output.log_likelihood.sum(-1))


__all__ = ["CoordinatedTurn", "coordinated_turn_tracks", "LSTMStep", "LSTMKalmanFilter", "LSTMKalmanOutput",
           "train_supervised", "constant_velocity_matrices", "fit_constant_velocity",
           "constant_velocity_filter", "Comparison", "compare_filters", "lstm_kalman",
           "lstm_kalman_data"]
