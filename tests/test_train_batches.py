"""Device-resident batches: crop/flip against a per-image reference, sharding, mixup, determinism."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from unifiedctx.data.base import ImageData
from unifiedctx.train import DeviceBatches, crop_flip, derive_seed, mix_batch


def toy_data(n_train=64, n_test=20, size=8, channels=3, classes=4, seed=0) -> ImageData:
    gen = torch.Generator().manual_seed(seed)
    img = lambda n: torch.randint(0, 256, (n, channels, size, size), generator=gen, dtype=torch.uint8)
    lab = lambda n: torch.randint(0, classes, (n,), generator=gen)
    return ImageData("toy", img(n_train), lab(n_train), img(n_test), lab(n_test),
                     [str(i) for i in range(classes)], (0.5,) * channels, (0.25,) * channels)


@pytest.mark.parametrize("mode", ["reflect", "zero"])
def test_crop_flip_matches_pad_slice_flip_per_image(mode):
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (6, 3, 8, 10), generator=gen, dtype=torch.uint8)
    p = 3
    oy = torch.randint(0, 2 * p + 1, (6,), generator=gen)
    ox = torch.randint(0, 2 * p + 1, (6,), generator=gen)
    flip = torch.tensor([True, False, True, False, True, True])
    out = crop_flip(x, oy, ox, flip, p, mode)
    for b in range(6):
        pad_mode = "reflect" if mode == "reflect" else "constant"
        padded = F.pad(x[b : b + 1].float(), (p, p, p, p), mode=pad_mode)
        ref = padded[0, :, oy[b] : oy[b] + 8, ox[b] : ox[b] + 10]
        if flip[b]:
            ref = ref.flip(-1)
        assert torch.equal(out[b].float(), ref), f"image {b}"
    assert out.dtype == torch.uint8 and out.shape == x.shape


def test_crop_flip_rejects_bad_mode_and_padding():
    x = torch.zeros(1, 1, 4, 4)
    z = torch.zeros(1, dtype=torch.long)
    with pytest.raises(ValueError, match="padding_mode"):
        crop_flip(x, z, z, z.bool(), 1, "wrap")
    with pytest.raises(ValueError, match="padding=4"):
        crop_flip(x, z, z, z.bool(), 4, "reflect")


def test_no_augment_gives_the_normalised_images_in_permutation_order():
    ds = toy_data()
    b = DeviceBatches(ds, 16, "cpu", seed=3, augment=False)
    seen = []
    for x, target, labels in b.epoch(0):
        assert x.shape == (16, 3, 8, 8) and x.dtype == torch.float32 and torch.equal(target, labels)
        seen.append(x)
    x = torch.cat(seen)
    ref = ds.normalize(ds.train_x)
    # every batch row is one training image, each used once
    match = (x.view(64, 1, -1) - ref.view(1, 64, -1)).abs().amax(-1) < 1e-6
    assert match.sum(1).eq(1).all() and match.sum(0).eq(1).all()


def test_order_and_augmentation_depend_only_on_seed_and_epoch():
    ds = toy_data()
    a = [x for x, *_ in DeviceBatches(ds, 16, "cpu", seed=1).epoch(2)]
    b = [x for x, *_ in DeviceBatches(ds, 16, "cpu", seed=1).epoch(2)]
    c = [x for x, *_ in DeviceBatches(ds, 16, "cpu", seed=1).epoch(3)]
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert derive_seed(1, 2) != derive_seed(2, 1)


@pytest.mark.parametrize("mix", [{}, {"mixup": 0.4}, {"cutmix": 1.0}, {"mixup": 0.4, "cutmix": 1.0}])
def test_rank_shards_concatenate_to_the_single_process_batch(mix):
    ds = toy_data()
    whole = list(DeviceBatches(ds, 16, "cpu", seed=5, **mix).epoch(1))
    ranks = [list(DeviceBatches(ds, 8, "cpu", seed=5, rank=r, world_size=2, **mix).epoch(1)) for r in (0, 1)]
    assert len(whole) == len(ranks[0]) == len(ranks[1]) == 4
    for step, (x, t, y) in enumerate(whole):
        assert torch.equal(torch.cat([ranks[0][step][0], ranks[1][step][0]]), x)
        assert torch.equal(torch.cat([ranks[0][step][1], ranks[1][step][1]]), t)
        assert torch.equal(torch.cat([ranks[0][step][2], ranks[1][step][2]]), y)


def test_mixup_is_a_convex_combination_with_matching_soft_targets():
    gen = torch.Generator().manual_seed(0)
    x, p = torch.randn(4, 3, 8, 8, generator=gen), torch.randn(4, 3, 8, 8, generator=gen)
    y, yp = torch.tensor([0, 1, 2, 3]), torch.tensor([1, 2, 3, 0])
    mixed, target = mix_batch(x, p, y, yp, 4, mixup=1.0, cutmix=0.0, rng=np.random.default_rng(0))
    lam = float(target[0, 0])
    assert 0 < lam < 1
    assert torch.allclose(mixed, lam * x + (1 - lam) * p, atol=1e-6)
    assert torch.allclose(target.sum(1), torch.ones(4))
    assert torch.allclose(target[0, 1], torch.tensor(1 - lam))


def test_cutmix_target_weight_is_the_pasted_area():
    x, p = torch.zeros(2, 1, 16, 16), torch.ones(2, 1, 16, 16)
    y, yp = torch.tensor([0, 0]), torch.tensor([1, 1])
    for seed in range(5):
        mixed, target = mix_batch(x, p, y, yp, 2, mixup=0.0, cutmix=1.0, rng=np.random.default_rng(seed))
        pasted = mixed[0].mean().item()  # fraction of pixels taken from the partner
        assert target[0, 1].item() == pytest.approx(pasted)
        assert target[0, 0].item() == pytest.approx(1 - pasted)


def test_too_large_batch_is_a_clear_error():
    with pytest.raises(ValueError, match="batch_size=64 x world_size=2"):
        DeviceBatches(toy_data(), 64, "cpu", world_size=2)
