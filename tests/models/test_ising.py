"""The Ising model against Kaufman's exact finite-lattice solution, and the ``ising`` /
``potts`` built-ins end to end.

Kaufman (1949) gives the partition function of the periodic m x n Ising lattice
(J = 1, K = 1/T) as

    Z = 1/2 (2 sinh 2K)^(mn/2) [prod_r 2 cosh(m g_{2r+1}/2) + prod_r 2 sinh(m g_{2r+1}/2)
                               + prod_r 2 cosh(m g_{2r}/2)   + prod_r 2 sinh(m g_{2r}/2)]

(r = 0..n-1) with cosh g_k = cosh 2K coth 2K - cos(pi k / n) and g_0 = 2K + ln tanh K
(signed: it changes sign at T_c). Written here in mpmath (50 digits), checked against
brute-force enumeration of all 2^16 states of a 4 x 4 and 2^12 of a 3 x 4 lattice; the
energy per site u = -(1/N) d ln Z / dK and specific heat c = (K^2/N) d^2 ln Z / dK^2
(Ferdinand & Fisher 1969) come from mpmath's numerical derivatives.

SW draws must match u within 4 MCSE (ArviZ ESS of the energy) and c within 4 MCSE
(ESS of the squared deviations), at T = 2.0, 2.269 and 3.0.
"""

from __future__ import annotations

import itertools
import math

import arviz as az
import mpmath as mp
import numpy as np
import pytest
import torch

import bayesdl
from bayesdl.errors import BayesdlError
from bayesdl.inference.counter_rng import ChainRNG
from bayesdl.inference.driver import run_kernel
from bayesdl.inference.potts import PottsGraph, ising_beta
from bayesdl.inference.settings import chain_seed
from bayesdl.inference.swendsen_wang import SwendsenWangKernel

