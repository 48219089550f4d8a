"""The per-chain counter-based RNG: a SplitMix64 hash of (key, step, stream, element).

Checked against a pure-Python SplitMix64 (and its published test vectors), for its
distributions (Kolmogorov-Smirnov at a fixed seed, with a power check showing the
test would catch a small distortion), for independence across steps, streams and
chains, and for the property the batched kernels rely on: chain ``c`` of a batch sees
the same numbers as a one-chain generator with the same seed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from bayesdl.inference.counter_rng import (
    ChainRNG,
    _mix_scripted,
    mix64,
    uniform_at,
    uniform_grid_at,
)

MASK = (1 << 64) - 1
GOLDEN = 0x9E3779B97F4A7C15
# At a fixed seed the tests are deterministic; ALPHA is the level they would reject a
# correct generator at over random seeds. test_ks_has_power shows that at this level
# and sample size a distortion of the CDF by under 1% is rejected.
ALPHA = 1e-3
N = 200_000


def splitmix64_finaliser(x: int) -> int:
    """SplitMix64's output for state ``x`` (Steele, Lea & Flood 2014), unsigned."""
    z = (x + GOLDEN) & MASK
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def to_signed(x: int) -> int:
    return x - (1 << 64) if x >= (1 << 63) else x


def to_unsigned(x: int) -> int:
    return x & MASK


# ----------------------------------------------------------------- the hash
def test_reference_matches_published_splitmix64_vectors():
    # The reference itself, against the published SplitMix64 outputs (seed 0 and the
    # 1234567 vectors of Vigna's splitmix64.c as used by rand_xoshiro's tests).
    assert splitmix64_finaliser(0) == 0xE220A8397B1DCDAF
    state, outputs = 1234567, []
    for _ in range(5):
        outputs.append(splitmix64_finaliser(state))
        state = (state + GOLDEN) & MASK
    assert outputs == [6457827717110365317, 3203168211198807973, 9817491932198370423,
                       4593380528125082431, 16408922859458223821]


def test_mix64_equals_pure_python_splitmix64():
    rng = np.random.default_rng(1)
    values = [0, 1, 2, 12345, (1 << 63) - 1, 1 << 63, MASK, GOLDEN, 0xDEADBEEFCAFEBABE]
    values += [int(v) for v in rng.integers(0, 1 << 63, size=200, dtype=np.uint64)]
    values += [int(v) | (1 << 63) for v in rng.integers(0, 1 << 63, size=200, dtype=np.uint64)]
    tensor = torch.tensor([to_signed(v) for v in values], dtype=torch.int64)
    got = [to_unsigned(int(v)) for v in mix64(tensor)]
    assert got == [splitmix64_finaliser(v) for v in values]
    assert torch.equal(_mix_scripted(tensor), mix64(tensor))  # the scripted copy


def test_mix64_is_a_bijection_on_a_sample():
    x = torch.arange(-50_000, 50_000, dtype=torch.int64)
    assert torch.unique(mix64(x)).numel() == x.numel()


def test_bits_follow_the_documented_counter_scheme():
    # bits[c, i] = mix64(mix64(keys[c] ^ counter(step, stream)) + (i + 1) * STEP),
    # keys[c] = mix64(mix64(seed_c)): recomputed here in pure Python.
    step_const = 0xD1B54A32D192ED03
    seeds, step, stream, n = [0, 7, 2**40 + 3], 17, 2, 5
    rng = ChainRNG(seeds)
    bits = rng.bits(step, stream, (n,))
    counter = ((step * 0x10001 + stream) * step_const) & MASK
    for c, seed in enumerate(seeds):
        key = splitmix64_finaliser(splitmix64_finaliser(seed))
        row = splitmix64_finaliser(key ^ counter)
        expected = [splitmix64_finaliser((row + (i + 1) * step_const) & MASK) for i in range(n)]
        assert [to_unsigned(int(b)) for b in bits[c]] == expected


def test_uniform_is_the_top_53_bits_centred():
    rng = ChainRNG([3])
    bits = rng.bits(4, 1, (100,))[0]
    expected = [((to_unsigned(int(b)) >> 11) + 0.5) * 2.0**-53 for b in bits]
    assert rng.uniform(4, 1, (100,))[0].tolist() == expected


