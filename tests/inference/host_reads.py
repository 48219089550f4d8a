"""Operations that make the host wait for the device: a scalar read, or a result whose
shape depends on the data. On a GPU each is a synchronisation, and inside CUDA-graph
capture an error; :class:`HostReads` records them, so that CPU tests can check the code
that a GPU captures (run with ``capture=False``)."""

from __future__ import annotations

import operator

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
WAITS = {aten._local_scalar_dense, aten.item, aten.is_nonzero, aten.equal, aten.nonzero,
         aten.masked_select, aten._unique2, aten.unique_dim, aten.unique_consecutive,
         aten.repeat_interleave}
ON_HOST_NUMBERS = {aten._local_scalar_dense: lambda x: x, aten.item: lambda x: x,
                   aten.equal: operator.eq, aten.is_nonzero: bool}
INDEXING = {aten.index, aten.index_put, aten.index_put_}


class HostReads(TorchDispatchMode):
    """Records the host-waiting operations run inside it (``seen``), TorchScript's too."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        packet = func.overloadpacket
        if packet in ON_HOST_NUMBERS and not any(torch.is_tensor(arg) for arg in args):
            # TorchScript's scalar constants reach a Python mode as numbers: already on
            # the host, nothing read from the device
            return ON_HOST_NUMBERS[packet](*args)
        if packet in WAITS:
            self.seen.append(str(func))
        elif packet in INDEXING and any(
                torch.is_tensor(index) and index.dtype == torch.bool for index in args[1]
                if index is not None):
            self.seen.append(f"{func} with a boolean mask")
        return func(*args, **(kwargs or {}))
