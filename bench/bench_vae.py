"""VAE training speed: bayesdl's Pyro model/guide under SVI vs a plain PyTorch VAE loop (the floor).

Same networks (``bayesdl.models.vae.VAE``: 64-128-128-2 MLPs, Bernoulli likelihood),
same data (the bundled digits, minibatches of 128), same Adam; the plain loop computes
the single-sample ELBO by hand (reparameterised z, closed-form KL) with no Pyro at all.

    python bench/bench_vae.py [--steps 300] [--device cpu|cuda]
"""

from __future__ import annotations

import argparse
import time

import pyro
import torch
from pyro.infer import SVI, Trace_ELBO

from bayesdl.models.latent_priors import StandardNormalPrior
from bayesdl.models.vae import VAE, digits_data


def pyro_steps_per_s(x: torch.Tensor, steps: int, elbo: str) -> float:
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    torch.manual_seed(0)
    net = VAE(64, 2, 128).to(x.device)
    svi = SVI(net.model, net.guide, pyro.optim.Adam({"lr": 1e-3}), Trace_ELBO())
    for _ in range(10):
        svi.step(x, elbo, 128)
    start = time.perf_counter()
    for _ in range(steps):
        svi.step(x, elbo, 128)
    if x.is_cuda:
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def torch_steps_per_s(x: torch.Tensor, steps: int) -> float:
    torch.manual_seed(0)
    net = VAE(64, 2, 128).to(x.device)
    params = list(net.encoder.parameters()) + list(net.decoder.parameters())
    optimiser = torch.optim.Adam(params, lr=1e-3)

    def step() -> None:
        batch = x[torch.randint(0, x.shape[0], (128,), device=x.device)]
        loc, scale = net.encoder(batch)
        z = loc + scale * torch.randn_like(loc)
        logits = net.decoder.net(z)
        rec = -torch.nn.functional.binary_cross_entropy_with_logits(logits, batch, reduction="sum")
        loss = -(rec - StandardNormalPrior.kl_from_normal(loc, scale).sum()) * x.shape[0] / 128
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()

    for _ in range(10):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if x.is_cuda:
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    x = torch.tensor(digits_data()["x"], dtype=torch.float32, device=args.device)
    floor = torch_steps_per_s(x, args.steps)
    print(f"device={args.device} threads={torch.get_num_threads()} steps={args.steps}")
    print(f"plain torch VAE loop      {floor:8.1f} steps/s   1.00x")
    for elbo in ("kl", "mc"):
        rate = pyro_steps_per_s(x, args.steps, elbo)
        print(f"bayesdl vae SVI elbo={elbo:3s}  {rate:8.1f} steps/s   {rate / floor:.2f}x")


if __name__ == "__main__":
    main()
