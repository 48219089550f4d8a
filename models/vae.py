"""Variational autoencoder (Kingma & Welling 2014) as a Pyro model/guide pair, with a pluggable prior.

    z_n ~ p(z)  (normal | gmm | dp, from :mod:`bayesdl.models.latent_priors`)
    x_n | z_n ~ Bernoulli(sigmoid(decoder(z_n)))     (likelihood=bernoulli, binarised pixels)
             or N(decoder(z_n), sigma^2 I)            (likelihood=normal, sigma learned)
    q(z_n | x_n) = N(encoder_loc(x_n), diag encoder_scale(x_n)^2)

The built-in ``vae`` trains it on the 8x8 digits bundled with bayesdl (scikit-learn's
``load_digits``; 80/20 train/test split with a fixed seed): ``bayesdl infer vae
--method svi``. Networks are ``pyro.module`` parameters (point estimates, as in the
paper); z is the latent site, so draws from the fitted guide are draws of q(z|x).

Both ELBO forms of the seed, chosen by ``elbo``:

- ``mc``: E_q[log p(x, z) - log q(z|x)] by Monte Carlo (any prior);
- ``kl``: E_q[log p(x|z)] - KL(q(z|x) || p(z)) with the KL in closed form (normal prior
  only). Implemented inside Pyro's ``Trace_ELBO`` by masking the z site out of both the
  model and the guide and entering the KL as a factor of the guide (a guide factor is
  subtracted from the ELBO), so the same ``--method svi`` trains either form.

``linear=True`` makes encoder and decoder affine with a constant encoder scale: with
``likelihood=normal`` and a normal prior this is probabilistic PCA, whose maximum
likelihood has a closed form (Tipping & Bishop 1999, :func:`ppca_max_log_likelihood`)
and whose log marginal likelihood is Gaussian (:func:`linear_vae_log_marginal`); the
ELBO is tight at the optimum (the posterior is Gaussian with diagonal covariance there).

Evaluation: :meth:`VAE.iwae` is the importance-weighted bound (Burda et al. 2016)
log (1/k) sum_i p(x, z_i) / q(z_i | x), which increases in expectation with k and tends
to log p(x). Reconstructions and samples as PNG grids: :mod:`bayesdl.model_plots`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyro
import pyro.distributions as dist
import torch
from torch import nn

from bayesdl.data_schema import DataField
from bayesdl.errors import BayesdlError
from bayesdl.models.digits import load_bundled_digits
from bayesdl.models.latent_priors import LatentPrior, StandardNormalPrior, make_latent_prior
from bayesdl.models.registry import register

LIKELIHOODS = ("bernoulli", "normal")
ELBOS = ("mc", "kl")
LOG_2PI = math.log(2 * math.pi)


# ------------------------------------------------------------------ data
def digits_split(split: str = "train", test_fraction: float = 0.2, seed: int = 0) -> np.ndarray:
    """Row indices of the train or test part of a fixed random split of the digits."""
    if split not in ("train", "test", "all"):
        raise BayesdlError(f"digits: split must be train, test or all, got {split!r}")
    if not 0 < test_fraction < 1:
        raise BayesdlError(f"digits: test_fraction must be in (0, 1), got {test_fraction}")
    order = np.random.default_rng(seed).permutation(1797)
    num_test = int(round(test_fraction * 1797))
    return {"train": order[num_test:], "test": order[:num_test], "all": np.arange(1797)}[split]


def digits_data(split: str = "train", binarize: bool = True, test_fraction: float = 0.2,
                split_seed: int = 0) -> dict[str, np.ndarray]:
    """``{"x": [n, 64]}``: pixels / 16 in [0, 1], or (``binarize``) pixels >= 8 as 0/1."""
    pixels, _ = load_bundled_digits()
    x = pixels[digits_split(split, test_fraction, split_seed)] / 16.0
    return {"x": (x >= 0.5).astype(np.float64) if binarize else x}


# ------------------------------------------------------------------ networks
class Encoder(nn.Module):
    """x -> (loc, scale) of q(z|x): an MLP, or (linear) affine loc and a constant scale."""

    def __init__(self, x_dim: int, latent_dim: int, hidden: int, linear: bool):
        super().__init__()
        self.linear = linear
        if linear:
            self.loc = nn.Linear(x_dim, latent_dim)
            self.raw_scale = nn.Parameter(torch.full((latent_dim,), -1.0))
        else:
            self.body = nn.Sequential(nn.Linear(x_dim, hidden), nn.Softplus(),
                                      nn.Linear(hidden, hidden), nn.Softplus())
            self.head = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.linear:
            loc = self.loc(x)
            return loc, nn.functional.softplus(self.raw_scale).expand_as(loc) + 1e-6
        loc, raw = self.head(self.body(x)).chunk(2, -1)
        return loc, nn.functional.softplus(raw) + 1e-4


class Decoder(nn.Module):
    """z -> parameters of p(x|z): Bernoulli logits, or a Normal mean with a learned scale."""

    def __init__(self, x_dim: int, latent_dim: int, hidden: int, linear: bool, likelihood: str):
        super().__init__()
        self.likelihood = likelihood
        if linear:
            self.net = nn.Linear(latent_dim, x_dim)
        else:
            self.net = nn.Sequential(nn.Linear(latent_dim, hidden), nn.Softplus(),
                                     nn.Linear(hidden, hidden), nn.Softplus(), nn.Linear(hidden, x_dim))
        if likelihood == "normal":
            self.log_sigma = nn.Parameter(torch.zeros(()))

    def forward(self, z: torch.Tensor) -> dist.TorchDistribution:
        out = self.net(z)
        if self.likelihood == "bernoulli":
            return dist.Bernoulli(logits=out).to_event(1)
        return dist.Normal(out, self.log_sigma.exp()).to_event(1)


class VAE(nn.Module):
    """Encoder, decoder and prior, with the Pyro ``model``/``guide`` pair and the IWAE bound."""

    def __init__(self, x_dim: int, latent_dim: int = 2, hidden: int = 128, likelihood: str = "bernoulli",
                 prior: str | LatentPrior = "normal", linear: bool = False, **prior_kwargs: Any):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise BayesdlError(f"vae: unknown likelihood {likelihood!r}; "
                               f"choose one of {', '.join(LIKELIHOODS)}")
        if latent_dim < 1 or hidden < 1:
            raise BayesdlError(f"vae: latent_dim and hidden must be >= 1, got {latent_dim}, {hidden}")
        self.x_dim, self.latent_dim, self.likelihood = x_dim, latent_dim, likelihood
        self.encoder = Encoder(x_dim, latent_dim, hidden, linear)
        self.decoder = Decoder(x_dim, latent_dim, hidden, linear, likelihood)
        self.prior = prior if isinstance(prior, LatentPrior) else make_latent_prior(prior, latent_dim,
                                                                                       **prior_kwargs)

    def _check(self, x: torch.Tensor, elbo: str) -> None:
        if x.ndim != 2 or x.shape[-1] != self.x_dim:
            raise BayesdlError(f"vae: x must be [n, {self.x_dim}], got {tuple(x.shape)}")
        if elbo not in ELBOS:
            raise BayesdlError(f"vae: unknown elbo {elbo!r}; choose one of {', '.join(ELBOS)}")
        if elbo == "kl" and not isinstance(self.prior, StandardNormalPrior):
            raise BayesdlError("vae: elbo=kl needs the closed-form KL of prior=normal; use elbo=mc")

    def model(self, x: torch.Tensor, elbo: str = "mc", batch_size: int = 0) -> None:
        """p(z) p(x|z) over the rows of ``x`` (a subsample of ``batch_size`` rows if > 0)."""
        self._check(x, elbo)
        pyro.module("vae_decoder", self.decoder)
        p_z = self.prior.pyro_distribution("vae_prior")
        with pyro.plate("data", x.shape[0], subsample_size=batch_size or None) as idx:
            z = pyro.sample("z", p_z.mask(False) if elbo == "kl" else p_z)
            pyro.sample("x", self.decoder(z), obs=x[idx])

    def guide(self, x: torch.Tensor, elbo: str = "mc", batch_size: int = 0) -> None:
        """q(z|x); with ``elbo="kl"`` the closed-form KL enters as a factor (see module docstring)."""
        self._check(x, elbo)
        pyro.module("vae_encoder", self.encoder)
        with pyro.plate("data", x.shape[0], subsample_size=batch_size or None) as idx:
            loc, scale = self.encoder(x[idx])
            q = dist.Normal(loc, scale).to_event(1)
            if elbo == "kl":
                pyro.sample("z", q.mask(False))
                pyro.factor("kl", StandardNormalPrior.kl_from_normal(loc, scale), has_rsample=True)
            else:
                pyro.sample("z", q)

    def log_weights(self, x: torch.Tensor, num_samples: int) -> torch.Tensor:
        """log p(x, z_i) - log q(z_i | x) for z_i ~ q(z|x): ``[num_samples, n]``."""
        loc, scale = self.encoder(x)
        q = dist.Normal(loc, scale).to_event(1)
        z = q.sample((num_samples,))
        return self.decoder(z).log_prob(x) + self.prior.log_prob(z) - q.log_prob(z)

    @torch.no_grad()
    def iwae(self, x: torch.Tensor, num_samples: int, chunk: int = 250_000) -> torch.Tensor:
        """The IWAE bound log (1/k) sum_i w_i per row of ``x`` ``[n]`` (k = ``num_samples``).

        Rows are processed in blocks so that at most ``chunk`` (sample, row) pairs live at once.
        """
        if num_samples < 1:
            raise BayesdlError(f"iwae: num_samples must be >= 1, got {num_samples}")
        rows = max(1, chunk // num_samples)
        out = [torch.logsumexp(self.log_weights(x[i:i + rows], num_samples), 0) - math.log(num_samples)
               for i in range(0, x.shape[0], rows)]
        return torch.cat(out)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z = encoder mean of x) ``[n, x_dim]``."""
        return self.decoder(self.encoder(x)[0]).mean

    @torch.no_grad()
    def generate(self, num: int) -> torch.Tensor:
        """Means of p(x|z) at ``num`` draws z ~ p(z) ``[num, x_dim]``."""
        return self.decoder(self.prior.sample((num,))).mean


