"""Per-chain counter-based random numbers for batched kernels.

Written by hand because torch has no keyed (counter-based) generator: a
``torch.Generator`` yields one stream, so the draws of chain 0 would depend on how
many chains share it. Here every number is a hash of (chain key, step, stream,
element), as in JAX's threefry keys, so chain ``c`` sees the same numbers whether it
runs alone or beside 9,999 others, on CPU or CUDA, with no host round trip.

The hash is SplitMix64 (Steele, Lea & Flood 2014), computed in wrapping int64
tensor arithmetic.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch


def _signed(value: int) -> int:
    """An unsigned 64-bit constant as the int64 with the same bits."""
    return value - (1 << 64) if value >= (1 << 63) else value


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MIX1 = _signed(0xBF58476D1CE4E5B9)
_MIX2 = _signed(0x94D049BB133111EB)
_STEP = _signed(0xD1B54A32D192ED03)
_TWO_POW_MINUS_53 = 2.0**-53


def _shift_right(x: torch.Tensor, bits: int) -> torch.Tensor:
    """Logical right shift of int64 bit patterns (torch's ``>>`` is arithmetic)."""
    return (x >> bits) & ((1 << (64 - bits)) - 1)


def mix64(x: torch.Tensor) -> torch.Tensor:
    """SplitMix64's finaliser: a bijective avalanche hash of int64 tensors."""
    x = x + _GOLDEN
    x = (x ^ _shift_right(x, 30)) * _MIX1
    x = (x ^ _shift_right(x, 27)) * _MIX2
    return x ^ _shift_right(x, 31)


@torch.jit.script
def _mix_scripted(x: torch.Tensor) -> torch.Tensor:
    """:func:`mix64` for scripted code (the constants ``_GOLDEN``, ``_MIX1``, ``_MIX2``
    written out, as TorchScript reads no globals; a test checks it equals mix64)."""
    x = x + -7046029254386353131
    x = (x ^ ((x >> 30) & 0x3FFFFFFFF)) * -4658895280553007687
    x = (x ^ ((x >> 27) & 0x1FFFFFFFFF)) * -7723592293110705685
    return x ^ ((x >> 31) & 0x1FFFFFFFF)


@torch.jit.script
def _to_unit(bits: torch.Tensor) -> torch.Tensor:
    """The top 53 bits as float64 uniforms on the open interval (0, 1)."""
    top53 = (bits >> 11) & 0x1FFFFFFFFFFFFF
    return (top53.to(torch.float64) + 0.5) * 1.1102230246251565e-16


@torch.jit.script
def _spread_row(row: torch.Tensor, numel: int) -> torch.Tensor:
    """``mix64(row + element * _STEP)`` for elements ``1..numel``, ``[C, numel]``."""
    element = torch.arange(1, numel + 1, dtype=torch.int64, device=row.device)
    return _mix_scripted(row[:, None] + element[None, :] * -3335678366873096957)


@torch.jit.script
def _hash_grid(keys: torch.Tensor, counter: int, numel: int) -> torch.Tensor:
    """``mix64(mix64(key ^ counter) + element * _STEP)`` for every key and element
    ``1..numel``, ``[C, numel]``, in one scripted call: samplers draw several times per
    transition, and each unscripted operation costs about a microsecond on CPU."""
    return _spread_row(_mix_scripted(keys ^ counter), numel)


@torch.jit.script
def _uniform_grid(keys: torch.Tensor, counter: int, numel: int) -> torch.Tensor:
    """:func:`_hash_grid` as float64 uniforms on (0, 1)."""
    return _to_unit(_hash_grid(keys, counter, numel))


@torch.jit.script
def _uniform_streams(keys: torch.Tensor, counters: torch.Tensor, column_stream: torch.Tensor,
                     column_element: torch.Tensor) -> torch.Tensor:
    """:func:`_uniform_grid` for several streams in one call: column ``j`` is element
    ``column_element[j]`` (1-based) of the stream whose counter is
    ``counters[column_stream[j]]``; the same bits as one call per stream."""
    rows = _mix_scripted(keys[:, None] ^ counters[None, :])
    return _to_unit(_mix_scripted(rows.index_select(1, column_stream)
                                  + (column_element * -3335678366873096957)[None, :]))


@torch.jit.script
def _uniform_grid_counter(keys: torch.Tensor, counter: torch.Tensor, numel: int) -> torch.Tensor:
    """:func:`_uniform_grid` with the counter a 0-dim int64 tensor (the same bits)."""
    return _to_unit(_spread_row(_mix_scripted(keys ^ counter), numel))


def uniform_grid_at(keys: torch.Tensor, step: torch.Tensor, stream: int, numel: int) -> torch.Tensor:
    """``ChainRNG.uniform(step, stream, (numel,))`` (float64, ``[C, numel]``) with ``step`` a
    0-dim int64 tensor on the keys' device: the same bits with no number from the host,
    for code captured as a CUDA graph (the counter's int64 products wrap like
    :func:`_counter`'s uint64 arithmetic)."""
    return _uniform_grid_counter(keys, (step * 0x10001 + stream) * _STEP, numel)


@functools.cache
def _stream_columns(sizes: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Which stream and which (1-based) element each column of a block of streams is."""
    stream = torch.repeat_interleave(torch.arange(len(sizes)), torch.tensor(sizes))
    element = torch.cat([torch.arange(1, size + 1) for size in sizes])
    return stream.to(device), element.to(device)


def uniform_at(keys: torch.Tensor, step: torch.Tensor, stream: torch.Tensor,
               element: int | torch.Tensor) -> torch.Tensor:
    """Element ``element`` (0-based, flat) of ``ChainRNG.uniform(step, stream, shape)``
    for every key, float64, with ``step``/``stream``/``element`` tensors: the same bits,
    in plain tensor arithmetic that traced and compiled code (NUTS's compiled loop) can
    hold. (int64 products wrap like the uint64 arithmetic of :func:`_counter`.)"""
    counter = (step * 0x10001 + stream) * _STEP
    if isinstance(element, int):  # a Python constant must be wrapped to int64 here
        offset = _signed(((element + 1) * (_STEP % (1 << 64))) % (1 << 64))
    else:
        offset = (element + 1) * _STEP
    hashed = mix64(mix64(keys ^ counter) + offset)
    return (_shift_right(hashed, 11).to(torch.float64) + 0.5) * _TWO_POW_MINUS_53


def _counter(step: int, stream: int) -> int:
    """The int64 counter of (step, stream), mixed with the chain key before hashing."""
    return _signed(((int(step) * 0x10001 + int(stream)) * 0xD1B54A32D192ED03) % (1 << 64))


class ChainRNG:
    """Random numbers keyed per chain: ``rng.normal(step, stream, shape)`` is ``[C, *shape]``.

    ``step`` and ``stream`` are plain ints (the iteration and the purpose of the
    draw inside it), so the same (key, step, stream) always gives the same numbers.
    """

    def __init__(self, seeds: Sequence[int] | torch.Tensor, device: torch.device | str = "cpu"):
        seeds = torch.as_tensor(seeds, dtype=torch.int64, device=device)
        self.keys = mix64(mix64(seeds))
        self.device = self.keys.device

    @property
    def num_chains(self) -> int:
        return self.keys.shape[0]

    def select(self, index: torch.Tensor | slice) -> ChainRNG:
        """The generators of a subset of chains (same streams as in the full set)."""
        out = ChainRNG.__new__(ChainRNG)
        out.keys = self.keys[index]
        out.device = self.device
        return out

    def bits(self, step: int, stream: int, shape: Sequence[int]) -> torch.Tensor:
        """Uniform int64 bit patterns shaped ``[C, *shape]``."""
        counter = _counter(step, stream)
        numel = 1
        for n in shape:
            numel *= int(n)
        return _hash_grid(self.keys, counter, numel).reshape((self.num_chains, *shape))

    def uniform(
        self, step: int, stream: int, shape: Sequence[int] = (), dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """Uniform draws on the open interval (0, 1), 53 bits of resolution."""
        numel = 1
        for n in shape:
            numel *= int(n)
        grid = _uniform_grid(self.keys, _counter(step, stream), numel)
        return grid.reshape((self.num_chains, *shape)).to(dtype)

    def counters(self, step: int, streams: Sequence[int]) -> list[int]:
        """The hash counters of ``(step, stream)`` for each stream: what code that draws
        its own numbers (a scripted NUTS tree) passes to the scripted hash."""
        return [_counter(step, stream) for stream in streams]

    def uniform_streams(self, step: int, streams: Sequence[int], sizes: Sequence[int],
                        dtype: torch.dtype = torch.float64) -> list[torch.Tensor]:
        """``[uniform(step, stream, (size,), dtype) for stream, size in ...]`` in one call:
        a sampler that draws from several streams per step (NUTS, one per doubling)
        pays the hash's ~30 operations once instead of once per stream."""
        counters = torch.tensor([_counter(step, stream) for stream in streams],
                                dtype=torch.int64, device=self.device)
        columns = _stream_columns(tuple(int(n) for n in sizes), self.device)
        block = _uniform_streams(self.keys, counters, *columns).to(dtype)
        return list(block.split([int(n) for n in sizes], dim=1))

    def normal(
        self, step: int, stream: int, shape: Sequence[int] = (), dtype: torch.dtype = torch.float64
    ) -> torch.Tensor:
        """Standard normal draws by inversion of the uniform (exact to float64 precision)."""
        return torch.special.ndtri(self.uniform(step, stream, shape, torch.float64)).to(dtype)
