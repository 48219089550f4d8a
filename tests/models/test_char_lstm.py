"""char-LSTM: likelihood against torch's cross-entropy, truncated BPTT against the full pass,
generation against the model's own probabilities, and a short fit beating the bigram baseline."""

from __future__ import annotations

import math

import pytest
import torch
from pyro import poutine

from bayesdl.errors import BayesdlError
from bayesdl.models.char_lstm import (
    CharLSTM,
    CharLSTMSettings,
    Vocabulary,
    bigram_nats_per_char,
    bundled_text,
    char_lstm_model,
    readout_logits,
    train_char_lstm,
)


@pytest.fixture(scope="module")
def fit():
    return train_char_lstm(bundled_text(), CharLSTMSettings(hidden=48, epochs=8, batch_size=8, bptt=32))


def test_forget_gate_bias_and_vocabulary_round_trip():
    net = CharLSTM(5, hidden=4, forget_bias=2.0)
    assert torch.equal(net.lstm.bias_ih_l0[4:8], torch.full((4,), 2.0))
    assert torch.equal(net.lstm.bias_hh_l0[4:8], torch.zeros(4))
    vocab = Vocabulary("hello world")
    assert vocab.decode(vocab.encode("low world")) == "low world"
    with pytest.raises(BayesdlError, match="vocabulary"):
        vocab.encode("xyz")


def test_likelihood_is_torch_cross_entropy_and_tbptt_carries_the_state():
    torch.manual_seed(0)
    net = CharLSTM(6, hidden=5)
    readout = torch.randn(6, 6)
    chars = torch.randint(0, 6, (3, 11))
    trace = poutine.trace(poutine.condition(char_lstm_model, {"readout": readout})).get_trace(chars, net)
    log_lik = trace.nodes["next_char"]["fn"].log_prob(chars[:, 1:]).sum()
    features, _ = net(chars[:, :-1])
    ce = torch.nn.functional.cross_entropy(readout_logits(features, readout).reshape(-1, 6),
                                           chars[:, 1:].reshape(-1), reduction="sum")
    assert torch.allclose(log_lik, -ce, atol=1e-5)
    holder: dict = {}
    total = torch.zeros(())
    for start in (0, 5):  # chunks [0..5] and [5..10] overlap by one character, as in training
        chunk = chars[:, start:start + 6]
        tr = poutine.trace(poutine.condition(char_lstm_model, {"readout": readout})).get_trace(
            chunk, net, state_holder=holder)
        total = total + tr.nodes["next_char"]["fn"].log_prob(chunk[:, 1:]).sum()
    assert torch.allclose(total, log_lik, atol=1e-5)


def test_bigram_baseline_on_a_hand_counted_text():
    train, valid = torch.tensor([0, 1, 0, 1, 1]), torch.tensor([0, 1, 1])
    # counts + 1: from 0 -> {0: 1, 1: 3}; from 1 -> {0: 2, 1: 2}
    expected = -(math.log(3 / 4) + math.log(2 / 4)) / 2
    assert math.isclose(bigram_nats_per_char(train, valid, 2), expected)


def test_short_fit_beats_the_bigram_baseline(fit):
    assert fit.validation_nats < fit.bigram_nats
    assert fit.tokens_per_second > 0


def test_generation_matches_the_model(fit):
    greedy = fit.sample(15, "First", temperature=1e-4)
    prefix = torch.zeros((1, 0), dtype=torch.int64)
    for _ in range(15):
        code = fit.next_log_probs(prefix, "First").argmax(-1, keepdim=True)
        prefix = torch.cat([prefix, code], 1)
    assert greedy == fit.vocab.decode(prefix[0])
    texts, result = fit.beam_search(4, 6, "First")
    assert len(set(texts)) == 4  # without replacement
    for k in range(4):
        seq = result.sequences[0, k]
        lp = sum(float(fit.next_log_probs(seq[None, :t], "First")[0, seq[t]]) for t in range(6))
        assert math.isclose(lp, float(result.log_probs[0, k]), rel_tol=1e-6, abs_tol=1e-6)


def test_bayesian_last_layer_has_a_posterior_scale():
    fit = train_char_lstm(bundled_text()[:1500], CharLSTMSettings(hidden=16, epochs=1, bptt=16,
                                                                  bayesian_last_layer=True))
    scale = fit.guide.scales.readout.detach()
    assert fit.readout().shape == (len(fit.vocab), 17) == scale.shape
    assert math.isfinite(fit.validation_nats)
    assert bool((scale > 0).all()) and float(scale.max()) < 1.0  # narrower than the N(0, 1) prior
