"""Bayesian image segmentation: a Potts label field with Gaussian noise per segment.

Every pixel ``y_ij`` has a label ``z_ij`` in ``0..q-1`` under a Potts prior with coupling
``beta`` on the periodic lattice, and ``y_ij ~ Normal(mu[z_ij], sigma[z_ij])``. The
segment means and variances are unknown, with the conjugate prior
``sigma2_k ~ InverseGamma(a0, b0)``, ``mu_k | sigma2_k ~ Normal(m0_k, sigma2_k / kappa0)``,
restricted to increasing means (``mu_0 < mu_1 < ...``) so that segments cannot swap
names. As for mixtures (Richardson & Green 1997) the prior is scaled to the data: the
``m0_k`` are evenly spaced over the 1%-99% range of ``y`` and the prior mean of ``sigma2_k`` is
``var(y) / q`` (``kappa0 = 1``, ``a0 = 10``, worth 1 and 20 pixels): weak next to the
data, but it keeps an emptied segment near the data, so that a chain does not get stuck
with a segment no pixel will join (the multimodality of mixtures). Given the labels, the posterior of
(mu_k, sigma2_k) is Normal-InverseGamma in closed form (``conjugate_posterior``; the
ordering removes no visible mass when segments are well separated): the tests' reference.

The default data is a generated image (``--arg size=32 --arg noise=0.4``): ``q``
concentric rings around an off-centre point, segment ``k`` with mean ``k`` and noise
scale ``noise * (1 + k / (2 (q - 1)))``; ``segmentation_truth`` returns the true labels.

    bayesdl infer potts_segmentation --method sw+mh
"""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import OrderedTransform

from bayesdl.data_schema import DataField
from bayesdl.errors import BayesdlError
from bayesdl.inference.potts import Potts, PottsGraph
from bayesdl.models.registry import register

PRIOR_KAPPA = 1.0  # kappa0: prior sd of mu_k is sigma_k
PRIOR_SHAPE = 10.0  # a0: sigma2_k's prior has mean var(y) / q and sd a third of that


def prior_parameters(y: torch.Tensor | np.ndarray, q: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(m0 [q], b0)``: the prior centres of the segment means, evenly spaced over the
    data's 1%-99% range, and the prior rate of the variances."""
    y = torch.as_tensor(y)
    low, high = torch.quantile(y.reshape(-1), torch.tensor([0.01, 0.99], dtype=y.dtype,
                                                            device=y.device))
    levels = (torch.arange(q, dtype=y.dtype, device=y.device) + 0.5) / q
    return low + levels * (high - low), (PRIOR_SHAPE - 1.0) * y.var() / q


def segmentation_truth(size: int = 32, q: int = 3, noise: float = 0.4
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(labels [size, size], means [q], scales [q])`` of the generated image."""
    if size < 3 or q < 2:
        raise BayesdlError(f"the generated image needs size >= 3 and q >= 2, got {size}, {q}")
    rows, cols = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    centre = (0.45 * size, 0.55 * size)
    radius = np.hypot(rows - centre[0], cols - centre[1]) / (0.5 * size)
    labels = np.minimum((radius * q).astype(int), q - 1)
    labels = q - 1 - labels  # the centre gets the largest mean
    means = np.arange(q, dtype=float)
    scales = noise * (1.0 + np.arange(q) / (2.0 * max(q - 1, 1)))
    return labels, means, scales


def potts_segmentation_data(size: int = 32, q: int = 3, noise: float = 0.4, seed: int = 0) -> dict:
    """A noisy ``size x size`` image of ``q`` segments (fixed seed)."""
    labels, means, scales = segmentation_truth(size, q, noise)
    rng = np.random.default_rng(seed)
    return {"y": means[labels] + scales[labels] * rng.normal(size=labels.shape)}


@register(
    "potts_segmentation",
    "image segmentation: Potts labels, Gaussian noise per segment, unknown means and scales",
    data=potts_segmentation_data,
    schema={"y": DataField(("row", "col"))},
    dims={"z": ["row", "col"], "mu": ["segment"], "sigma2": ["segment"], "sigma": ["segment"],
          "y": ["row", "col"]},
)
def potts_segmentation(y, q: int = 3, beta: float = 1.0):
    if isinstance(q, bool) or int(q) != q or q < 2:
        raise BayesdlError(f"q (the number of segments) must be an integer >= 2, got {q!r}")
    rows, cols = y.shape
    m0, b0 = prior_parameters(y, q)
    sigma2 = pyro.sample("sigma2", dist.InverseGamma(torch.full((q,), PRIOR_SHAPE),
                                                     b0.expand(q)).to_event(1))
    # mu's site is a proper distribution on increasing vectors near the quantiles (so Pyro,
    # and --opt init=prior, draw sensible starts); the factor then swaps its density for
    # the conjugate prior restricted to increasing vectors
    transform = OrderedTransform()
    ordered = dist.TransformedDistribution(
        dist.Normal(transform.inv(m0), 0.1 * b0.sqrt()).to_event(1), [transform])
    mu = pyro.sample("mu", ordered)
    prior = dist.Normal(m0, (sigma2 / PRIOR_KAPPA).sqrt()).log_prob(mu).sum(-1)
    pyro.factor("mu_prior", prior - ordered.log_prob(mu))
    pyro.deterministic("sigma", sigma2.sqrt())
    z = pyro.sample("z", Potts(q, PottsGraph.lattice(rows, cols), beta))
    with pyro.plate("row", rows, dim=-2), pyro.plate("col", cols, dim=-1):
        pyro.sample("y", dist.Normal(mu[z], sigma2.sqrt()[z]), obs=y)


def conjugate_posterior(y: np.ndarray, labels: np.ndarray, q: int) -> dict[str, np.ndarray]:
    """Posterior means and sds of ``mu`` and ``sigma2`` given the labels (Normal-InvGamma)."""
    out = {k: np.zeros(q) for k in ("mu_mean", "mu_sd", "sigma2_mean", "sigma2_sd")}
    m0, b0 = (t.numpy() for t in prior_parameters(torch.as_tensor(y, dtype=torch.float64), q))
    for k in range(q):
        values = y[labels == k]
        n, mean = values.size, values.mean()
        kappa = PRIOR_KAPPA + n
        a = PRIOR_SHAPE + n / 2
        b = (b0 + 0.5 * ((values - mean) ** 2).sum()
             + PRIOR_KAPPA * n * (mean - m0[k]) ** 2 / (2 * kappa))
        out["mu_mean"][k] = (PRIOR_KAPPA * m0[k] + n * mean) / kappa
        out["mu_sd"][k] = np.sqrt(b / (kappa * (a - 1)))
        out["sigma2_mean"][k] = b / (a - 1)
        out["sigma2_sd"][k] = b / ((a - 1) * np.sqrt(a - 2))
    return out
