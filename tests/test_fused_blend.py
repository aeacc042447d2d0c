"""The compiled guard and blend (``lightning_recipes.functional._fused``): chosen only where
it gives the eager path's result bit for bit, with the eager path as fallback.

Compiling is tried on CUDA only; here it is turned on for the CPU, where Inductor's C++
kernels stand in for the Triton ones, to run the same selection logic.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from lightning_recipes.functional import _fused
from lightning_recipes.functional.blend import _blend_finite

pytestmark = pytest.mark.slow  # compiling takes seconds per kind of weight map


@pytest.fixture
def compiled_on_cpu(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setattr(_fused, "_DEVICES", ("cpu",))
    monkeypatch.setattr(_fused, "_checked", set())
    monkeypatch.setattr(_fused, "_rejected", set())
    yield


def _eager(x: torch.Tensor, perm: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    weights = torch.rand(x.shape[0], generator=torch.Generator().manual_seed(1))
    return _blend_finite(x, perm, weight, weights, inplace=True)[0]


@pytest.mark.usefixtures("compiled_on_cpu")
def test_a_binary_mask_blends_compiled_with_the_eager_bits_for_any_batch_size(
    recwarn: pytest.WarningsRecorder,
) -> None:
    generator = torch.Generator().manual_seed(0)
    for batch in (8, 5):  # the smaller last batch of an epoch
        x = torch.randn(batch, 3, 12, 10, generator=generator)
        x[1, 0, 0, 0] = float("inf")
        perm = torch.arange(batch).roll(1)
        mask = (torch.rand(batch, 1, 12, 10, generator=generator) > 0.5).float()
        weights = torch.rand(batch, generator=generator)
        mixed, mixed_weights = _blend_finite(x, perm, mask, weights, inplace=False)
        assert torch.equal(mixed.nan_to_num(9.0), _eager(x.clone(), perm, mask).nan_to_num(9.0))
        assert mixed_weights[2] == 1.0  # sample 2 takes image 1, which is not finite
    key = ("cpu", torch.float32, 4, (False, True, False, False))
    assert key in _fused._checked and key not in _fused._rejected  # the compiled path ran
    # The compiled function calls no cached helper (the compiler would warn, once).
    assert not [w for w in recwarn if "lru_cache" in str(w.message)]


@pytest.mark.usefixtures("compiled_on_cpu")
def test_a_kind_whose_compiled_bits_differ_falls_back_to_the_eager_path() -> None:
    # Fractional weights: Inductor's C++ lerp rounds differently from eager's in some
    # elements (measured), so the first comparison rejects the kind for good.
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, 16, 16, generator=generator)
    perm = torch.arange(64).roll(1)
    ratio = torch.rand(64, 1, 1, 1, generator=generator)
    weights = torch.rand(64, generator=generator)
    for _ in range(2):
        mixed, _ = _blend_finite(x, perm, ratio, weights, inplace=False)
        assert torch.equal(mixed, _eager(x.clone(), perm, ratio))
    key = ("cpu", torch.float32, 4, (False, True, True, True))
    assert key in _fused._checked or key in _fused._rejected


def test_other_devices_never_compile(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_fused, "_compiled", None)  # calling it would raise
    x = torch.randn(4, 2, 3, 3)
    perm = torch.tensor([1, 2, 3, 0])
    mixed, _ = _blend_finite(x, perm, 0.25, torch.full((4,), 0.25), inplace=False)
    assert torch.equal(mixed, torch.lerp(x[perm], x, 0.25))


@pytest.mark.usefixtures("compiled_on_cpu")
def test_a_compiler_failure_warns_once_and_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> object:
        def fail(*args: object) -> object:
            raise RuntimeError("no compiler")

        return fail

    monkeypatch.setattr(_fused, "_compiled", broken)
    x = torch.randn(4, 2, 3, 3)
    perm = torch.tensor([1, 2, 3, 0])
    with pytest.warns(RuntimeWarning, match="compiled blend failed"):
        mixed, _ = _blend_finite(x, perm, 0.25, torch.full((4,), 0.25), inplace=False)
    assert torch.equal(mixed, torch.lerp(x[perm], x, 0.25))
    mixed, _ = _blend_finite(x, perm, 0.25, torch.full((4,), 0.25), inplace=False)  # no warning
