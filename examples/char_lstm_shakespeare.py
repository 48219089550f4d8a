"""Train the char-LSTM on the bundled Shakespeare excerpt and generate text.

    python examples/char_lstm_shakespeare.py
"""

from bayesdl.models.char_lstm import CharLSTMSettings, bundled_text, train_char_lstm

fit = train_char_lstm(bundled_text(), CharLSTMSettings(hidden=64, epochs=15, batch_size=8, bptt=32))
print(f"validation {fit.validation_nats:.3f} nats/char (count bigram: {fit.bigram_nats:.3f})")
print(fit.sample(200, prime="First Citizen:\n", temperature=0.7))
texts, result = fit.beam_search(beam_size=3, length=30, prime="First Citizen:\n")
for text, log_p in zip(texts, result.log_probs[0].tolist(), strict=True):
    print(f"{log_p:8.2f}  {text!r}")
