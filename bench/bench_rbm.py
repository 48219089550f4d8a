"""RBM on binarised 8x8 digits: bayesdl's PCD-1 against scikit-learn's BernoulliRBM.

    python bench/bench_rbm.py            # 64 and 16 hidden units, 10 epochs (about a minute)
    python bench/bench_rbm.py --quick    # 2 epochs

Both are trained with the same settings (PCD-1, batch 10, learning rate 0.05, weights
from N(0, 0.01^2), consecutive batches) on the 1500 training digits; each is scored on
the 297 test digits with the same AIS estimate of log Z (base-rate start, 500
particles, 2000 temperatures) and, with 16 hidden units, also exactly by enumeration.
Training speed is CD epochs per second, reported as the ratio ours / scikit-learn's.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 16])
    args = parser.parse_args()
    from sklearn.neural_network import BernoulliRBM

    from bayesdl.models.digits import digits
    from bayesdl.models.rbm import (
        RBM,
        RBMTraining,
        ais_log_likelihood,
        ais_log_partition,
        base_rate_bias,
        exact_log_likelihood,
        train_rbm,
    )

    epochs = 2 if args.quick else 10
    train, _ = digits("train", binarise=True)
    test, _ = digits("test", binarise=True)
    base = base_rate_bias(train)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {platform.machine()}, "
          f"float64, {train.shape[0]} train / {test.shape[0]} test digits, {epochs} epochs\n")
    print("| hidden | trainer | epochs/s | speed ratio | AIS test log-lik (nats) | AIS se | "
          "exact test log-lik |")
    print("|---|---|---|---|---|---|---|")
    for hidden in args.hidden:
        settings = RBMTraining(num_hidden=hidden, learning_rate=0.05, batch_size=10, epochs=epochs)
        ours = train_rbm(train, settings)
        peer = BernoulliRBM(n_components=hidden, learning_rate=0.05, batch_size=10, n_iter=epochs,
                            random_state=0)
        started = time.perf_counter()
        peer.fit(train.numpy())
        peer_rate = epochs / (time.perf_counter() - started)
        peer_rbm = RBM(torch.as_tensor(peer.components_.T), torch.as_tensor(peer.intercept_visible_),
                       torch.as_tensor(peer.intercept_hidden_))
        for name, rbm, rate in [("bayesdl PCD-1", ours.rbm, ours.epochs_per_second),
                                ("sklearn BernoulliRBM", peer_rbm, peer_rate)]:
            ais = ais_log_partition(rbm, num_particles=500, num_steps=2000, base_visible_bias=base)
            ll = float(ais_log_likelihood(rbm, test, ais.log_normaliser))
            exact = f"{float(exact_log_likelihood(rbm, test)):.2f}" if hidden <= 20 else "-"
            print(f"| {hidden} | {name} | {rate:.2f} | {rate / peer_rate:.2f} | {ll:.2f} | "
                  f"{float(ais.standard_error):.3f} | {exact} |", flush=True)


if __name__ == "__main__":
    main()
