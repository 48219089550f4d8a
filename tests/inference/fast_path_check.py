"""Checks shared by the one-call fast paths (NUTS's scripted tree, ChEES's scripted
trajectory): the method builds the fast path once when the potential is traced and not
at all when it is not, and a builder that fails warns and leaves the Python loop."""

from __future__ import annotations

from types import ModuleType

import pytest

import bayesdl


def built_once_when_traced(monkeypatch: pytest.MonkeyPatch, module: ModuleType, builder: str,
                           method: str, chains: int) -> list:
    """Run ``method`` traced, then eager; assert ``module.builder`` ran once (for the
    traced run) and return what it built."""
    built = []
    original = getattr(module, builder)
    monkeypatch.setattr(module, builder, lambda *a: built.append(original(*a)) or built[-1])
    bayesdl.infer("eight_schools", method=method, chains=chains, warmup=5, draws=5, seed=1,
                  progress=False)
    assert len(built) == 1
    bayesdl.infer("eight_schools", method=method, chains=chains, warmup=5, draws=5, seed=1,
                  progress=False, potential="eager")
    assert len(built) == 1
    return built


def failed_build_warns(monkeypatch: pytest.MonkeyPatch, module: ModuleType, builder: str,
                       method: str, chains: int, warning: str) -> None:
    """A ``module.builder`` that raises gives ``warning`` and a complete run."""

    def refuse(*args):
        raise RuntimeError("unsupported")

    monkeypatch.setattr(module, builder, refuse)
    with pytest.warns(UserWarning, match=warning):
        idata = bayesdl.infer("eight_schools", method=method, chains=chains, warmup=5, draws=5,
                              seed=1, progress=False)
    assert idata.posterior["mu"].shape == (chains, 5)
