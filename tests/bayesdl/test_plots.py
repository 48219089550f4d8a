"""Diagnostic plots: a many-chain run draws its first chains only, and says so."""

from __future__ import annotations

import arviz as az
import matplotlib.figure
import numpy as np
import pytest

from bayesdl import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _idata(chains: int, draws: int = 80) -> az.InferenceData:
    rng = np.random.default_rng(0)
    return az.from_dict(posterior={"mu": rng.normal(size=(chains, draws)),
                                   "tau": rng.gamma(2.0, size=(chains, draws))})


def _count_chains_drawn(monkeypatch, arviz_function: str) -> list[int]:
    """Wrap ArviZ's plot function to record how many chains each call receives."""
    drawn: list[int] = []
    real_plot = getattr(az, arviz_function)

    def spy(idata, **kwargs):
        drawn.append(idata.posterior.sizes["chain"])
        return real_plot(idata, **kwargs)

    monkeypatch.setattr(az, arviz_function, spy)
    return drawn


@pytest.mark.parametrize("kind, arviz_function", [("trace", "plot_trace"), ("rank", "plot_rank")])
@pytest.mark.parametrize("chains", [3, 64])
def test_trace_and_rank_draw_at_most_max_chains(monkeypatch, tmp_path, kind, arviz_function,
                                                chains):
    drawn = _count_chains_drawn(monkeypatch, arviz_function)
    titles = []
    real_savefig = matplotlib.figure.Figure.savefig

    def savefig(figure, *args, **kwargs):
        titles.append(figure.get_suptitle())
        return real_savefig(figure, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", savefig)
    path = plots.plot(_idata(chains), kind, tmp_path / f"{kind}.png")
    assert path.read_bytes()[:8] == PNG_MAGIC
    assert drawn == [min(chains, plots.MAX_CHAINS_DRAWN)]
    if chains > plots.MAX_CHAINS_DRAWN:
        assert titles == [f"chains 0-{plots.MAX_CHAINS_DRAWN - 1} of {chains}"]
    else:
        assert titles == [""]


def test_forest_uses_every_chain(monkeypatch, tmp_path):
    """The forest plot's R-hat and ESS columns are over all chains, not the drawn few."""
    drawn = _count_chains_drawn(monkeypatch, "plot_forest")
    plots.plot(_idata(16), "forest", tmp_path / "forest.png")
    assert drawn == [16]
