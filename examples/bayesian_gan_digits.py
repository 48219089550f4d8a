"""Semi-supervised Bayesian GAN (SGHMC) on 8x8 digits with 100 labels.

    python examples/bayesian_gan_digits.py
"""

import torch

from bayesdl.models.bayesian_gan import GANSettings, choose_labelled, train_gan
from bayesdl.models.digits import digits

x, y = digits("train", dtype=torch.float32)
x_test, y_test = digits("test", dtype=torch.float32)
settings = GANSettings(num_classes=10, iterations=300, latent_prior="normal")  # or "gmm", "dp"
result = train_gan(x, settings, labels=y, labelled=choose_labelled(y, 100, 10))
print(f"test accuracy {result.accuracy(x_test, y_test):.3f}, "
      f"{result.iterations_per_second:.1f} SGHMC iterations/s")
images = result.sample(4)  # [generator samples, 4, 64], pixels in [0, 1]
print(images.shape)