# ------------------------------------------------------------------ the built-in
_CACHE: dict[tuple, VAE] = {}


def get_vae(x: torch.Tensor, latent_dim: int = 2, hidden: int = 128, likelihood: str = "bernoulli",
            prior: str = "normal", linear: bool = False, num_components: int = 10, alpha: float = 1.0,
            truncation: int = 20) -> VAE:
    """The VAE the built-in ``vae`` uses for data like ``x`` with these arguments.

    One instance per configuration, kept while its parameters are in Pyro's param store;
    after ``pyro.clear_param_store()`` it is rebuilt with a fixed initialisation (seed 0),
    so a fit does not depend on earlier fits.
    """
    prior_kwargs: dict[str, Any] = {}
    if prior == "gmm":
        prior_kwargs = {"num_components": num_components}
    elif prior == "dp":
        prior_kwargs = {"alpha": alpha, "truncation": truncation}
    key = (x.shape[-1], latent_dim, hidden, likelihood, prior, linear, tuple(prior_kwargs.items()),
           x.dtype, str(x.device))
    net = _CACHE.get(key)
    names = pyro.get_param_store().keys()
    if net is None or not any(n.startswith("vae_decoder$$$") for n in names):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            net = VAE(x.shape[-1], latent_dim, hidden, likelihood, prior, linear, **prior_kwargs)
        net = net.to(dtype=x.dtype, device=x.device)
        _CACHE[key] = net
    return net


