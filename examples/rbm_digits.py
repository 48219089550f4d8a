"""Train an RBM on binarised 8x8 digits by persistent CD and score it with AIS.

    python examples/rbm_digits.py
"""

from bayesdl.models.digits import digits
from bayesdl.models.rbm import (
    RBMTraining,
    ais_log_likelihood,
    ais_log_partition,
    base_rate_bias,
    exact_log_likelihood,
    train_rbm,
)

train, _ = digits("train", binarise=True)
test, _ = digits("test", binarise=True)
fit = train_rbm(train, RBMTraining(num_hidden=16, learning_rate=0.05, epochs=5, method="pcd"))
ais = ais_log_partition(fit.rbm, num_particles=200, num_steps=1000, base_visible_bias=base_rate_bias(train))
print(f"log Z = {float(ais.log_normaliser):.2f} +- {float(ais.standard_error):.3f} (AIS)")
print(f"test log-likelihood: AIS {float(ais_log_likelihood(fit.rbm, test, ais.log_normaliser)):.2f}, "
      f"exact {float(exact_log_likelihood(fit.rbm, test)):.2f} nats per digit")
