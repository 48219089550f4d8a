"""Semi-supervised Bayesian GAN (SGHMC) on 8x8 digits with 100 labels.

    python examples/bayesian_gan_digits.py              # z ~ N(0, I), exact draws
    python examples/bayesian_gan_digits.py gmm hmc      # mixture prior, z by HMC chains on p(z)

The first argument is the latent prior (normal | gmm | dp), the second how the z's that
marginalise p(z) are drawn: exact (ancestral) | hmc | nuts (persistent chains on log p(z)).
"""

import sys

import torch

from bayesdl.models.bayesian_gan import GANSettings, choose_labelled, train_gan
from bayesdl.models.digits import digits

prior = sys.argv[1] if len(sys.argv) > 1 else "normal"
sampler = sys.argv[2] if len(sys.argv) > 2 else "exact"
x, y = digits("train", dtype=torch.float32)
x_test, y_test = digits("test", dtype=torch.float32)
settings = GANSettings(num_classes=10, iterations=300, latent_prior=prior, latent_sampler=sampler)
result = train_gan(x, settings, labels=y, labelled=choose_labelled(y, 100, 10))
print(f"test accuracy {result.accuracy(x_test, y_test):.3f}, "
      f"{result.iterations_per_second:.1f} SGHMC iterations/s")
if sampler != "exact":
    print(f"mean HMC acceptance of the z chains: {result.history[-1]['latent_accept']:.2f}")
images = result.sample(4)  # [generator samples, 4, 64], pixels in [0, 1]
print(images.shape)