def _checked(x: torch.Tensor, likelihood: str) -> None:
    if likelihood == "bernoulli" and bool(((x != 0) & (x != 1)).any()):
        raise BayesdlError("vae: likelihood=bernoulli needs 0/1 pixels; use --arg binarize=true "
                           "or --arg likelihood=normal")


def vae_guide(x, latent_dim: int = 2, hidden: int = 128, likelihood: str = "bernoulli", prior: str = "normal",
              elbo: str = "mc", linear: bool = False, num_components: int = 10, alpha: float = 1.0,
              truncation: int = 20, batch_size: int = 0):
    """The amortised guide q(z|x) of the built-in ``vae`` (same arguments as the model)."""
    get_vae(x, latent_dim, hidden, likelihood, prior, linear, num_components, alpha,
            truncation).guide(x, elbo, batch_size)


@register(
    "vae",
    "Variational autoencoder on the bundled 8x8 digits (--method svi; prior normal|gmm|dp, elbo mc|kl)",
    data=digits_data,
    schema={"x": DataField(("obs", "pixel"))},
    guide=vae_guide,
    dims={"z": ["obs", "latent"], "x": ["obs", "pixel"]},
)
def vae(x, latent_dim: int = 2, hidden: int = 128, likelihood: str = "bernoulli", prior: str = "normal",
        elbo: str = "mc", linear: bool = False, num_components: int = 10, alpha: float = 1.0,
        truncation: int = 20, batch_size: int = 0):
    _checked(x, likelihood)
    get_vae(x, latent_dim, hidden, likelihood, prior, linear, num_components, alpha,
            truncation).model(x, elbo, batch_size)




# ------------------------------------------------------------------ probabilistic PCA (checks)
def ppca_max_log_likelihood(x: torch.Tensor, latent_dim: int) -> torch.Tensor:
    """Maximum over (W, mu, sigma) of the PPCA log-likelihood of ``x [n, d]`` (Tipping & Bishop 1999).

    With lambda_j the eigenvalues of the sample covariance (divisor n), sigma^2 = the mean
    of the d - q smallest and the maximum is
    -n/2 (d log 2 pi + sum_{j<=q} log lambda_j + (d - q) log sigma^2 + d).
    """
    n, d = x.shape
    centred = x - x.mean(0)
    eig = torch.linalg.eigvalsh(centred.T @ centred / n).flip(0)
    sigma2 = eig[latent_dim:].mean()
    return -0.5 * n * (d * LOG_2PI + eig[:latent_dim].log().sum() + (d - latent_dim) * sigma2.log() + d)


def linear_vae_log_marginal(net: VAE, x: torch.Tensor) -> torch.Tensor:
    """Exact log p(x_n) ``[n]`` of a linear-decoder, normal-likelihood, normal-prior VAE:
    x ~ N(b, W W' + sigma^2 I)."""
    if not isinstance(net.decoder.net, nn.Linear) or net.likelihood != "normal" or \
            not isinstance(net.prior, StandardNormalPrior):
        raise BayesdlError("linear_vae_log_marginal needs linear=True, likelihood=normal, prior=normal")
    W, b = net.decoder.net.weight, net.decoder.net.bias
    cov = W @ W.T + net.decoder.log_sigma.exp().pow(2) * torch.eye(x.shape[-1], dtype=x.dtype)
    return dist.MultivariateNormal(b, covariance_matrix=cov).log_prob(x)
