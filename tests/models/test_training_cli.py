"""`bayesdl train NAME`: the GAN, RBM and char-LSTM trainers from the command line (tiny settings)."""

import json

import pytest
import torch

from bayesdl.cli import main
from bayesdl.errors import BayesdlError
from bayesdl.models.digits import digits
from bayesdl.models.rbm import RBM, exact_log_likelihood
from bayesdl.training import parse_arguments

PNG = b"\x89PNG\r\n\x1a\n"


def test_rbm_run_directory_and_ais_against_exact(tmp_path, capsys):
    out = tmp_path / "rbm"
    assert main(["train", "rbm", "--arg", "num_hidden=8", "--arg", "epochs=1", "--arg", "batch_size=50",
                 "--arg", "ais_particles=100", "--arg", "ais_steps=300", "--arg", "gibbs_sweeps=5",
                 "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert sorted(p.name for p in out.iterdir()) == ["metrics.json", "rbm.pt", "samples.png", "settings.json"]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics == {k: v for k, v in printed.items() if k != "run_dir"}
    assert (out / "samples.png").read_bytes()[:8] == PNG
    # the saved RBM (plain tensors) reproduces the exact test log-likelihood, and AIS agrees with it
    rbm = RBM(**torch.load(out / "rbm.pt", weights_only=True))
    test, _ = digits("test", binarise=True)
    exact = float(exact_log_likelihood(rbm, test).mean())
    assert metrics["test_log_likelihood_exact"] == pytest.approx(exact, abs=1e-9)
    assert abs(metrics["test_log_likelihood_ais"] - exact) < 5 * metrics["ais_standard_error"]
    settings = json.loads((out / "settings.json").read_text())
    assert settings["trainer"] == "rbm" and settings["settings"]["num_hidden"] == 8


def test_gan_semi_supervised_writes_grid_and_accuracy(tmp_path):
    out = tmp_path / "gan"
    assert main(["train", "bayesian_gan", "--arg", "iterations=3", "--arg", "hidden=8", "--arg", "num_z=4",
                 "--arg", "num_classes=10", "--arg", "num_labelled=20", "--arg", "num_images=5",
                 "--seed", "3", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["test_accuracy"] <= 1.0 and metrics["num_labelled"] == 20
    assert (out / "samples.png").read_bytes()[:8] == PNG
    weights = torch.load(out / "weights.pt", weights_only=True)
    assert weights["generator"].shape[0] == 2 and weights["discriminator"].shape[0] == 2
    assert json.loads((out / "settings.json").read_text())["settings"]["seed"] == 3


def test_char_lstm_generates_with_temperature_and_beam_search(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("the cat sat on the mat. " * 40)
    out = tmp_path / "lstm"
    assert main(["train", "char_lstm", "--arg", f"text={text}", "--arg", "hidden=8", "--arg", "epochs=1",
                 "--arg", "batch_size=4", "--arg", "bptt=16", "--arg", "length=12",
                 "--arg", "temperatures=0.5,2", "--arg", "beam_size=2", "--arg", "beam_length=5",
                 "--arg", "prime=the", "--out", str(out)]) == 0
    samples = json.loads((out / "samples.json").read_text())
    assert [s["temperature"] for s in samples["samples"]] == [0.5, 2.0]
    assert all(len(s["text"]) == 12 and set(s["text"]) <= set("the cat sonm.") for s in samples["samples"])
    beams = samples["beam_search"]
    assert len(beams) == 2 and len({b["text"] for b in beams}) == 2  # without replacement
    assert all(b["log_prob"] < 0 for b in beams)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["vocabulary_size"] == len(set(text.read_text()))
    assert "temperature 0.5" in (out / "samples.txt").read_text()


@pytest.mark.parametrize("argv, message", [
    (["train", "gan"], "unknown trainer 'gan'"),
    (["train", "rbm", "--arg", "nope=1"], "has no argument 'nope'"),
    (["train", "rbm", "--arg", "epochs=two"], "must be an integer"),
    (["train", "rbm", "--arg", "learning_rate=-1"], "must be >= 0"),
    (["train", "rbm", "--arg", "epochs"], "expected key=value"),
    (["train", "char_lstm", "--arg", "temperatures=hot"], "temperatures"),
    (["train", "char_lstm", "--arg", "text=/no/such/file.txt"], "cannot read"),
    (["train", "rbm", "--seed", "1", "--arg", "seed=2"], "seed once"),
])
def test_bad_input_is_one_line_and_exit_code_2(argv, message, tmp_path, capsys):
    assert main([*argv, "--out", str(tmp_path / "never")]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not (tmp_path / "never").exists()


def test_existing_output_directory_is_never_overwritten(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(BayesdlError, match="already exists"):
        from bayesdl.training import train

        train("rbm", {"epochs": 0}, tmp_path / "taken")


def test_settings_are_typed():
    settings, extras = parse_arguments("bayesian_gan", {"bayesian": "false", "learning_rate": "0.01",
                                                        "num_labelled": "50"})
    assert settings.bayesian is False and settings.learning_rate == 0.01 and extras["num_labelled"] == 50
