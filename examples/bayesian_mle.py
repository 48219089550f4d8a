"""Maximum likelihood next to Bayes, each against its closed form.

    python examples/bayesian_mle.py

Gaussian mean and variance (MLE vs the normal-inverse-gamma posterior), a coin's
probability (MLE vs the Beta posterior), the multivariate Gaussian MLE, KL(N1 || N2)
in closed form vs Monte Carlo, and fitting q by minimising KL(data || q), which is
maximum likelihood.
"""

import pyro.distributions as dist
import torch

import bayesdl
from bayesdl.models.mle_examples import (
    bernoulli_ml,
    bernoulli_mle_data,
    beta_posterior,
    fit_gaussian_by_kl,
    gaussian_kl,
    gaussian_ml,
    gaussian_mle_data,
    monte_carlo_kl,
    multivariate_gaussian_ml,
    normal_inverse_gamma_posterior,
)

y = torch.as_tensor(gaussian_mle_data()["y"])
mu, sigma2 = gaussian_ml(y)
post = normal_inverse_gamma_posterior(y, m0=0.0, k0=1.0, a0=2.0, b0=2.0)
print(f"Gaussian, n={len(y)}: mu_ML = {mu:.4f}, sigma2_ML = {sigma2:.4f}")
print(f"  posterior: E[mu] = {post.m:.4f} (sd {post.mu_marginal().stddev:.4f}), "
      f"E[sigma2] = {post.sigma2_marginal().mean:.4f}")
idata = bayesdl.infer("gaussian_mle", method="mh", chains=100, warmup=500, draws=500, progress=False)
print(f"  batched MH: E[mu] = {idata.posterior['mu'].mean().item():.4f}, "
      f"E[sigma2] = {idata.posterior['sigma2'].mean().item():.4f}")

coin = torch.as_tensor(bernoulli_mle_data()["y"])
beta = beta_posterior(coin, 2.0, 2.0)
print(f"Bernoulli, {int(coin.sum())}/{len(coin)}: p_ML = {bernoulli_ml(coin):.4f}, "
      f"Beta(2, 2) posterior mean {beta.mean:.4f}, sd {beta.stddev:.4f}")

torch.manual_seed(0)
Y = torch.randn(500, 2, dtype=torch.float64) @ torch.tensor([[1.0, 0.5], [0.0, 2.0]], dtype=torch.float64)
mean, cov = multivariate_gaussian_ml(Y)
print(f"multivariate MLE: mean {mean.numpy().round(3)}, covariance {cov.numpy().round(3).tolist()}")

m1, m2 = torch.zeros(2, dtype=torch.float64), torch.tensor([1.0, -1.0], dtype=torch.float64)
S1, S2 = torch.eye(2, dtype=torch.float64), torch.tensor([[2.0, 0.3], [0.3, 1.0]], dtype=torch.float64)
estimate, se = monte_carlo_kl(dist.MultivariateNormal(m1, S1), dist.MultivariateNormal(m2, S2), 100_000)
print(f"KL(N1 || N2): closed form {gaussian_kl(m1, S1, m2, S2):.5f}, Monte Carlo {estimate:.5f} +- {se:.5f}")

mu_kl, sigma2_kl = fit_gaussian_by_kl(y)
print(f"argmin_q KL(data || q): mu = {mu_kl:.6f}, sigma2 = {sigma2_kl:.6f}  (= the MLE)")
