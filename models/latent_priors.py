"""Latent priors p(z) for deep generative models (the VAE of issue 9, the Bayesian GAN of issue 6).

Every prior is a small ``torch.nn.Module`` over ``z`` of shape ``[..., dim]``:

    prior = make_latent_prior("gmm", dim=2, num_components=10)   # or "normal", "dp"
    z = prior.sample((64,))                  # [64, dim], current parameter values
    lp = prior.log_prob(z)                   # [64]; differentiable in z (HMC on p(z)) and params
    r = prior.responsibilities(z)            # [64, K] (mixtures only): p(component k | z)
    prior.weights()                          # [K] mixture weights (mixtures only)

Inside a Pyro model, ``pyro_distribution(name)`` registers the prior's parameters with
Pyro (``pyro.module(name, prior)``, so SVI learns them), adds the DP's stick-breaking
prior as a ``pyro.factor`` (MAP of the truncated DP), and returns a Pyro distribution
with ``event_shape [dim]`` to sample ``z`` from:

    def model(x):
        p_z = prior.pyro_distribution("prior")
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", p_z)
            ...

For a fully Bayesian treatment of the mixture's global parameters (latent sites that a
guide or MCMC infers, instead of point estimates), ``DirichletProcessPrior.sample_sites``
and ``GaussianMixturePrior.sample_sites`` draw them as Pyro sample sites
``{name}_v`` / ``{name}_weights``, ``{name}_loc`` from their priors and return the
mixture distribution they define. ``prior.fit(points)`` fits the prior's parameters to
points by maximum likelihood (MAP for the DP) with Adam, e.g. to check that the GMM and
DP recover clusters.

The classes:

- ``StandardNormalPrior(dim)``: N(0, I); no parameters. The only one with a closed-form
  KL to a diagonal Gaussian q(z|x) (``kl_from_normal``).
- ``GaussianMixturePrior(dim, num_components, learn_weights=True, init_spread=2.0)``:
  sum_k w_k N(z | mu_k, diag(sigma_k^2)), with ``w = softmax(logits)``, means and log
  scales as parameters (``logits [K]``, ``loc [K, dim]``, ``log_scale [K, dim]``).
- ``DirichletProcessPrior(dim, alpha=1.0, truncation=20, base_scale=3.0)``: a truncated
  stick-breaking DP mixture of Gaussians (Sethuraman 1994; Ishwaran & James 2001):
  v_k ~ Beta(1, alpha), w_k = v_k prod_{j<k} (1 - v_j) for k < K, w_K = the rest;
  atoms mu_k ~ N(0, base_scale^2 I). Parameters ``stick_logit [K-1]`` (v = sigmoid),
  ``loc [K, dim]``, ``log_scale [K, dim]``; ``log_prior()`` is the log density of the
  sticks (in logit space, so that the MAP is finite for alpha < 1) and atoms.

Written here rather than taken from a library because torch/Pyro have the mixture
density (``MixtureSameFamily``, used below) but no stick-breaking prior module with
learnable parameters.
"""

from __future__ import annotations

import math
from typing import Any

import pyro
import pyro.distributions as dist
import torch
from torch import nn

from bayesdl.errors import BayesdlError

__all__ = ["LatentPrior", "StandardNormalPrior", "GaussianMixturePrior", "DirichletProcessPrior",
           "make_latent_prior", "stick_breaking_weights", "PRIORS"]


def stick_breaking_weights(v: torch.Tensor) -> torch.Tensor:
    """Weights ``[..., K]`` from stick fractions ``v [..., K-1]``: w_k = v_k prod_{j<k}(1 - v_j)."""
    one = torch.ones_like(v[..., :1])
    remaining = torch.cumprod(torch.cat([one, 1 - v], -1), -1)  # prod_{j<k}(1 - v_j), k = 1..K
    return torch.cat([v, one], -1) * remaining


