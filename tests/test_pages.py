"""The mixed batch's fresh pages, faulted in by one ``madvise`` call (``functional._pages``)."""

from __future__ import annotations

import ctypes
import mmap
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
import torch
from test_rows_blend import small_rows

from lightning_recipes.callbacks.mixing import CutMix, FMix, MixUp
from lightning_recipes.functional import _pages

__all__ = ["small_rows"]  # the fixture, imported for the tests below

linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux's madvise")


def _resident_pages(address: int, size: int) -> int:
    """How many pages of ``[address, address + size)`` are in memory, by ``mincore``: the
    kernel's own count, independent of the module's one-page probe."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
    page = mmap.PAGESIZE
    vector = (ctypes.c_ubyte * (size // page))()
    assert libc.mincore(address, size, vector) == 0, ctypes.get_errno()
    return sum(v & 1 for v in vector)


@pytest.fixture
def fresh() -> Iterator[torch.Tensor]:
    """8 MiB of anonymous memory mapped anew: no page of it is in memory yet."""
    memory = mmap.mmap(-1, 8 << 20)
    t = torch.frombuffer(memory, dtype=torch.float32)
    yield t
    del t
    memory.close()


@pytest.fixture
def fake_libc(monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """A C library whose ``mincore`` sees no page resident and whose ``madvise`` records its
    calls and fails with ``errno`` ``fake.errno`` where that is set."""
    fake = SimpleNamespace(page=4096, resident=ctypes.c_ubyte(0), calls=[], errno=0)

    def madvise(address: int, size: int, advice: int) -> int:
        fake.calls.append((address, size, advice))
        if fake.errno:
            ctypes.set_errno(fake.errno)
            return -1
        return 0

    fake.madvise = madvise
    fake.mincore = lambda address, size, vector: 0
    monkeypatch.setattr(_pages, "_libc", fake)
    return fake


@linux
def test_populate_faults_every_whole_page_in_and_keeps_the_values(fresh: torch.Tensor) -> None:
    address, size = fresh.data_ptr(), fresh.numel() * 4
    assert _resident_pages(address, size) == 0
    fresh[:3] = torch.tensor([1.5, -2.0, 3.0])  # the first page only
    assert _resident_pages(address, size) == 1

    assert _pages.populate(fresh)

    assert _resident_pages(address, size) == size // mmap.PAGESIZE
    assert fresh[:3].tolist() == [1.5, -2.0, 3.0] and not fresh[3:].any()
    assert not _pages.populate(fresh)  # resident now: left as it is


def test_populate_calls_madvise_on_the_whole_pages_inside_the_tensor(
    fake_libc: SimpleNamespace,
) -> None:
    t = torch.empty(5 << 20, dtype=torch.uint8)[100:]  # starts inside a page
    assert _pages.populate(t)
    [(address, size, advice)] = fake_libc.calls
    start, end = t.data_ptr(), t.data_ptr() + t.numel()
    assert address % 4096 == 0 and size % 4096 == 0 and advice == 23  # MADV_POPULATE_WRITE
    assert start <= address < start + 4096 and end - 4096 < address + size <= end


def test_populate_leaves_small_tensors_and_resident_memory_alone(
    fake_libc: SimpleNamespace,
) -> None:
    assert not _pages.populate(torch.empty(_pages._MIN_BYTES // 4 - 1))

    def resident(address: int, size: int, vector: object) -> int:
        fake_libc.resident.value = 1
        return 0

    fake_libc.mincore = resident
    assert not _pages.populate(torch.empty(_pages._MIN_BYTES // 4))
    assert fake_libc.calls == []


def test_a_kernel_without_populate_write_is_asked_once(fake_libc: SimpleNamespace) -> None:
    fake_libc.errno = 22  # EINVAL: Linux before 5.14
    t = torch.empty(_pages._MIN_BYTES)
    assert not _pages.populate(t)
    assert fake_libc.madvise is None  # not asked again
    assert not _pages.populate(t) and len(fake_libc.calls) == 1


def test_another_failure_leaves_populate_on(fake_libc: SimpleNamespace) -> None:
    fake_libc.errno = 12  # ENOMEM
    t = torch.empty(_pages._MIN_BYTES)
    assert not _pages.populate(t) and fake_libc.madvise is not None
    fake_libc.errno = 0
    assert _pages.populate(t) and len(fake_libc.calls) == 2


def test_without_madvise_nothing_is_called(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pages, "_libc", SimpleNamespace(madvise=None, mincore=None, page=4096))
    assert not _pages.populate(torch.empty(_pages._MIN_BYTES))


def test_the_libc_is_found_on_linux_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "platform", "darwin")
    assert _pages._Libc().madvise is None
    monkeypatch.setattr(sys, "platform", "linux")
    assert _pages._Libc().madvise is not None


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided view"])
@pytest.mark.parametrize("threads", [1, 2])
def test_empty_populated_like_is_empty_like_populated_at_one_thread(
    monkeypatch: pytest.MonkeyPatch, layout: str, threads: int
) -> None:
    calls: list[torch.Tensor] = []
    monkeypatch.setattr(_pages, "populate", lambda t: calls.append(t) or True)
    x = torch.zeros(4, 3, 6, 8, dtype=torch.bfloat16)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "strided view":
        x = x[:, :, ::2]
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        out = _pages.empty_populated_like(x)
    finally:
        torch.set_num_threads(before)
    expected = torch.empty_like(x)
    assert (out.shape, out.dtype, out.stride()) == (x.shape, x.dtype, expected.stride())
    assert [t is out for t in calls] == ([True] if threads == 1 else [])


@pytest.mark.usefixtures("small_rows")
@pytest.mark.parametrize(
    "callback",
    [MixUp(seed=0), CutMix(seed=0), CutMix(seed=0, per_sample=True), FMix(seed=0, per_sample=True)],
    ids=["mixup", "cutmix-paste", "cutmix-sample", "fmix-sample"],
)
def test_the_sample_at_a_time_hooks_write_into_populated_memory(
    monkeypatch: pytest.MonkeyPatch, callback: MixUp
) -> None:
    from test_rows_blend import _run_hook

    populated: list[int] = []
    monkeypatch.setattr(_pages, "populate", lambda t: populated.append(t.data_ptr()) or True)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        mixed = _run_hook(callback, [torch.randn(4, 3, 16, 16), torch.arange(4)], 4)[0]
    finally:
        torch.set_num_threads(before)
    assert populated == [mixed.data_ptr()]
