"""segfolder: a tiny folder written with PIL loads exactly; every broken file is named."""

import numpy as np
import pytest
import torch
from PIL import Image

from unifiedctx import data


def write_folder(root, n=5, size=(12, 10), num_classes=4, seed=0, palette=False):
    """``root/images/i.png`` (RGB) and ``root/masks/i.png`` (L or P), random classes; returns the arrays."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    arrays = {}
    for i in range(n):
        rgb = rng.integers(0, 256, (size[0], size[1], 3), dtype=np.uint8)
        mask = rng.integers(0, num_classes, size, dtype=np.uint8)
        Image.fromarray(rgb).save(root / "images" / f"img{i}.png")
        m = Image.fromarray(mask, mode="L")
        if palette:
            m = m.convert("P")
        m.save(root / "masks" / f"img{i}.png")
        arrays[f"img{i}"] = (rgb, mask)
    return arrays


def find(ds, split, rgb):
    x = getattr(ds, f"{split}_x")
    hits = [k for k in range(x.shape[0]) if torch.equal(x[k], torch.from_numpy(rgb).permute(2, 0, 1))]
    return hits[0] if hits else None


@pytest.mark.parametrize("palette", [False, True])
def test_folder_loads_images_and_masks_exactly(tmp_path, palette):
    arrays = write_folder(tmp_path, palette=palette)
    ds = data.load("segfolder", path=tmp_path, val_fraction=0.4)
    assert ds.train_x.shape == (3, 3, 12, 10) and ds.test_x.shape == (2, 3, 12, 10)
    assert ds.num_classes == 4 and ds.classes == ["0", "1", "2", "3"] and ds.train_boxes is None
    for rgb, mask in arrays.values():
        split = "train" if find(ds, "train", rgb) is not None else "test"
        k = find(ds, split, rgb)
        assert k is not None
        assert torch.equal(getattr(ds, f"{split}_masks")[k], torch.from_numpy(mask))
    again = data.load("segfolder", path=tmp_path, val_fraction=0.4)
    assert torch.equal(again.train_x, ds.train_x)


def test_train_val_layout_and_resize_keeps_classes_unblended(tmp_path):
    write_folder(tmp_path / "train", n=3, size=(9, 9), seed=1)
    write_folder(tmp_path / "val", n=2, size=(9, 9), seed=2)
    ds = data.load("segfolder", path=tmp_path, image_size=16, channels=1, classes=["a", "b", "c", "d", "e"])
    assert ds.train_x.shape == (3, 1, 16, 16) and ds.test_x.shape == (2, 1, 16, 16)
    assert ds.classes == ["a", "b", "c", "d", "e"]
    original = np.asarray(Image.open(tmp_path / "train" / "masks" / "img0.png"))
    expected = np.asarray(Image.fromarray(original).resize((16, 16), Image.NEAREST))
    assert torch.equal(ds.train_masks[0], torch.from_numpy(expected.copy()))  # sorted: img0 first


def test_missing_mask_is_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "masks" / "img2.png").unlink()
    with pytest.raises(ValueError, match=r"img2\.png has no mask"):
        data.load("segfolder", path=tmp_path)


def test_mask_without_image_is_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "images" / "img3.png").unlink()
    with pytest.raises(ValueError, match=r"masks/img3\.png has no image"):
        data.load("segfolder", path=tmp_path)


def test_undecodable_image_is_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "images" / "img1.png").write_bytes(b"not a png at all")
    with pytest.raises(ValueError, match=r"cannot decode .*images/img1\.png"):
        data.load("segfolder", path=tmp_path)


def test_class_index_out_of_range_is_named(tmp_path):
    write_folder(tmp_path, num_classes=4)
    bad = np.zeros((12, 10), dtype=np.uint8)
    bad[3, 3] = 7
    Image.fromarray(bad, mode="L").save(tmp_path / "masks" / "img4.png")
    with pytest.raises(ValueError, match=r"masks/img4\.png holds class index 7, outside \[0, 4\)"):
        data.load("segfolder", path=tmp_path, num_classes=4)


def test_size_mismatch_is_named(tmp_path):
    write_folder(tmp_path)
    Image.fromarray(np.zeros((5, 5), dtype=np.uint8), mode="L").save(tmp_path / "masks" / "img0.png")
    expected = r"masks/img0\.png is 5x5 \(WxH\) but its image .*images/img0\.png is 10x12"
    with pytest.raises(ValueError, match=expected):
        data.load("segfolder", path=tmp_path)


def test_images_of_different_sizes_need_image_size(tmp_path):
    write_folder(tmp_path)
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "images" / "img4.png")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8), mode="L").save(tmp_path / "masks" / "img4.png")
    with pytest.raises(ValueError, match="image_size="):
        data.load("segfolder", path=tmp_path, val_fraction=0.2)
    assert data.load("segfolder", path=tmp_path, image_size=(12, 10)).train_x.shape[2:] == (12, 10)


def test_rgb_mask_and_bad_arguments_are_refused(tmp_path):
    write_folder(tmp_path)
    Image.fromarray(np.zeros((12, 10, 3), dtype=np.uint8)).save(tmp_path / "masks" / "img0.png")
    with pytest.raises(ValueError, match=r"masks/img0\.png has mode 'RGB'"):
        data.load("segfolder", path=tmp_path)
    with pytest.raises(ValueError, match="is not a folder"):
        data.load("segfolder", path=tmp_path / "nowhere")
    with pytest.raises(ValueError, match="channels"):
        data.load("segfolder", path=tmp_path, channels=2)
    with pytest.raises(ValueError, match="has no images/ folder"):
        data.load("segfolder", path=tmp_path / "masks")


# ------------------------------------------------------------------ the ignore label 255
COLOURS = (40, 120, 200)  # the grey level of a pixel of class 0, 1, 2; an ignored pixel is drawn as class 1


def write_ignore_folder(root, n=6, size=(8, 8), seed=0):
    """Masks of classes {0, 1, 2} with about a fifth of the pixels 255 ("no class"); the image's grey
    level says the class (COLOURS), so a model can read the right answer off every pixel."""
    rng = np.random.default_rng(seed)
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in range(n):
        mask = rng.integers(0, 3, size).astype(np.uint8)
        mask[rng.random(size) < 0.2] = 255
        grey = np.where(mask == 255, COLOURS[1], np.take(COLOURS, np.minimum(mask, 2))).astype(np.uint8)
        Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(root / "images" / f"img{i}.png")
        Image.fromarray(mask, mode="L").save(root / "masks" / f"img{i}.png")


class ReadsTheColour(torch.nn.Module):
    """Per-pixel logits ``-(g - COLOURS[k])**2 / 100`` from the grey level ``g`` (un-normalised with
    the data's mean/std): right on every labelled pixel, and on an ignored one it says class 1.
    ``spoil`` makes pixel (0, 0) of every image wrong (class (true + 1) mod 3)."""

    def __init__(self, data, spoil=False):
        super().__init__()
        self.num_classes = 3
        self.register_buffer("mean", torch.tensor(data.mean[0]))
        self.register_buffer("std", torch.tensor(data.std[0]))
        self.register_buffer("colours", torch.tensor(COLOURS, dtype=torch.float32).view(1, 3, 1, 1))
        self.scale = torch.nn.Parameter(torch.ones(()))  # a parameter, so fit/evaluate see a float model
        self.spoil = spoil

    def forward(self, x):
        grey = (x[:, :1] * self.std + self.mean) * 255
        logits = -((grey - self.colours) ** 2) / 100 * self.scale
        if self.spoil:
            logits = logits.clone()
            logits[:, :, 0, 0] = logits[:, :, 0, 0].roll(1, dims=1)
        return logits


def test_masks_with_255_load_with_the_real_class_count_and_255_kept_as_ignore(tmp_path):
    write_ignore_folder(tmp_path)
    ds = data.load("segfolder", path=tmp_path, val_fraction=0.5)
    assert ds.num_classes == 3 and ds.classes == ["0", "1", "2"] and ds.ignore_index == 255
    masks = torch.cat([ds.train_masks, ds.test_masks])
    assert set(torch.unique(masks).tolist()) == {0, 1, 2, 255}
    assert (masks == 255).float().mean() > 0.1  # the ignored pixels are still there, marked


def test_255_pixels_count_neither_in_the_loss_nor_in_the_miou(tmp_path):
    from unifiedctx.train import evaluate, tasks

    write_ignore_folder(tmp_path)
    ds = data.load("segfolder", path=tmp_path, val_fraction=0.5)
    right = evaluate(ReadsTheColour(ds), ds, task="segment", device="cpu")
    assert right["test_miou"] == 1.0 and right["test_pixel_acc"] == 1.0  # wrong only where the label is 255
    spoiled = evaluate(ReadsTheColour(ds, spoil=True), ds, task="segment", device="cpu")
    assert spoiled["test_miou"] < 1.0 and spoiled["test_pixel_acc"] < 1.0  # a wrong labelled pixel counts

    task = tasks.create("segment")
    model = ReadsTheColour(ds).double()
    task.setup(model, ds, torch.device("cpu"))
    assert task.ignore_index == 255
    x = ((ds.train_x.double() / 255 - ds.mean[0]) / ds.std[0])
    mask = ds.train_masks.long()
    loss, sums = task.loss(model, (x, mask))
    logits, valid = model(x), mask != 255
    expected = torch.nn.functional.cross_entropy(logits.permute(0, 2, 3, 1)[valid], mask[valid])
    torch.testing.assert_close(loss.double(), expected, rtol=1e-12, atol=1e-12)
    assert int(sums["pixels"]) == int(valid.sum()) and int(sums["correct"]) == int(valid.sum())


@pytest.mark.parametrize("options, words", [
    ({"num_classes": 3}, r"img2.png holds class index 7, outside \[0, 3\) or the ignore label 255"),
    ({"classes": ["a", "b", "c"]}, r"img2.png holds class index 7, outside \[0, 3\) or the ignore label 255"),
    ({"num_classes": 3, "ignore_index": None}, r"img\d.png holds class index (7|255), outside \[0, 3\)"),
])
def test_a_mask_value_that_is_neither_a_class_nor_the_ignore_label_is_refused(tmp_path, options, words):
    write_ignore_folder(tmp_path)
    mask = np.array(Image.open(tmp_path / "masks" / "img2.png"))
    mask[3, 4] = 7
    Image.fromarray(mask, mode="L").save(tmp_path / "masks" / "img2.png")
    with pytest.raises(ValueError, match=words):
        data.load("segfolder", path=tmp_path, val_fraction=0.5, **options)


@pytest.mark.parametrize("split", ["test", "train"])
def test_a_split_whose_every_pixel_is_ignored_is_refused_before_a_run_folder_is_made(tmp_path, split):
    """It has images but no labelled pixel: nothing to measure (test) or to learn from (train)."""
    import dataclasses

    from misuse_helpers import raises_at_door

    from unifiedctx.train import evaluate, fit

    write_ignore_folder(tmp_path / "data")
    ds = data.load("segfolder", path=tmp_path / "data", val_fraction=0.5)
    masks = getattr(ds, f"{split}_masks")
    blank = dataclasses.replace(ds, **{f"{split}_masks": torch.full_like(masks, 255)})
    out = tmp_path / "run"
    for call in (lambda: fit(ReadsTheColour(blank), blank, task="segment", epochs=1, batch_size=1,
                             device="cpu", progress=False, out=out),
                 lambda: evaluate(ReadsTheColour(blank), blank, task="segment", device="cpu")):
        err = raises_at_door(f"{split}_masks", call)
        words = ("labels no pixel", "ignore label 255", f"{len(masks)} images")
        assert all(w in str(err) for w in words), str(err)
    assert not out.exists()
    few = masks.clone().fill_(255)
    few[0, 0, 0] = 1  # one labelled pixel is enough to measure (or learn) something
    some = dataclasses.replace(ds, **{f"{split}_masks": few})
    assert evaluate(ReadsTheColour(some), some, task="segment", device="cpu")["test_pixel_acc"] == 1.0


def test_the_command_line_refuses_a_split_without_labelled_pixels_in_one_line(tmp_path, capsys):
    from unifiedctx.cli import main

    write_ignore_folder(tmp_path / "data", n=2)
    Image.fromarray(np.full((8, 8), 255, np.uint8), mode="L").save(tmp_path / "data" / "masks" / "img0.png")
    with pytest.raises(SystemExit) as exc:
        main(["train", "--model", "convnet_nano", "--task", "segment", "--data", "segfolder", "--data-option",
              f"path={tmp_path / 'data'}", "--data-option", "val_fraction=0.5", "--img-size", "8",
              "--epochs", "1", "--batch-size", "1", "--device", "cpu", "--no-progress",
              "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1 and "labels no pixel" in err, err
    assert not (tmp_path / "run").exists()
