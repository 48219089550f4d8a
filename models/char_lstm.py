"""Character-level LSTM language model (Karpathy's char-rnn) as a Pyro model.

Characters enter one-hot; an ``nn.LSTM`` (a ``pyro.module``, forget-gate bias set to
``forget_bias`` so early gradients flow through the cell, Jozefowicz et al. 2015) reads
them, and a linear read-out whose weights are the latent site ``readout [V, H + 1]``
with a ``N(0, prior_scale^2)`` prior gives the logits of a categorical likelihood for the
next character. The guide decides the inference: MAP of the read-out (``AutoDelta``,
the default) or a mean-field Gaussian posterior over it (``AutoNormal``: the Bayesian
last layer); the LSTM weights are point estimates either way. :func:`train_char_lstm`
fits it by SVI with Pyro's ``ClippedAdam`` (per-parameter gradient-norm clipping) on a
stream cut into parallel batches with truncated back-propagation through time (the
hidden state is carried across chunks, detached). Generation: sampling with a
temperature, or stochastic beam search (:mod:`bayesdl.inference.beam_search`).
Validation loss is reported in nats per character next to an add-one count-bigram
baseline on the same split. The built-in ``char_lstm`` runs on a bundled 5.6 KB
excerpt of Shakespeare (public domain).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import pyro
import pyro.distributions as dist
import torch
from pyro.infer import SVI, Trace_ELBO
from pyro.infer.autoguide import AutoDelta, AutoNormal
from torch import nn

from bayesdl.data_schema import DataField
from bayesdl.errors import BayesdlError
from bayesdl.inference.beam_search import BeamSearchResult, stochastic_beam_search
from bayesdl.models.registry import bundled_json, register


class Vocabulary:
    """Characters <-> integer codes (sorted order of the characters seen)."""

    def __init__(self, text: str):
        if not text:
            raise BayesdlError("char_lstm needs a non-empty text")
        self.chars = sorted(set(text))
        self.index = {c: i for i, c in enumerate(self.chars)}

    def __len__(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise BayesdlError(f"characters not in the vocabulary: {''.join(unknown)!r}")
        return torch.tensor([self.index[c] for c in text], dtype=torch.int64)

    def decode(self, codes: torch.Tensor) -> str:
        return "".join(self.chars[int(i)] for i in codes)


class CharLSTM(nn.Module):
    """One-hot input -> LSTM (hidden ``H``); features ``[..., H]`` for the read-out."""

    def __init__(self, vocab_size: int, hidden: int = 128, layers: int = 1, forget_bias: float = 1.0):
        super().__init__()
        self.vocab_size = vocab_size
        self.lstm = nn.LSTM(vocab_size, hidden, layers, batch_first=True)
        with torch.no_grad():  # gate order i, f, g, o: the forget bias is the second quarter
            for name, bias in self.lstm.named_parameters():
                if name.startswith("bias_ih"):
                    bias[hidden:2 * hidden].fill_(forget_bias)
                elif name.startswith("bias_hh"):
                    bias[hidden:2 * hidden].zero_()

    def forward(self, codes: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor] | None = None):
        one_hot = nn.functional.one_hot(codes, self.vocab_size).to(self.lstm.weight_ih_l0.dtype)
        return self.lstm(one_hot, state)


def readout_logits(features: torch.Tensor, readout: torch.Tensor) -> torch.Tensor:
    """Logits ``[..., V]`` from features ``[..., H]`` and read-out weights ``[V, H + 1]``."""
    return features @ readout[:, :-1].T + readout[:, -1]


def char_lstm_model(chars, net: CharLSTM, prior_scale: float = 1.0, state_holder: dict | None = None):
    """``readout ~ N(0, prior_scale^2)``; ``chars[:, t + 1] ~ Categorical(logits_t)``.

    ``chars [S, T]`` integer codes; ``state_holder["state"]``, when given, is the initial
    LSTM state and receives the final one (truncated BPTT); ``state_holder["scale"]``
    scales the likelihood (a chunk standing for the whole stream).
    """
    net = pyro.module("char_lstm", net)
    vocab, hidden = net.vocab_size, net.lstm.hidden_size
    dtype = net.lstm.weight_ih_l0.dtype
    readout = pyro.sample("readout", dist.Normal(torch.zeros((), dtype=dtype), prior_scale)
                          .expand([vocab, hidden + 1]).to_event(2))
    initial = None if state_holder is None else state_holder.get("state")
    features, final = net(chars[:, :-1], initial)
    if state_holder is not None:
        state_holder["state"] = tuple(s.detach() for s in final)
    scale = 1.0 if state_holder is None else state_holder.get("scale", 1.0)
    with pyro.plate("sequence", chars.shape[0]), pyro.poutine.scale(scale=scale):
        pyro.sample("next_char", dist.Categorical(logits=readout_logits(features, readout)).to_event(1),
                    obs=chars[:, 1:])


@dataclass
class CharLSTMSettings:
    """Settings of :func:`train_char_lstm`."""

    hidden: int = 128
    layers: int = 1
    forget_bias: float = 1.0
    batch_size: int = 16
    bptt: int = 64
    epochs: int = 5
    learning_rate: float = 0.005
    clip_norm: float = 5.0
    bayesian_last_layer: bool = False
    prior_scale: float = 1.0
    validation_fraction: float = 0.1
    seed: int = 0


@dataclass
class CharLSTMFit:
    net: CharLSTM
    guide: object
    vocab: Vocabulary
    settings: CharLSTMSettings
    validation_nats: float
    bigram_nats: float
    tokens_per_second: float
    losses: list[float] = field(default_factory=list)

    def readout(self) -> torch.Tensor:
        """The read-out at its MAP (delta guide) or posterior mean (mean-field guide)."""
        return self.guide.median()["readout"].detach()

    def next_log_probs(self, prefixes: torch.Tensor, prime: str = "\n",
                       temperature: float = 1.0) -> torch.Tensor:
        """``[B, V]`` log-probabilities of the next character after ``prime + prefix``."""
        start = self.vocab.encode(prime).expand(prefixes.shape[0], -1)
        with torch.no_grad():
            features, _ = self.net(torch.cat([start, prefixes], 1))
            logits = readout_logits(features[:, -1], self.readout()) / temperature
        return torch.log_softmax(logits, -1)

    def sample(self, length: int, prime: str = "\n", temperature: float = 1.0, seed: int = 0) -> str:
        """``length`` characters sampled one at a time with ``temperature``."""
        if not temperature > 0:
            raise BayesdlError(f"temperature must be positive, got {temperature}")
        generator = torch.Generator().manual_seed(seed)
        out = torch.zeros((1, 0), dtype=torch.int64)
        state = None
        with torch.no_grad():
            features, state = self.net(self.vocab.encode(prime)[None], state)
            for _ in range(length):
                logits = readout_logits(features[:, -1], self.readout()) / temperature
                code = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator)
                out = torch.cat([out, code], 1)
                features, state = self.net(code, state)
        return self.vocab.decode(out[0])

    def beam_search(self, beam_size: int, length: int, prime: str = "\n", seed: int = 0
                    ) -> tuple[list[str], BeamSearchResult]:
        """``beam_size`` continuations drawn without replacement (stochastic beam search)."""
        result = stochastic_beam_search(lambda p: self.next_log_probs(p, prime), beam_size, length,
                                        generator=torch.Generator().manual_seed(seed))
        return [self.vocab.decode(s) for s in result.sequences[0]], result


def bigram_nats_per_char(train: torch.Tensor, valid: torch.Tensor, vocab_size: int) -> float:
    """Add-one count-bigram model fitted on ``train``: mean -log p(valid[t+1] | valid[t])."""
    counts = torch.ones(vocab_size, vocab_size, dtype=torch.float64)
    counts.index_put_((train[:-1], train[1:]), torch.ones(len(train) - 1, dtype=torch.float64),
                      accumulate=True)
    log_p = (counts / counts.sum(-1, keepdim=True)).log()
    return float(-log_p[valid[:-1], valid[1:]].mean())


def _streams(codes: torch.Tensor, batch: int) -> torch.Tensor:
    length = len(codes) // batch
    if length < 2:
        raise BayesdlError(f"text too short for {batch} parallel streams")
    return codes[:batch * length].reshape(batch, length)


def evaluate_nats(net: CharLSTM, readout: torch.Tensor, codes: torch.Tensor) -> float:
    """Mean next-character negative log-likelihood of one stream ``codes`` (nats/char)."""
    with torch.no_grad():
        features, _ = net(codes[None, :-1])
        logits = readout_logits(features[0], readout)
        return float(nn.functional.cross_entropy(logits, codes[1:]))


def train_char_lstm(text: str, settings: CharLSTMSettings | None = None,
                    progress: bool = False) -> CharLSTMFit:
    """Fit the char-LSTM to ``text`` (see the module docstring); the last
    ``validation_fraction`` of the text is held out."""
    settings = settings or CharLSTMSettings()
    vocab = Vocabulary(text)
    codes = vocab.encode(text)
    split = int(len(codes) * (1 - settings.validation_fraction))
    train, valid = codes[:split], codes[split:]
    if len(valid) < 2:
        raise BayesdlError("validation split is empty; lower validation_fraction or give more text")
    pyro.clear_param_store()
    pyro.set_rng_seed(settings.seed)
    net = CharLSTM(len(vocab), settings.hidden, settings.layers, settings.forget_bias)
    guide_class = AutoNormal if settings.bayesian_last_layer else AutoDelta
    holder: dict = {}

    def model(chars):
        return char_lstm_model(chars, net, settings.prior_scale, holder)

    guide = guide_class(pyro.poutine.block(model, hide=["next_char"]))
    streams = _streams(train, settings.batch_size)
    num_tokens = streams.numel()
    # the ELBO of one chunk is scaled to the whole training stream (mini-batch SVI)
    svi = SVI(model, guide, pyro.optim.ClippedAdam({"lr": settings.learning_rate,
                                                    "clip_norm": settings.clip_norm}),
              Trace_ELBO())
    losses: list[float] = []
    tokens = 0
    started = time.perf_counter()
    for _ in range(settings.epochs):
        holder.pop("state", None)
        for start in range(0, streams.shape[1] - 1, settings.bptt):
            chunk = streams[:, start:start + settings.bptt + 1]
            if chunk.shape[1] < 2:
                continue
            holder["scale"] = num_tokens / chunk[:, 1:].numel()
            loss = svi.step(chunk)
            losses.append(loss / num_tokens)
            tokens += chunk[:, 1:].numel()
            if not math.isfinite(loss):
                raise BayesdlError("char_lstm: the loss became non-finite; lower learning_rate")
    seconds = time.perf_counter() - started
    fit = CharLSTMFit(net, guide, vocab, settings, math.nan,
                      bigram_nats_per_char(train, valid, len(vocab)), tokens / max(seconds, 1e-12),
                      losses)
    fit.validation_nats = evaluate_nats(net, fit.readout(), valid)
    return fit


# ----------------------------------------------------------------- the built-in model
def bundled_text() -> str:
    """The bundled Shakespeare excerpt (models/data/shakespeare_excerpt.json)."""
    return bundled_json("shakespeare_excerpt.json")["text"]


def char_lstm_data(sequence_length: int = 64) -> dict:
    """The bundled excerpt as ``chars [S, sequence_length]`` codes (consecutive pieces)."""
    text = bundled_text()
    codes = Vocabulary(text).encode(text)
    rows = len(codes) // sequence_length
    return {"chars": codes[:rows * sequence_length].reshape(rows, sequence_length).tolist(),
            "vocab_size": len(Vocabulary(text))}


@register(
    "char_lstm",
    "character LSTM on a bundled Shakespeare excerpt; svi guide=delta is MAP, normal a Bayesian read-out",
    data=char_lstm_data,
    schema={"chars": DataField(("sequence", "position"), kind="int"), "vocab_size": DataField(kind="size")},
)
def char_lstm(chars, vocab_size, hidden: int = 32, forget_bias: float = 1.0, prior_scale: float = 1.0):
    """The char-LSTM over ``chars [S, T]`` (float codes from a data file are cast to int)."""
    codes = torch.as_tensor(chars).round().long()
    if int(codes.min()) < 0 or int(codes.max()) >= vocab_size:
        raise BayesdlError(f"char_lstm: codes must lie in 0..{vocab_size - 1}")
    net = _builtin_net(vocab_size, hidden, forget_bias, torch.as_tensor(chars).dtype)
    char_lstm_model(codes, net, prior_scale)


_NETS: dict[tuple, CharLSTM] = {}


def _builtin_net(vocab: int, hidden: int, forget_bias: float, dtype: torch.dtype) -> CharLSTM:
    """One network per configuration, so repeated model calls share its parameters."""
    key = (vocab, hidden, forget_bias, dtype)
    if key not in _NETS:
        _NETS[key] = CharLSTM(vocab, hidden, 1, forget_bias).to(dtype)
    return _NETS[key]
