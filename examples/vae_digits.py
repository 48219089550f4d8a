"""Train a VAE on the bundled 8x8 digits by SVI, score held-out digits with IWAE, save PNGs.

    python examples/vae_digits.py            # ~2 min on a laptop CPU
    python examples/vae_digits.py gmm 500    # a Gaussian-mixture prior, 500 steps

Writes into vae_digits_out/: iwae.csv and iwae.png (the importance-weighted bound on the
held-out digits for k = 1 ... 5000, nats per digit), reconstructions.png and samples.png.
"""

import math
import sys

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from bayesdl.model_plots import iwae_png, vae_pngs
from bayesdl.models.vae import VAE, digits_data

prior = sys.argv[1] if len(sys.argv) > 1 else "normal"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
out = "vae_digits_out"
train = torch.tensor(digits_data("train")["x"], dtype=torch.float32)
test = torch.tensor(digits_data("test")["x"], dtype=torch.float32)

pyro.clear_param_store()
pyro.set_rng_seed(0)
net = VAE(64, latent_dim=2, hidden=128, likelihood="bernoulli", prior=prior)
elbo = "kl" if prior == "normal" else "mc"  # the closed-form KL needs the normal prior
svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
for step in range(steps):
    loss = svi.step(train, elbo, 128)  # minibatches of 128 digits, scaled to the whole set
    if step % 500 == 0 or step == steps - 1:
        print(f"step {step}: -ELBO per digit {loss / len(train):.2f}")

# IWAE bound per held-out digit; the SE is over digits, the gain over k = 1 is paired
ks = (1, 10, 100, 1000, 5000)
bounds = {k: net.iwae(test, k) for k in ks}
n = len(test)
rows = ["k,iwae_nats_per_digit,se,gain_over_k1,gain_se"]
print(f"{len(test)} held-out digits\n     k   IWAE bound (nats/digit)   gain over k=1")
for k in ks:
    b, gain = bounds[k], bounds[k] - bounds[1]
    se, gain_se = b.std() / math.sqrt(n), gain.std() / math.sqrt(n)
    print(f"{k:6d}   {b.mean():8.3f} +- {se:.3f}          {gain.mean():6.3f} +- {gain_se:.3f}")
    rows.append(f"{k},{b.mean():.4f},{se:.4f},{gain.mean():.4f},{gain_se:.4f}")
pngs = vae_pngs(net, test, out)
with open(f"{out}/iwae.csv", "w") as f:
    f.write("\n".join(rows) + "\n")
png = iwae_png(list(ks), [float(bounds[k].mean()) for k in ks],
               [float((bounds[k] - bounds[1]).std() / math.sqrt(n)) for k in ks], f"{out}/iwae.png",
               title=f"IWAE bound, {n} held-out digits (prior {prior}, {steps} steps)",
               error_label="+-1 SE of the gain over k=1")
print("saved", f"{out}/iwae.csv", png, *pngs)