class LatentPrior(nn.Module):
    """Base class: a distribution over ``z [..., dim]`` built from the module's parameters."""

    dim: int
    has_log_prior: bool = False

    def distribution(self) -> dist.TorchDistribution:
        """p(z) at the current parameter values, a Pyro distribution with event_shape [dim]."""
        raise NotImplementedError

    def sample(self, shape: tuple[int, ...] | torch.Size = ()) -> torch.Tensor:
        """Draws ``[*shape, dim]`` (no gradient through the mixture's component choice)."""
        return self.distribution().sample(torch.Size(shape))

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log p(z) ``[...]`` for ``z [..., dim]``; differentiable in z and in the parameters."""
        if z.shape[-1] != self.dim:
            raise BayesdlError(f"latent prior: z has last dimension {z.shape[-1]}, expected {self.dim}")
        return self.distribution().log_prob(z)

    def log_prior(self) -> torch.Tensor:
        """Log prior density of the prior's own parameters (0 unless the prior has one)."""
        return torch.zeros((), dtype=self._dtype(), device=self._device())

    def pyro_distribution(self, name: str = "prior") -> dist.TorchDistribution:
        """Inside a Pyro model: register the parameters as ``name`` and return p(z).

        SVI then learns the parameters (point estimates); a parameter prior, if the prior
        has one (the DP), enters as ``pyro.factor(f"{name}_log_prior", ...)``.
        """
        if any(True for _ in self.parameters()):
            pyro.module(name, self)
            if self.has_log_prior:
                pyro.factor(f"{name}_log_prior", self.log_prior())
        return self.distribution()

    def fit(self, points: torch.Tensor, steps: int = 500, lr: float = 0.05, seed: int = 0) -> list[float]:
        """Fit the parameters to ``points [n, dim]`` by maximising mean log p(z) (+ log prior / n).

        Full-batch Adam; returns the loss (negative mean log density) per step.
        """
        if points.ndim != 2 or points.shape[-1] != self.dim:
            raise BayesdlError(f"latent prior fit: points must be [n, {self.dim}], got {tuple(points.shape)}")
        params = list(self.parameters())
        if not params:
            return []
        torch.manual_seed(seed)
        optimiser = torch.optim.Adam(params, lr=lr)
        points = points.to(self._dtype())
        losses = []
        for _ in range(steps):
            optimiser.zero_grad()
            loss = -(self.log_prob(points).mean() + self.log_prior() / points.shape[0])
            loss.backward()
            optimiser.step()
            losses.append(float(loss.detach()))
        return losses

    def _dtype(self) -> torch.dtype:
        p = next(iter(self.parameters()), None)
        return p.dtype if p is not None else torch.get_default_dtype()

    def _device(self) -> torch.device:
        p = next(iter(self.parameters()), None)
        return p.device if p is not None else torch.device("cpu")


