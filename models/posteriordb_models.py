"""Posteriors from posteriordb (Magnusson, Bürkner & Vehtari), written as Pyro models.

Each follows its Stan program in ``../shared/reference/posteriordb`` (BSD-3; data
bundled in ``models/data`` with the same attribution); the tests compare our draws
with posteriordb's reference draws. Eight schools (non-centred) is in
:mod:`bayesdl.models.eight_schools`.
"""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro.distributions.transforms import OrderedTransform

from bayesdl.data_schema import DataField
from bayesdl.models.registry import bundled_json, register


@register(
    "arK",
    "AR(5) autoregression of a simulated series, T = 200 (posteriordb arK-arK)",
    data=lambda: bundled_json("ark.json"),
    schema={"K": DataField(kind="size"), "T": DataField(kind="size"), "y": DataField(("T",))},
    dims={"beta": ["lag"], "y": ["time"]},
)
def ark(K, T, y):
    alpha = pyro.sample("alpha", dist.Normal(0.0, 10.0))
    beta = pyro.sample("beta", dist.Normal(0.0, 10.0).expand([K]).to_event(1))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    # lagged[t, k] = y[t - (k + 1)] for t = K .. T-1 (0-based)
    lagged = torch.stack([y[K - k - 1 : T - k - 1] for k in range(K)], dim=-1)
    with pyro.plate("time", T - K):
        pyro.sample("y", dist.Normal(alpha + lagged @ beta, sigma), obs=y[K:])


@register(
    "gp_pois_regr",
    "latent Gaussian process with a Poisson likelihood, N = 11 (posteriordb gp_pois_regr)",
    data=lambda: bundled_json("gp_pois_regr.json"),
    schema={"N": DataField(kind="size"), "x": DataField(("N",)),
            "k": DataField(("N",), kind="int")},
    dims={"f": ["point"], "f_tilde": ["point"], "k": ["point"]},
)
def gp_pois_regr(N, x, k):
    rho = pyro.sample("rho", dist.Gamma(25.0, 4.0))
    alpha = pyro.sample("alpha", dist.HalfNormal(2.0))
    f_tilde = pyro.sample("f_tilde", dist.Normal(0.0, 1.0).expand([N]).to_event(1))
    distance2 = (x[:, None] - x[None, :]) ** 2
    cov = alpha**2 * torch.exp(-distance2 / (2 * rho**2))
    cov = cov + 1e-10 * torch.eye(N, dtype=x.dtype, device=x.device)
    f = pyro.deterministic("f", torch.linalg.cholesky(cov) @ f_tilde)
    with pyro.plate("point", N):
        pyro.sample("k", dist.Poisson(f.exp()), obs=k)


@register(
    "kidiq",
    "child test scores on mother's IQ, flat prior on beta (posteriordb kidiq-kidscore_momiq)",
    data=lambda: bundled_json("kidiq.json"),
    schema={"N": DataField(kind="size"), "kid_score": DataField(("N",)),
            "mom_iq": DataField(("N",))},
    dims={"beta": ["coefficient"], "kid_score": ["child"]},
)
def kidiq(N, kid_score, mom_iq):
    # flat prior (Stan's implicit one): a masked density, so init can still sample it
    beta = pyro.sample("beta", dist.Normal(0.0, 1.0).expand([2]).to_event(1).mask(False))
    sigma = pyro.sample("sigma", dist.HalfCauchy(2.5))
    with pyro.plate("child", N):
        pyro.sample("kid_score", dist.Normal(beta[0] + beta[1] * mom_iq, sigma), obs=kid_score)


@register(
    "low_dim_gauss_mix",
    "two-component 1-D Gaussian mixture, ordered means, N = 1000 (posteriordb)",
    data=lambda: bundled_json("low_dim_gauss_mix.json"),
    schema={"N": DataField(kind="size"), "y": DataField(("N",))},
    dims={"mu": ["component"], "sigma": ["component"], "y": ["obs"]},
)
def low_dim_gauss_mix(N, y):
    # flat on ordered vectors (masked, so init can sample it); the prior is the factor
    ordered = dist.TransformedDistribution(dist.Normal(0.0, 1.0).expand([2]).to_event(1),
                                           OrderedTransform())
    mu = pyro.sample("mu", ordered.mask(False))
    pyro.factor("mu_prior", dist.Normal(0.0, 2.0).log_prob(mu).sum())
    sigma = pyro.sample("sigma", dist.HalfNormal(2.0).expand([2]).to_event(1))
    theta = pyro.sample("theta", dist.Beta(5.0, 5.0))
    weights = torch.stack([theta, 1 - theta])
    with pyro.plate("obs", N):
        pyro.sample("y", dist.MixtureSameFamily(dist.Categorical(probs=weights),
                                                dist.Normal(mu, sigma)), obs=y)
