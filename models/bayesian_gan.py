"""Bayesian GAN (Saatchi & Wilson 2017): SGHMC over generator and discriminator weights.

The generator ``G(z; theta_g)`` and the discriminator ``D(x; theta_d)`` (``K + 1``
logits, class 0 = "generated") are small MLPs whose weights are flat vectors; ``J_g``
generator and ``J_d`` discriminator samples are the chains of two
:class:`~bayesdl.inference.sghmc.SGHMCKernel` s that alternate, each on its conditional
posterior with ``z`` marginalised by simple Monte Carlo (``num_z`` draws from p(z) per
step, averaged over the other network's samples):

    log p(theta_g | .) = (N / n_z) sum_i mean_k log(1 - D_k(fake | G(z_i))) + log p(theta_g)
    log p(theta_d | .) = (N / n) sum_real log(1 - D(fake | x)) + (N / n_z) mean_j sum_i
                         log D(fake | G_j(z_i)) + (N_l / n_l) sum_labelled log D(y | x)
                         + log p(theta_d)

with Gaussian priors on the weights and mini-batches of size ``n`` from ``N`` data
points. Unsupervised is ``K = 1``; semi-supervised (``K`` classes, a few labels) uses
the labelled term too and classifies by ``argmax_{y >= 1}`` of the discriminator samples'
averaged class probabilities. ``p(z)`` is any prior of :mod:`bayesdl.models.latent_priors`
(standard normal, Gaussian mixture, stick-breaking DP), used at its initial parameters.
The ``num_z`` draws per step are exact ancestral draws (``latent_sampler="exact"``) or
the current states of ``num_z`` persistent HMC / NUTS chains on p(z)
(``latent_sampler="hmc"`` / ``"nuts"``, :class:`~bayesdl.models.latent_hmc.LatentHMC`):
warmed up once, then ``latent_hmc_steps`` transitions per iteration.

The maximum-likelihood GAN the paper compares against is the same code with one sample
of each network, no prior and no injected noise (SGD with momentum on the same
objectives): :func:`train_gan` with ``bayesian=False``. Written by hand: no library has
a Bayesian GAN; the networks are batched over samples with ``torch.baddbmm`` so all
``J`` samples run in one call.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from bayesdl.device import generator_device
from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.sghmc import SGHMCKernel
from bayesdl.models.latent_hmc import LatentHMC
from bayesdl.models.latent_priors import LatentPrior, make_latent_prior

LATENT_SAMPLERS = ("exact", "hmc", "nuts")


class BatchedMLP:
    """An MLP whose weights are rows of a ``[J, P]`` matrix: ``J`` networks in one call."""

    def __init__(self, sizes: list[int]):
        self.sizes = sizes
        self.shapes = [(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        self.num_params = sum(a * b + b for a, b in self.shapes)

    def init(self, num: int, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """``[num, P]`` weights drawn as torch.nn.Linear draws them (uniform, +-1/sqrt(fan_in))."""
        parts = []
        for a, b in self.shapes:
            bound = 1 / math.sqrt(a)
            parts.append((2 * torch.rand(num, a * b + b, generator=generator, dtype=dtype,
                                         device=generator_device(generator)) - 1) * bound)
        return torch.cat(parts, -1).to(torch.get_default_device())

    def __call__(self, params: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """``params [J, P]``, ``x [J, n, in]`` -> ``[J, n, out]`` (leaky ReLU between layers)."""
        offset = 0
        h = x
        for layer, (a, b) in enumerate(self.shapes):
            w = params[:, offset:offset + a * b].reshape(-1, a, b)
            bias = params[:, offset + a * b:offset + a * b + b]
            offset += a * b + b
            h = torch.baddbmm(bias[:, None, :], h, w)
            if layer < len(self.shapes) - 1:
                h = F.leaky_relu(h, 0.2)
        return h


@dataclass
class GANSettings:
    """Settings of :func:`train_gan` (defaults sized for 8x8 digits on a small CPU)."""

    latent_dim: int = 10
    hidden: int = 64
    num_classes: int = 1  # K; 1 = unsupervised
    latent_prior: str = "normal"  # normal | gmm | dp
    latent_sampler: str = "exact"  # exact (ancestral draws) | hmc | nuts (persistent chains on p(z))
    latent_hmc_warmup: int = 100  # warm-up transitions of the z chains (hmc / nuts), once
    latent_hmc_steps: int = 1  # transitions of the z chains per iteration (hmc / nuts)
    generator_samples: int = 2
    discriminator_samples: int = 2
    num_z: int = 32
    batch_size: int = 32
    iterations: int = 1000
    learning_rate: float = 0.05  # per data point: the kernels use learning_rate / N
    friction: float = 0.1
    prior_sd: float = 1.0
    bayesian: bool = True
    seed: int = 0


@dataclass
class GANResult:
    generator: torch.Tensor  # [J_g, P_g]
    discriminator: torch.Tensor  # [J_d, P_d]
    settings: GANSettings
    prior: LatentPrior
    seconds: float
    iterations_per_second: float
    history: list[dict[str, float]] = field(default_factory=list)

    def sample(self, num: int, seed: int = 0) -> torch.Tensor:
        """``num`` images per generator sample ``[J_g, num, 64]`` (z by ancestral sampling)."""
        torch.manual_seed(seed)
        z = self.prior.sample((self.generator.shape[0], num)).to(self.generator)
        net = BatchedMLP(_generator_sizes(self.settings, z.shape[-1], self.generator))
        return torch.sigmoid(net(self.generator, z))

    def class_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """``[n, K]`` real-class probabilities averaged over the discriminator samples."""
        net = BatchedMLP(_discriminator_sizes(self.settings, x.shape[-1]))
        logits = net(self.discriminator, x.expand(self.discriminator.shape[0], -1, -1))
        return torch.softmax(logits[..., 1:], -1).mean(0)

    def accuracy(self, x: torch.Tensor, y: torch.Tensor) -> float:
        """Test accuracy of the semi-supervised classifier (labels ``y`` in 0..K-1)."""
        return float((self.class_probabilities(x).argmax(-1) == y).double().mean())


def _generator_sizes(settings: GANSettings, latent_dim: int, params: torch.Tensor | None = None
                     ) -> list[int]:
    return [latent_dim, settings.hidden, settings.hidden, 64]


def _discriminator_sizes(settings: GANSettings, data_dim: int) -> list[int]:
    return [data_dim, settings.hidden, settings.num_classes + 1]


def _log_fake(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(log p(fake), log(1 - p(fake)))`` from ``[..., K + 1]`` logits."""
    total = torch.logsumexp(logits, -1)
    return logits[..., 0] - total, torch.logsumexp(logits[..., 1:], -1) - total