Z_MAX = 4.0
TEMPERATURES = [2.0, 2.269, 3.0]


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test here runs on one torch thread (see tests/conftest.py)."""


def kaufman_log_z(K, m: int, n: int):
    """ln Z of the periodic m x n Ising lattice at coupling K (mpmath number)."""
    K = mp.mpf(K)

    def gamma(k: int):
        if k == 0:
            return 2 * K + mp.log(mp.tanh(K))
        return mp.acosh(mp.cosh(2 * K) * mp.coth(2 * K) - mp.cos(mp.pi * k / n))

    odd = [gamma(2 * r + 1) for r in range(n)]
    even = [gamma(2 * r) for r in range(n)]
    total = (mp.fprod(2 * mp.cosh(m * g / 2) for g in odd) + mp.fprod(2 * mp.sinh(m * g / 2) for g in odd)
             + mp.fprod(2 * mp.cosh(m * g / 2) for g in even)
             + mp.fprod(2 * mp.sinh(m * g / 2) for g in even))
    return mp.log(total / 2) + (m * n / mp.mpf(2)) * mp.log(2 * mp.sinh(2 * K))


def exact_energy_and_heat(L: int, temperature: float) -> tuple[float, float]:
    """Energy and specific heat per site of the periodic L x L lattice."""
    with mp.workdps(50):
        K = mp.mpf(1) / mp.mpf(temperature)
        first = mp.diff(lambda k: kaufman_log_z(k, L, L), K, 1)
        second = mp.diff(lambda k: kaufman_log_z(k, L, L), K, 2)
        return float(-first / L**2), float(K**2 * second / L**2)


def brute_force_log_z(K: float, m: int, n: int) -> float:
    idx = np.arange(m * n).reshape(m, n)
    edges = np.concatenate([np.stack([idx.ravel(), np.roll(idx, -1, a).ravel()], 1) for a in (0, 1)])
    spins = np.array(list(itertools.product([-1, 1], repeat=m * n)))
    bond_sum = (spins[:, edges[:, 0]] * spins[:, edges[:, 1]]).sum(1)
    top = (K * bond_sum).max()
    return float(top + np.log(np.exp(K * bond_sum - top).sum()))


@pytest.mark.parametrize("m, n", [(4, 4), (3, 4), (4, 3)])
@pytest.mark.parametrize("K", [0.2, 1 / 2.269, 0.6])
def test_kaufman_equals_enumeration(m, n, K):
    assert math.isclose(float(kaufman_log_z(K, m, n)), brute_force_log_z(K, m, n), rel_tol=1e-12)


def test_kaufman_energy_near_onsager_in_the_large_lattice_limit():
    # far from T_c a 64 x 64 lattice is the infinite lattice to many digits; Onsager's
    # energy at T = 3: u = -coth(2K) [1 + (2/pi)(2 tanh^2 2K - 1) K1(k)], k = 2 sinh 2K / cosh^2 2K
    K = 1 / 3.0
    k = 2 * math.sinh(2 * K) / math.cosh(2 * K) ** 2
    onsager = -1 / math.tanh(2 * K) * (1 + 2 / math.pi * (2 * math.tanh(2 * K) ** 2 - 1)
                                       * float(mp.ellipk(k**2)))
    assert math.isclose(exact_energy_and_heat(64, 3.0)[0], onsager, rel_tol=1e-6)


def sw_energies(L: int, temperature: float, chains: int, warmup: int, draws: int) -> np.ndarray:
    """``[chains, draws]`` energy per site of SW on the periodic L x L Ising lattice."""
    graph = PottsGraph.lattice(L, L)
    kernel = SwendsenWangKernel(2, graph, torch.tensor(ising_beta(temperature), dtype=torch.float64))
    rng = ChainRNG([chain_seed(0, c) for c in range(chains)])
    start = (rng.uniform(0, 7, (graph.num_sites,)) * 2).floor()
    flat, _, _ = run_kernel(kernel, rng, start, kernel.log_density(start.long()), warmup, draws,
                            progress=False)
    z = flat.long()
    equal = (z[..., graph.edges[:, 0]] == z[..., graph.edges[:, 1]]).sum(-1).double()
    return (-(2 * equal - graph.num_edges) / L**2).numpy()


def check_energy_and_heat(energy: np.ndarray, L: int, temperature: float) -> None:
    exact_u, exact_c = exact_energy_and_heat(L, temperature)
    n = L * L
    u = energy.mean()
    mcse_u = energy.std() / math.sqrt(float(az.ess(energy)))
    sq = (energy - u) ** 2
    c = sq.mean() * n / temperature**2
    mcse_c = sq.std() / math.sqrt(float(az.ess(sq))) * n / temperature**2
    assert abs(u - exact_u) < Z_MAX * mcse_u, (u, exact_u, mcse_u)
    assert abs(c - exact_c) < Z_MAX * mcse_c, (c, exact_c, mcse_c)
    assert mcse_c < 0.1 * exact_c  # the check has power: the MCSE is small


@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_sw_energy_and_specific_heat_match_kaufman_side_16(temperature):
    check_energy_and_heat(sw_energies(16, temperature, chains=32, warmup=50, draws=600), 16,
                          temperature)


@pytest.mark.slow
@pytest.mark.parametrize("temperature", TEMPERATURES)
def test_sw_energy_and_specific_heat_match_kaufman_side_32(temperature):
    check_energy_and_heat(sw_energies(32, temperature, chains=32, warmup=100, draws=1500), 32,
                          temperature)


# ----------------------------------------------------------------- the built-ins
def test_ising_builtin_sw_run_writes_integer_labels(tmp_path):
    idata = bayesdl.infer("ising", method="sw", chains=4, warmup=50, draws=400, seed=1,
                          args={"L": 8, "T": 2.269}, progress=False, out=tmp_path / "run")
    z = idata.posterior["z"]
    assert z.shape == (4, 400, 8, 8) and np.issubdtype(z.dtype, np.integer)
    assert set(np.unique(z.values)) <= {0, 1}
    saved = bayesdl.load(tmp_path / "run")
    assert np.issubdtype(saved.posterior["z"].dtype, np.integer)
    assert np.array_equal(saved.posterior["z"].values, z.values)
    energy = idata.posterior["energy"].values
    exact_u, _ = exact_energy_and_heat(8, 2.269)
    assert abs(energy.mean() - exact_u) < Z_MAX * energy.std() / math.sqrt(float(az.ess(energy)))
    assert "num_clusters" in idata.sample_stats


def test_ising_beta_argument_equals_temperature():
    a = bayesdl.infer("ising", method="gibbs", chains=2, warmup=5, draws=10, args={"L": 4, "T": 2.5},
                      progress=False)
    b = bayesdl.infer("ising", method="gibbs", chains=2, warmup=5, draws=10,
                      args={"L": 4, "beta": 2 / 2.5}, progress=False)
    assert np.array_equal(a.posterior["z"].values, b.posterior["z"].values)


def test_potts_builtin_runs_with_gibbs_and_sw():
    for method in ("sw", "gibbs"):
        idata = bayesdl.infer("potts", method=method, chains=2, warmup=10, draws=20,
                              args={"q": 4, "L": 6, "beta": 1.0}, progress=False)
        assert set(np.unique(idata.posterior["z"].values)) <= {0, 1, 2, 3}


@pytest.mark.parametrize("args, message", [({"L": 2}, "L must be"), ({"T": -1.0}, "temperature"),
                                           ({"L": 4, "beta": -1.0}, "temperature|beta")])
def test_bad_arguments_are_one_line_errors(args, message):
    with pytest.raises(BayesdlError, match=message):
        bayesdl.infer("ising", method="sw", chains=1, warmup=1, draws=1, args=args, progress=False)


def test_continuous_methods_refuse_the_label_field():
    with pytest.raises(BayesdlError, match="discrete"):
        bayesdl.infer("ising", method="mh", chains=1, warmup=1, draws=1, args={"L": 4},
                      progress=False)