def test_uniform_at_gives_the_grid_bits_for_tensor_counters():
    """The element-wise form used inside compiled loops equals the scripted grid bit for
    bit, for Python-int and tensor elements, at large steps and streams."""
    rng = ChainRNG([3, -5, 2**40])
    for step, stream in [(0, 100), (12_345, 107), (2**31, 5)]:
        grid = rng.uniform(step, stream, (40,))
        step_t, stream_t = torch.tensor(step), torch.tensor(stream)
        for element in (0, 1, 17, 39):
            assert torch.equal(uniform_at(rng.keys, step_t, stream_t, element), grid[:, element])
            assert torch.equal(uniform_at(rng.keys, step_t, stream_t, torch.tensor(element)),
                               grid[:, element])


def test_uniform_grid_at_gives_the_grid_bits_for_a_tensor_step():
    """The form ChEES's CUDA-graphed transition draws with (the step a device tensor)
    equals the host-counter grid bit for bit, at large steps."""
    rng = ChainRNG([3, -5, 2**40, 7])
    for step, stream, numel in [(0, 31, 1), (12_345, 32, 10), (2**31 + 3, 31, 7)]:
        expected = rng.uniform(step, stream, (numel,))
        assert torch.equal(uniform_grid_at(rng.keys, torch.tensor(step), stream, numel), expected)


