"""char-LSTM training speed against a plain torch.nn.LSTM loop (the floor), and validation loss.

    python bench/bench_char_lstm.py                 # tinyshakespeare's first 100 KB, CPU
    python bench/bench_char_lstm.py --device cuda   # (bayesdl's trainer runs on CPU only for now)

Same network (one-hot input, LSTM hidden 128, linear read-out), batch 16 x BPTT 64,
3 epochs. Ours: Pyro SVI with a MAP (delta) read-out and ClippedAdam; the floor:
torch.nn.LSTM + cross-entropy + Adam + clip_grad_norm_. Reports training tokens per second
(ratio ours / floor) and validation nats per character next to the add-one bigram baseline.
"""

from __future__ import annotations

import argparse
import time

import torch


def plain_torch(text_codes: torch.Tensor, vocab: int, hidden: int, batch: int, bptt: int,
                epochs: int, device: str) -> float:
    from torch import nn

    lstm = nn.LSTM(vocab, hidden, batch_first=True).to(device)
    out = nn.Linear(hidden, vocab).to(device)
    params = list(lstm.parameters()) + list(out.parameters())
    opt = torch.optim.Adam(params, lr=0.005)
    length = len(text_codes) // batch
    streams = text_codes[:batch * length].reshape(batch, length).to(device)
    tokens = 0
    started = time.perf_counter()
    for _ in range(epochs):
        state = None
        for start in range(0, length - 1, bptt):
            chunk = streams[:, start:start + bptt + 1]
            x = nn.functional.one_hot(chunk[:, :-1], vocab).float()
            h, state = lstm(x, state)
            state = tuple(s.detach() for s in state)
            loss = nn.functional.cross_entropy(out(h).reshape(-1, vocab), chunk[:, 1:].reshape(-1))
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 5.0)
            opt.step()
            tokens += chunk[:, 1:].numel()
    if device == "cuda":
        torch.cuda.synchronize()
    return tokens / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chars", type=int, default=100_000)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--text", default="/work/shared/data/tinyshakespeare.txt")
    args = parser.parse_args()
    from bayesdl.models.char_lstm import CharLSTMSettings, Vocabulary, train_char_lstm

    text = open(args.text, encoding="utf-8").read()[:args.chars]
    settings = CharLSTMSettings(hidden=128, batch_size=16, bptt=64, epochs=args.epochs)
    fit = train_char_lstm(text, settings)
    vocab = Vocabulary(text)
    split = int(len(text) * 0.9)
    floor = plain_torch(vocab.encode(text[:split]), len(vocab), 128, 16, 64, args.epochs, args.device)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.chars} chars, "
          f"{args.epochs} epochs\n")
    print("| trainer | tokens/s | ratio to floor | valid nats/char | bigram nats/char |")
    print("|---|---|---|---|---|")
    print(f"| bayesdl char_lstm (Pyro SVI, MAP read-out, CPU) | {fit.tokens_per_second:.0f} | "
          f"{fit.tokens_per_second / floor:.2f} | {fit.validation_nats:.3f} | {fit.bigram_nats:.3f} |")
    print(f"| plain torch.nn.LSTM + Adam ({args.device}) | {floor:.0f} | 1.00 | - | - |")


if __name__ == "__main__":
    main()