class StandardNormalPrior(LatentPrior):
    """p(z) = N(0, I_dim)."""

    def __init__(self, dim: int):
        super().__init__()
        if dim < 1:
            raise BayesdlError(f"latent prior: dim must be >= 1, got {dim}")
        self.dim = dim
        self.register_buffer("_zero", torch.zeros(()))

    def distribution(self) -> dist.TorchDistribution:
        zero = self._zero
        return dist.Normal(zero.expand(self.dim), torch.ones_like(zero).expand(self.dim)).to_event(1)

    def _dtype(self) -> torch.dtype:
        return self._zero.dtype

    def _device(self) -> torch.device:
        return self._zero.device

    @staticmethod
    def kl_from_normal(loc: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """KL(N(loc, diag scale^2) || N(0, I)) summed over the last dim, in closed form."""
        return 0.5 * (loc.pow(2) + scale.pow(2) - 1 - 2 * scale.log()).sum(-1)


class _MixturePrior(LatentPrior):
    """Shared parts of the Gaussian mixtures: diagonal components, weights from a subclass."""

    loc: nn.Parameter
    log_scale: nn.Parameter

    def weights(self) -> torch.Tensor:
        """Mixture weights ``[K]`` (sum to 1)."""
        raise NotImplementedError

    def _mixture(self, weights: torch.Tensor, loc: torch.Tensor,
                 scale: torch.Tensor) -> dist.TorchDistribution:
        components = dist.Normal(loc, scale).to_event(1)
        return dist.MixtureSameFamily(dist.Categorical(probs=weights), components)

    def distribution(self) -> dist.TorchDistribution:
        return self._mixture(self.weights(), self.loc, self.log_scale.exp())

    def component_log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """log w_k + log N(z | mu_k, sigma_k^2) ``[..., K]``."""
        comp = dist.Normal(self.loc, self.log_scale.exp()).to_event(1).log_prob(z.unsqueeze(-2))
        return comp + self.weights().clamp_min(1e-30).log()

    def responsibilities(self, z: torch.Tensor) -> torch.Tensor:
        """p(component k | z) ``[..., K]``."""
        return torch.softmax(self.component_log_prob(z), -1)

    def effective_components(self, threshold: float = 0.02) -> int:
        """How many components carry more than ``threshold`` of the weight."""
        return int((self.weights() > threshold).sum())


class GaussianMixturePrior(_MixturePrior):
    """sum_k w_k N(mu_k, diag sigma_k^2) with learned weights, means and scales.

    Means start on a fixed pseudo-random spread of radius ``init_spread`` (seeded, so
    two priors built alike are equal), scales at 1, weights uniform.
    """

    def __init__(self, dim: int, num_components: int = 10, learn_weights: bool = True,
                 init_spread: float = 2.0, seed: int = 0):
        super().__init__()
        if dim < 1 or num_components < 1:
            raise BayesdlError(f"gmm prior: need dim >= 1 and num_components >= 1, got {dim}, "
                               f"{num_components}")
        self.dim, self.num_components = dim, num_components
        generator = torch.Generator().manual_seed(seed)
        loc = init_spread * torch.randn(num_components, dim, generator=generator,
                                        device="cpu").to(torch.get_default_device())
        self.loc = nn.Parameter(loc)
        self.log_scale = nn.Parameter(torch.zeros(num_components, dim))
        logits = torch.zeros(num_components)
        if learn_weights:
            self.logits = nn.Parameter(logits)
        else:
            self.register_buffer("logits", logits)

    def weights(self) -> torch.Tensor:
        return torch.softmax(self.logits, -1)

    def sample_sites(self, name: str = "prior", concentration: float = 1.0,
                     loc_scale: float = 3.0) -> dist.TorchDistribution:
        """Inside a Pyro model: weights ~ Dirichlet(concentration), means ~ N(0, loc_scale^2)
        as latent sites ``{name}_weights``, ``{name}_loc``; scales stay this module's
        parameters. Returns the mixture they define."""
        pyro.module(name, self)
        K = self.num_components
        w = pyro.sample(f"{name}_weights", dist.Dirichlet(self.loc.new_full((K,), concentration)))
        loc = pyro.sample(f"{name}_loc", dist.Normal(self.loc.new_zeros(K, self.dim), loc_scale).to_event(2))
        return self._mixture(w, loc, self.log_scale.exp())


class DirichletProcessPrior(_MixturePrior):
    """Truncated stick-breaking Dirichlet-process mixture of Gaussians (see module docstring).

    ``alpha``: concentration (small alpha -> few components used); ``truncation``: K.
    """

    has_log_prior = True

    def __init__(self, dim: int, alpha: float = 1.0, truncation: int = 20, base_scale: float = 3.0,
                 seed: int = 0):
        super().__init__()
        if dim < 1 or truncation < 2:
            raise BayesdlError(f"dp prior: need dim >= 1 and truncation >= 2, got {dim}, {truncation}")
        if not (alpha > 0 and math.isfinite(alpha)):
            raise BayesdlError(f"dp prior: alpha must be positive, got {alpha}")
        self.dim, self.num_components, self.truncation = dim, truncation, truncation
        self.alpha, self.base_scale = float(alpha), float(base_scale)
        generator = torch.Generator().manual_seed(seed)
        # sticks start at their prior mean 1 / (1 + alpha)
        self.stick_logit = nn.Parameter(torch.full((truncation - 1,), -math.log(alpha)))
        self.loc = nn.Parameter(0.5 * base_scale * torch.randn(truncation, dim, generator=generator,
                                                               device="cpu").to(torch.get_default_device()))
        self.log_scale = nn.Parameter(torch.zeros(truncation, dim))

    def sticks(self) -> torch.Tensor:
        """Stick fractions v ``[K-1]``."""
        return torch.sigmoid(self.stick_logit)

    def weights(self) -> torch.Tensor:
        return stick_breaking_weights(self.sticks())

    def log_prior(self) -> torch.Tensor:
        """log p(logit v) under v ~ Beta(1, alpha) plus log N(mu_k | 0, base_scale^2 I)."""
        logit = self.stick_logit
        # log Beta(1, a) density of v plus the Jacobian log v (1 - v): log a + log v + a log(1 - v)
        sticks = (math.log(self.alpha) + nn.functional.logsigmoid(logit)
                  + self.alpha * nn.functional.logsigmoid(-logit)).sum()
        atoms = dist.Normal(torch.zeros_like(self.loc), self.base_scale).log_prob(self.loc).sum()
        return sticks + atoms

    def sample_sites(self, name: str = "prior") -> dist.TorchDistribution:
        """Inside a Pyro model: sticks v ~ Beta(1, alpha) and atoms mu ~ N(0, base_scale^2) as
        latent sites ``{name}_v [K-1]``, ``{name}_loc [K, dim]``; scales stay this module's
        parameters. Returns the mixture they define."""
        pyro.module(name, self)
        K = self.truncation
        one = self.loc.new_ones(K - 1)
        v = pyro.sample(f"{name}_v", dist.Beta(one, self.alpha * one).to_event(1))
        loc = pyro.sample(f"{name}_loc",
                          dist.Normal(self.loc.new_zeros(K, self.dim), self.base_scale).to_event(2))
        return self._mixture(stick_breaking_weights(v), loc, self.log_scale.exp())


PRIORS: dict[str, type[LatentPrior]] = {
    "normal": StandardNormalPrior, "gmm": GaussianMixturePrior, "dp": DirichletProcessPrior,
}


def make_latent_prior(kind: str, dim: int, **kwargs: Any) -> LatentPrior:
    """The prior named ``kind`` (normal | gmm | dp) over ``dim`` latent dimensions.

    ``kwargs`` go to the class: ``num_components`` (gmm), ``alpha``, ``truncation`` (dp), ...
    """
    if kind not in PRIORS:
        raise BayesdlError(f"unknown latent prior {kind!r}; choose one of {', '.join(PRIORS)}")
    try:
        return PRIORS[kind](dim, **kwargs)
    except TypeError as err:
        raise BayesdlError(f"latent prior {kind!r}: {err}") from None
