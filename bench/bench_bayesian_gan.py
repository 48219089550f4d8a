"""Semi-supervised Bayesian GAN on 8x8 digits against the same network trained as an ML GAN.

    python bench/bench_bayesian_gan.py           # 10/50/100 labels, 2 seeds, 600 iterations
    python bench/bench_bayesian_gan.py --quick   # 150 iterations, 1 seed

Both use the same networks, mini-batches, p(z) draws and SGD-with-momentum schedule;
the Bayesian GAN keeps 2 generator and 2 discriminator samples, Gaussian weight priors
and SGHMC's injected noise (Saatchi & Wilson 2017), the ML GAN one of each with neither.
Test accuracy on the 297 held-out digits; speed in SGHMC iterations per second (one
iteration = one discriminator and one generator update).
"""

from __future__ import annotations

import argparse
import statistics

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--iterations", type=int, default=600)
    args = parser.parse_args()
    from bayesdl.models.bayesian_gan import GANSettings, choose_labelled, train_gan
    from bayesdl.models.digits import digits

    iterations = 150 if args.quick else args.iterations
    seeds = 1 if args.quick else args.seeds
    x, y = digits("train", dtype=torch.float32)
    xt, yt = digits("test", dtype=torch.float32)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, float32, "
          f"{iterations} iterations, seeds 0..{seeds - 1}\n")
    print("| labels | model | test accuracy (mean over seeds) | per seed | iterations/s |")
    print("|---|---|---|---|---|")
    for num_labels in (10, 50, 100):
        for bayesian in (True, False):
            accs, rates = [], []
            for seed in range(seeds):
                labelled = choose_labelled(y, num_labels, 10, seed)
                settings = GANSettings(num_classes=10, iterations=iterations, bayesian=bayesian,
                                       seed=seed)
                result = train_gan(x, settings, y, labelled)
                accs.append(result.accuracy(xt, yt))
                rates.append(result.iterations_per_second)
            name = "Bayesian GAN (SGHMC, 2+2 samples)" if bayesian else "ML GAN (same network)"
            print(f"| {num_labels} | {name} | {statistics.mean(accs):.3f} | "
                  f"{', '.join(f'{a:.3f}' for a in accs)} | {statistics.mean(rates):.1f} |",
                  flush=True)


if __name__ == "__main__":
    main()
