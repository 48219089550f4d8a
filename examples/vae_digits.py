"""Train a VAE on the bundled 8x8 digits by SVI, score held-out digits with IWAE, save PNG grids.

    python examples/vae_digits.py            # ~1-2 min on a laptop CPU
    python examples/vae_digits.py gmm 500    # a Gaussian-mixture prior, 500 steps
"""

import sys

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from bayesdl.model_plots import vae_pngs
from bayesdl.models.vae import VAE, digits_data

prior = sys.argv[1] if len(sys.argv) > 1 else "normal"
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
train = torch.tensor(digits_data("train")["x"], dtype=torch.float32)
test = torch.tensor(digits_data("test")["x"], dtype=torch.float32)

pyro.clear_param_store()
pyro.set_rng_seed(0)
net = VAE(64, latent_dim=2, hidden=128, likelihood="bernoulli", prior=prior)
elbo = "kl" if prior == "normal" else "mc"  # the closed-form KL needs the normal prior
svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": 3e-3}), Trace_ELBO())
for step in range(steps):
    loss = svi.step(train, elbo, 128)  # minibatches of 128 digits
    if step % 500 == 0:
        print(f"step {step}: -ELBO per digit {loss / 128:.2f}")

for k in (1, 10, 100, 1000):
    print(f"IWAE k={k}: held-out log-likelihood per digit >= {net.iwae(test, k).mean():.2f} nats")
print("saved", *vae_pngs(net, test, "vae_digits_out"))
