"""Pure functions for mixed-sample augmentation: MixUp, CutMix and FMix.

Each function takes its randomness as arguments (``lam``, the partner permutation ``perm`` and,
for boxes and masks, a ``torch.Generator``) so that drawing and applying are separate steps:

>>> import torch
>>> from lightning_recipes.functional import mix_targets, mixup, sample_lam, sample_partners
>>> g = torch.Generator().manual_seed(0)
>>> x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 10, (6,))
>>> lam, perm = sample_lam(1.0, (6,), generator=g), sample_partners(6, generator=g)
>>> mixed, weights = mixup(x, lam, perm)
>>> mix_targets(y, weights, perm, num_classes=10).shape
torch.Size([6, 10])
"""

from lightning_recipes.functional.blend import blend
from lightning_recipes.functional.cutmix import box_mask, cutmix, sample_boxes
from lightning_recipes.functional.fmix import fmix, sample_fmix_mask
from lightning_recipes.functional.mixup import mixup
from lightning_recipes.functional.sampling import sample_lam, sample_partners
from lightning_recipes.functional.targets import mix_targets, soft_targets

__all__ = [
    "blend",
    "box_mask",
    "cutmix",
    "fmix",
    "mix_targets",
    "mixup",
    "sample_boxes",
    "sample_fmix_mask",
    "sample_lam",
    "sample_partners",
    "soft_targets",
]