def train_gan(data: torch.Tensor, settings: GANSettings | None = None,
              labels: torch.Tensor | None = None, labelled: torch.Tensor | None = None) -> GANResult:
    """Train a (Bayesian) GAN on ``data [N, 64]`` in [0, 1] (see the module docstring).

    Semi-supervised: ``settings.num_classes = K > 1``, ``labels [N]`` in 0..K-1 and
    ``labelled`` the indices of the rows whose labels may be used.
    """
    settings = settings or GANSettings()
    if data.dim() != 2 or not bool(torch.isfinite(data).all()):
        raise BayesdlError("GAN data must be a finite [N, D] tensor")
    semi = settings.num_classes > 1
    if semi and (labels is None or labelled is None or len(labelled) == 0):
        raise BayesdlError("semi-supervised GAN (num_classes > 1) needs labels and labelled indices")
    if settings.latent_sampler not in LATENT_SAMPLERS:
        raise BayesdlError(f"unknown latent_sampler {settings.latent_sampler!r}; choose one of "
                           f"{', '.join(LATENT_SAMPLERS)}")
    n_data, data_dim = data.shape
    dtype = data.dtype
    generator = torch.Generator().manual_seed(settings.seed)
    torch.manual_seed(settings.seed)
    prior = make_latent_prior(settings.latent_prior, settings.latent_dim).to(dtype)
    latent_chains = None if settings.latent_sampler == "exact" else LatentHMC(
        prior, settings.num_z, settings.latent_hmc_warmup, settings.latent_hmc_steps,
        kernel=settings.latent_sampler, seed=settings.seed)
    g_net = BatchedMLP(_generator_sizes(settings, settings.latent_dim))
    d_net = BatchedMLP(_discriminator_sizes(settings, data_dim))
    jg = settings.generator_samples if settings.bayesian else 1
    jd = settings.discriminator_samples if settings.bayesian else 1
    theta_g = g_net.init(jg, generator, dtype)
    theta_d = d_net.init(jd, generator, dtype)
    prior_weight = 1.0 / settings.prior_sd**2 if settings.bayesian else 0.0
    current = {"g": theta_g, "d": theta_d, "batch": data[:1], "z": None}

    def fakes(theta: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(g_net(theta, current["z"].expand(theta.shape[0], -1, -1)))

    def generator_log_post(theta: torch.Tensor, step: int):
        theta = theta.detach().requires_grad_()
        x_fake = fakes(theta)  # [J_g, n_z, D]
        logits = d_net(current["d"].repeat_interleave(jg, 0),
                       x_fake.repeat(jd, 1, 1))  # [J_d * J_g, n_z, K+1], d-major
        _, log_real = _log_fake(logits)
        lik = log_real.reshape(jd, jg, -1).mean(0).sum(-1) * n_data / settings.num_z
        lp = lik - 0.5 * prior_weight * (theta**2).sum(-1)
        grad, = torch.autograd.grad(lp.sum(), theta)
        return lp.detach(), grad

    def discriminator_log_post(theta: torch.Tensor, step: int):
        theta = theta.detach().requires_grad_()
        batch = current["batch"]
        real_logits = d_net(theta, batch.expand(theta.shape[0], -1, -1))
        _, log_real = _log_fake(real_logits)
        with torch.no_grad():
            x_fake = fakes(current["g"]).reshape(1, -1, data_dim)  # all generator samples
        log_fake, _ = _log_fake(d_net(theta, x_fake.expand(theta.shape[0], -1, -1)))
        lik = (log_real.sum(-1) * n_data / batch.shape[1]
               + log_fake.sum(-1) * n_data / x_fake.shape[1])
        if semi:
            lab_x, lab_y = current["labelled"]
            lab_logits = d_net(theta, lab_x.expand(theta.shape[0], -1, -1))
            log_class = lab_logits.gather(-1, (lab_y + 1).expand(theta.shape[0], -1)[..., None])[..., 0]
            lik = lik + (log_class - torch.logsumexp(lab_logits, -1)).sum(-1) * n_data / lab_x.shape[1]
        lp = lik - 0.5 * prior_weight * (theta**2).sum(-1)
        grad, = torch.autograd.grad(lp.sum(), theta)
        return lp.detach(), grad

    lr = settings.learning_rate / n_data
    g_kernel = SGHMCKernel(generator_log_post, lr, settings.friction)
    d_kernel = SGHMCKernel(discriminator_log_post, lr, settings.friction)
    if not settings.bayesian:  # plain ML GAN: no injected noise (SGD with momentum)
        g_kernel.injected_variance = d_kernel.injected_variance = lambda v: torch.zeros(())
    g_rng = ChainRNG([settings.seed * 7_919 + j for j in range(jg)])
    d_rng = ChainRNG([settings.seed * 7_919 + 10_000 + j for j in range(jd)])

    def refresh(step: int) -> None:
        index = torch.randint(0, n_data, (settings.batch_size,), generator=generator,
                              device=generator_device(generator))
        current["batch"] = data[index][None]
        z = prior.sample((settings.num_z,)) if latent_chains is None else latent_chains.sample()
        current["z"] = z.to(dtype)[None]
        if semi:
            pick = labelled[torch.randint(0, len(labelled), (min(settings.batch_size, len(labelled)),),
                                          generator=generator, device=generator_device(generator))]
            current["labelled"] = (data[pick][None], labels[pick][None])

    refresh(0)
    g_state = g_kernel.init(theta_g)
    d_state = d_kernel.init(theta_d)
    history: list[dict[str, float]] = []
    started = time.perf_counter()
    for step in range(settings.iterations):
        refresh(step)
        with torch.no_grad():
            d_state = d_kernel.reevaluate(d_state)  # minibatch and z changed
            d_state, _ = d_kernel.step(d_rng, step, d_state, False)
            current["d"] = d_state.position
            g_state = g_kernel.reevaluate(g_state)
            g_state, _ = g_kernel.step(g_rng, step, g_state, False)
            current["g"] = g_state.position
        if not bool(torch.isfinite(g_state.position).all() & torch.isfinite(d_state.position).all()):
            raise BayesdlError(f"GAN training diverged at iteration {step}; lower learning_rate")
        if step % 100 == 0 or step == settings.iterations - 1:
            record = {"iteration": step, "d_log_post": float(d_state.log_density.mean()),
                      "g_log_post": float(g_state.log_density.mean())}
            if latent_chains is not None:
                record["latent_accept"] = float(latent_chains.last_info.acceptance_rate.mean())
            history.append(record)
    seconds = time.perf_counter() - started
    return GANResult(g_state.position, d_state.position, settings, prior, seconds,
                     settings.iterations / max(seconds, 1e-12), history)


def choose_labelled(labels: torch.Tensor, num_labelled: int, num_classes: int, seed: int = 0
                    ) -> torch.Tensor:
    """Indices of ``num_labelled`` rows, as balanced over the classes as possible (seeded)."""
    generator = torch.Generator().manual_seed(seed)
    per_class = [torch.nonzero(labels == k)[:, 0] for k in range(num_classes)]
    picks = []
    for k, rows in enumerate(per_class):
        count = num_labelled // num_classes + (1 if k < num_labelled % num_classes else 0)
        picks.append(rows[torch.randperm(len(rows), generator=generator, device="cpu")[:count]])
    return torch.cat(picks)
