"""A new CPU tensor whose fresh pages are faulted in with one system call.

A batch-sized CPU tensor is often fresh memory: glibc's ``malloc`` maps every allocation of
32 MiB or more anew (a 64x3x224x224 float32 batch is 38.5 MB) and gives it back to the OS when
it is freed, so the first write to each 4 KiB page of it takes a page fault, a trap into the
kernel per page. For a copy of such a batch the faults cost several times the copy itself
(``benchmarks/RESULTS.md``). Linux (5.14 and later) can fault a whole range in with one call,
``madvise(MADV_POPULATE_WRITE)``, without the traps; torch has no such option, hence this
module. Where the memory is already resident (``malloc`` reused it), one ``mincore`` call on
one page sees it and nothing else is done, since populating resident pages still walks them.

It is done at one intra-op thread only. With more, torch's ops fault a new tensor's pages in
on every thread at once, which measured as fast as one ``madvise`` call or faster.

Only the time changes: the tensor is the one ``torch.empty_like`` returns, its values are
written by the caller as before. Anywhere else (another OS, an older kernel, a failing call)
the pages are left to be faulted in by the writes.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["empty_populated_like", "populate"]

# Below this, a tensor comes from malloc's heap, whose pages are mostly resident already.
_MIN_BYTES = 4 * 1024 * 1024
_MADV_POPULATE_WRITE = 23  # <linux/mman.h>, Linux 5.14


class _Libc:
    """``madvise`` and ``mincore`` of the running C library, or ``None`` where they cannot be
    called (not Linux, no symbols, or ``madvise`` refused ``MADV_POPULATE_WRITE`` once)."""

    def __init__(self) -> None:
        self.madvise: Callable[..., int] | None = None
        self.mincore: Callable[..., int] | None = None
        self.page = 4096
        self.resident = ctypes.c_ubyte(0)
        if not sys.platform.startswith("linux"):
            return
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            madvise, mincore = libc.madvise, libc.mincore
        except (OSError, AttributeError):
            return
        for function in (madvise, mincore):
            function.restype = ctypes.c_int
        madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        self.madvise, self.mincore = madvise, mincore
        self.page = os.sysconf("SC_PAGE_SIZE")


_libc: _Libc | None = None


def _get_libc() -> _Libc:
    global _libc
    if _libc is None:
        _libc = _Libc()
    return _libc


def populate(t: Tensor) -> bool:
    """Faults in the whole pages inside ``t``'s bytes with one ``madvise`` call, unless its
    middle page is resident already; returns whether the call was made and succeeded.

    ``t`` is a dense CPU tensor (in any memory format), as :func:`empty_populated_like`
    makes it. Its values do not change: a page not yet in memory reads as zeros before the
    call and after it, and a resident page is left as it is."""
    libc = _get_libc()
    nbytes = t.numel() * t.element_size()
    madvise, mincore = libc.madvise, libc.mincore
    if madvise is None or mincore is None or t.device.type != "cpu" or nbytes < _MIN_BYTES:
        return False
    page = libc.page
    start = -(-t.data_ptr() // page) * page
    end = (t.data_ptr() + nbytes) // page * page
    middle = start + (end - start) // 2 // page * page
    if mincore(middle, page, ctypes.byref(libc.resident)) == 0 and libc.resident.value & 1:
        return False  # malloc reused resident memory
    if madvise(start, end - start, _MADV_POPULATE_WRITE) == 0:
        return True
    if ctypes.get_errno() == 22:  # EINVAL: a kernel without MADV_POPULATE_WRITE; stop asking
        libc.madvise = None
    return False


def empty_populated_like(x: Tensor) -> Tensor:
    """``torch.empty_like(x)`` (the memory format of ``x``), its fresh pages faulted in by
    :func:`populate` on the CPU at one intra-op thread (see the module docstring)."""
    out = torch.empty_like(x)  # dense: x's strides where x is dense, else contiguous
    if torch.get_num_threads() == 1:
        populate(out)
    return out
