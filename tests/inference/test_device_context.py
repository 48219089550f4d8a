"""A run on CUDA makes CUDA torch's default device (``bayesdl.device.run_context``), and
a CPU generator cannot fill a CUDA tensor: every random factory given a generator must
also name its device. Checked on the CPU by watching the factory calls of short runs
(this broke the first GPU run, on an H200)."""

from __future__ import annotations

import traceback

import pytest
import torch
from torch.overrides import TorchFunctionMode

import bayesdl

RANDOM_FACTORIES = {torch.rand, torch.randn, torch.randint, torch.randperm}


class GeneratorWithoutDevice(TorchFunctionMode):
    """Records where a random factory is given a generator but no device."""

    def __init__(self) -> None:
        super().__init__()
        self.places: set[str] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in RANDOM_FACTORIES and kwargs.get("generator") is not None and "device" not in kwargs:
            ours = [f for f in traceback.extract_stack()[:-1]
                    if "/inference/" in f.filename or "/bayesdl/" in f.filename
                    or "/models/" in f.filename]
            self.places.add(f"{ours[-1].filename}:{ours[-1].lineno}" if ours else "?")
        return func(*args, **kwargs)


@pytest.mark.parametrize("method", ["nuts", "chees", "hmc"])
def test_sampling_names_the_device_of_generated_noise(method):
    mode = GeneratorWithoutDevice()
    with mode:
        bayesdl.infer("eight_schools", method=method, chains=2, warmup=20, draws=10, seed=1,
                      progress=False)
    assert not mode.places, f"a generator without a device at {sorted(mode.places)}"


def _model_draws() -> None:
    """The seeded draws that built-in models make inside a run (data, initial weights)."""
    from bayesdl.models.bayesian_gan import BatchedMLP, choose_labelled
    from bayesdl.models.digits import digits
    from bayesdl.models.latent_priors import DirichletProcessPrior, GaussianMixturePrior
    from bayesdl.models.lstm_kalman import coordinated_turn_tracks
    from bayesdl.models.rbm import init_rbm, rbm_data

    digits("train")
    rbm_data(num_points=10)
    init_rbm(6, 3)
    GaussianMixturePrior(2, num_components=3)
    DirichletProcessPrior(2, truncation=4)
    coordinated_turn_tracks(2, 5)
    BatchedMLP([3, 4, 1]).init(2, torch.Generator().manual_seed(0), torch.float64)
    choose_labelled(torch.tensor([0, 1, 0, 1, 1]), 2, 2)


def test_built_in_models_name_the_device_of_generated_noise():
    mode = GeneratorWithoutDevice()
    with mode:
        _model_draws()
    assert not mode.places, f"a generator without a device at {sorted(mode.places)}"


def test_the_check_sees_a_generator_without_a_device():
    mode = GeneratorWithoutDevice()
    with mode:
        torch.randn(3, generator=torch.Generator().manual_seed(0))
        torch.randn(3, generator=torch.Generator().manual_seed(0), device="cpu")
    assert len(mode.places) == 1


def test_the_fuser_switch_turns_torchscripts_fusers_off_and_restores_them():
    """What a CUDA run does to TorchScript's fusers (``run_context``), checked on the CPU:
    off inside, restored after, also when the run raises."""
    from bayesdl.device import _torchscript_fuser_off
    before = (torch._C._jit_texpr_fuser_enabled(), torch._C._jit_can_fuse_on_gpu())
    with pytest.raises(RuntimeError), _torchscript_fuser_off():
        assert not torch._C._jit_texpr_fuser_enabled()
        assert not torch._C._jit_can_fuse_on_gpu()
        raise RuntimeError("a model that raises")
    assert (torch._C._jit_texpr_fuser_enabled(), torch._C._jit_can_fuse_on_gpu()) == before
