"""The local level model on the Nile (Durbin & Koopman 2012, ch. 2).

    python examples/nile_local_level.py

1. Maximum likelihood through bayesdl: flat priors, MAP by SVI with a point-mass guide,
   next to Durbin & Koopman's published estimates (and statsmodels', if installed).
2. The smoothed level at the MLE (RTS smoother, exact diffuse start).
3. The posterior of the two variances by NUTS under the default half-Cauchy priors.
"""

import arviz as az
import torch

import bayesdl
from bayesdl.models.state_space import local_level_smoother, nile_data

# 1. MLE = MAP under flat priors (--method svi --opt guide=delta --arg flat_priors=true)
idata = bayesdl.infer("local_level", method="svi", args={"flat_priors": True}, chains=1, draws=1,
                      guide="delta", lr=0.05, progress=False)
s_irr = float(idata.posterior["sigma2_irregular"].values[0, 0])
s_lvl = float(idata.posterior["sigma2_level"].values[0, 0])
print(f"MLE: sigma2_irregular = {s_irr:.1f}, sigma2_level = {s_lvl:.1f}; "
      f"log-likelihood {-idata.posterior.attrs['svi_loss'][-1]:.4f}")
print("Durbin & Koopman (2012): sigma2_irregular = 15099, sigma2_level = 1469.1")
try:
    import statsmodels.api as sm

    y = nile_data()["y"]
    model = sm.tsa.UnobservedComponents(y, "llevel", use_exact_diffuse=True)
    start = model.fit(method="nm", maxiter=2000, disp=False).params  # its own start, then polish
    fit = model.fit(start_params=start, method="bfgs", gtol=1e-8, disp=False)
    print(f"statsmodels: sigma2_irregular = {fit.params[0]:.1f}, sigma2_level = {fit.params[1]:.1f}; "
          f"log-likelihood {fit.llf:.4f}")
except ImportError:
    pass

# 2. the smoothed level and its 90% band at the MLE
y = torch.as_tensor(nile_data()["y"])
level, variance = local_level_smoother(y, s_irr, s_lvl)
for year in (1871, 1898, 1899, 1900, 1970):
    t = year - 1871
    print(f"{year}: flow {y[t].item():6.0f}, smoothed level {level[t].item():7.1f} "
          f"+- {1.645 * variance[t].sqrt().item():5.1f}")

# 3. Bayesian: both variances sampled with NUTS (about a minute per chain)
idata = bayesdl.infer("local_level", method="nuts", chains=2, warmup=500, draws=500, progress=False)
print(az.summary(idata))