# ----------------------------------------------------------------- distributions
def _uniforms(seed: int = 0) -> np.ndarray:
    """N uniforms from 100 chains x 20 steps x 100 elements (all three axes used)."""
    rng = ChainRNG(list(range(seed, seed + 100)))
    parts = [rng.uniform(step, 1, (100,)) for step in range(N // 10_000)]
    return torch.stack(parts, dim=1).flatten().numpy()


def test_uniform_is_uniform_ks():
    u = _uniforms()
    assert u.shape == (N,)
    assert ((u > 0) & (u < 1)).all()  # the open interval: log(u) and ndtri(u) are finite
    assert stats.kstest(u, "uniform").pvalue > ALPHA
    # the moments a KS test is weak on: mean 1/2 and variance 1/12, 5 standard errors
    assert abs(u.mean() - 0.5) < 5 * np.sqrt(1 / 12 / N)
    assert abs(u.var() - 1 / 12) < 5 * np.sqrt(1 / 180 / N)


def test_normal_is_standard_normal_ks():
    rng = ChainRNG(list(range(100)))
    z = torch.stack([rng.normal(step, 2, (100,)) for step in range(20)], 1).flatten().numpy()
    assert np.isfinite(z).all()
    assert stats.kstest(z, "norm").pvalue > ALPHA
    assert abs(z.mean()) < 5 / np.sqrt(N)
    assert abs(z.var() - 1) < 5 * np.sqrt(2 / N)
    # tails: the fraction beyond 3 sd matches 2 * Phi(-3) within 5 binomial sds
    p = 2 * stats.norm.sf(3)
    assert abs((np.abs(z) > 3).mean() - p) < 5 * np.sqrt(p * (1 - p) / N)


def test_ks_has_power():
    """The KS check above is a real check: at this n and ALPHA it rejects u**1.02
    (the CDF off by at most 0.0072), a shift by 0.005, and N(0.01, 1.01^2)."""
    u = _uniforms()
    assert stats.kstest(u**1.02, "uniform").pvalue < ALPHA
    assert stats.kstest(np.clip(u + 0.005, 0, 1), "uniform").pvalue < ALPHA
    rng = ChainRNG(list(range(100)))
    z = torch.stack([rng.normal(step, 2, (100,)) for step in range(20)], 1).flatten().numpy()
    assert stats.kstest(1.01 * z + 0.01, "norm").pvalue < ALPHA


def test_float32_draws_are_in_range():
    rng = ChainRNG(list(range(50)))
    u = rng.uniform(0, 1, (1000,), dtype=torch.float32)
    z = rng.normal(0, 1, (1000,), dtype=torch.float32)
    assert u.dtype == z.dtype == torch.float32
    assert ((u > 0) & (u <= 1)).all() and torch.isfinite(z).all()


# ----------------------------------------------------------------- independence
def _corr_bound(n: int) -> float:
    return 5 / np.sqrt(n)  # 5 standard errors of a sample correlation of independent draws


@pytest.mark.parametrize(
    "other",
    [(0, 2), (1, 1), (2, 1), (1000, 1), (0, 1_000_003)],  # other stream, other steps, init
    ids=["stream", "next-step", "step+2", "far-step", "init-stream"],
)
def test_streams_and_steps_are_uncorrelated(other):
    rng = ChainRNG(list(range(200)))
    a = rng.normal(0, 1, (250,)).flatten().numpy()
    b = rng.normal(*other, (250,)).flatten().numpy()
    assert not np.array_equal(a, b)
    assert abs(np.corrcoef(a, b)[0, 1]) < _corr_bound(a.size)
    # and jointly uniform: chi-square of the 10 x 10 grid of (u_a, u_b)
    ua, ub = stats.norm.cdf(a), stats.norm.cdf(b)
    counts, _, _ = np.histogram2d(ua, ub, bins=10, range=[[0, 1], [0, 1]])
    assert stats.chisquare(counts.flatten()).pvalue > ALPHA


def test_neighbouring_seeds_are_uncorrelated():
    # chain c of a run is seeded seed + c: neighbouring keys must give unrelated numbers
    rng = ChainRNG([0, 1])
    x = rng.normal(5, 2, (50_000,)).numpy()
    assert abs(np.corrcoef(x[0], x[1])[0, 1]) < _corr_bound(50_000)


def test_consecutive_elements_are_uncorrelated():
    x = ChainRNG([11]).normal(0, 2, (100_001,))[0].numpy()
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < _corr_bound(100_000)


def test_no_repeats_across_steps_streams_and_chains():
    rng = ChainRNG(list(range(64)))
    words = torch.cat([rng.bits(step, stream, (32,)).flatten()
                       for step in range(50) for stream in (1, 2, 3)])
    assert torch.unique(words).numel() == words.numel()


def test_same_key_step_stream_repeats():
    rng = ChainRNG([5, 6, 7])
    assert torch.equal(rng.normal(3, 2, (4,)), rng.normal(3, 2, (4,)))
    assert torch.equal(ChainRNG([5, 6, 7]).uniform(3, 1, (4,)), rng.uniform(3, 1, (4,)))


# ----------------------------------------------------------------- per-chain keys
def test_chain_of_a_batch_equals_a_one_chain_generator():
    seeds = [42 + c for c in range(10)]
    batch = ChainRNG(seeds)
    for c in (0, 3, 9):
        alone = ChainRNG([seeds[c]])
        for step, stream in [(0, 1), (0, 2), (17, 1), (999, 2), (0, 1_000_003)]:
            assert torch.equal(batch.normal(step, stream, (3, 2))[c],
                               alone.normal(step, stream, (3, 2))[0])
            assert torch.equal(batch.bits(step, stream, ())[c], alone.bits(step, stream, ())[0])


def test_chain_numbers_do_not_depend_on_batch_size():
    small = ChainRNG([0, 1, 2]).uniform(8, 2, (5,))
    large = ChainRNG(list(range(10_000))).uniform(8, 2, (5,))
    assert torch.equal(small, large[:3])


def test_select_keeps_the_streams_of_the_selected_chains():
    rng = ChainRNG(list(range(8)))
    index = torch.tensor([6, 1])
    sub = rng.select(index)
    assert sub.num_chains == 2
    assert torch.equal(sub.normal(4, 2, (3,)), rng.normal(4, 2, (3,))[index])
    assert torch.equal(rng.select(slice(2, 5)).uniform(1, 1), rng.uniform(1, 1)[2:5])


def test_shape_is_a_view_of_the_element_counter():
    # element i of a draw is the same number whatever shape it is requested in
    rng = ChainRNG([1, 2])
    flat = rng.uniform(3, 1, (12,))
    assert torch.equal(rng.uniform(3, 1, (3, 4)).reshape(2, 12), flat)
    assert torch.equal(rng.uniform(3, 1, (5,)), flat[:, :5])
    assert rng.uniform(3, 1).shape == (2,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_draws_equal_cpu_draws():
    seeds = list(range(1000))
    cpu = ChainRNG(seeds, device="cpu")
    gpu = ChainRNG(seeds, device="cuda")
    assert torch.equal(cpu.bits(7, 2, (33,)), gpu.bits(7, 2, (33,)).cpu())
    # the same uniforms; CUDA's ndtri rounds differently in the last bits (seen on an H200)
    assert torch.equal(cpu.uniform(7, 2, (33,)), gpu.uniform(7, 2, (33,)).cpu())
    torch.testing.assert_close(gpu.normal(7, 2, (33,)).cpu(), cpu.normal(7, 2, (33,)),
                               rtol=1e-13, atol=1e-15)


def test_several_streams_in_one_call_are_the_streams_drawn_one_by_one():
    rng = ChainRNG([3, 1, 4, 1, 5])
    sizes = [3, 4, 6, 10, 18]
    streams = [100 + k for k in range(len(sizes))]
    for dtype in (torch.float64, torch.float32):
        blocks = rng.uniform_streams(7, streams, sizes, dtype)
        for stream, size, block in zip(streams, sizes, blocks, strict=True):
            assert torch.equal(block, rng.uniform(7, stream, (size,), dtype))
