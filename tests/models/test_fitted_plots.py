"""`bayesdl plot RUN --kind model`: VAE grids and sequence forecasts from a saved SVI run."""

import json
import pathlib

import pytest
import torch

import bayesdl
from bayesdl.cli import main
from bayesdl.errors import BayesdlError
from bayesdl.fitted_plots import load_param_state, plot_fitted_model, restore_vae
from bayesdl.models.vae import VAE

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def vae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "run"
    bayesdl.infer("vae", method="svi", chains=1, draws=2, out=out, progress=False,
                  args={"hidden": 8, "batch_size": 64}, max_steps=30)
    return out


def test_vae_plots_are_pngs_of_the_fitted_network(vae_run, tmp_path):
    code = main(["plot", str(vae_run), "--kind", "model", "--out", str(tmp_path / "plots")])
    assert code == 0
    for name in ("reconstructions.png", "samples.png"):
        assert (tmp_path / "plots" / name).read_bytes()[:8] == PNG
    assert not any(p.name.startswith(".") for p in (tmp_path / "plots").iterdir())
    # the restored network carries the fitted weights, not the seed-0 initialisation
    params = load_param_state(vae_run / "guide_params.pt")
    args = json.loads((vae_run / "settings.json").read_text())["args"]
    net, x_test = restore_vae(args, params)
    assert x_test.shape[1] == 64
    fitted = params["vae_decoder$$$net.0.weight"]
    assert torch.equal(net.decoder.net[0].weight.detach(), fitted)
    torch.manual_seed(0)
    init = VAE(64, 2, 8)
    assert init.decoder.net[0].weight.shape == fitted.shape
    assert not torch.allclose(init.decoder.net[0].weight.double(), fitted)
    # a parameter set that does not fit the network rebuilt from the arguments is an error
    with pytest.raises(BayesdlError, match="do not fit"):
        restore_vae({**args, "hidden": "9"}, params)


def test_iwae_png(tmp_path):
    from bayesdl.model_plots import iwae_png

    path = iwae_png([1, 10, 100], [-20.0, -19.5, -19.4], [0.0, 0.1, 0.1], tmp_path / "iwae.png")
    assert path.read_bytes()[:8] == PNG
    with pytest.raises(BayesdlError, match="equal-length"):
        iwae_png([1, 10], [-20.0], [0.0], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_sequence_forecast_png(tmp_path):
    out = tmp_path / "seq"
    bayesdl.infer("sequence_regression", method="svi", chains=1, draws=20, out=out, progress=False,
                  args={"series": "nile", "window": 5, "hidden": 4}, max_steps=20)
    written = plot_fitted_model(out)
    assert written == [out / "forecast.png"]
    assert written[0].read_bytes()[:8] == PNG


def test_refuses_other_runs_and_unsafe_files(vae_run, tmp_path, capsys):
    other = tmp_path / "other"
    other.mkdir()
    (other / "settings.json").write_text(json.dumps({"model": "eight_schools"}))
    assert main(["plot", str(other), "--kind", "model"]) == 2
    assert "eight_schools" in capsys.readouterr().err
    # a parameter file naming an arbitrary class is refused, not unpickled
    evil = tmp_path / "guide_params.pt"
    torch.save({"params": {"a": torch.zeros(1)}, "extra": pathlib.PurePosixPath("x")}, evil)
    with pytest.raises(BayesdlError, match="safely"):
        load_param_state(evil)
    with pytest.raises(BayesdlError, match="no fitted parameters"):
        load_param_state(tmp_path / "missing.pt")
