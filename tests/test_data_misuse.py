"""Data is checked when loaded: CIFAR files cut short name themselves and the record count they
should hold; 16-bit PNGs keep their bit depth; an undecodable image names its file; what a killed
download left behind is removed by the next one."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image
from test_data_cifar import CIFAR10_NAMES, make_archive, md5_of, patch_md5, records

from unifiedctx import data
from unifiedctx.data import DatasetUnavailable, cifar
from unifiedctx.data import folder as image_folder


def decode_rgb(path):
    return image_folder.decode_rgb(path)


def cifar10_cache(root, per_file=2, test=10000):
    """A cached ``cifar-10-batches-bin`` whose batches hold ``per_file`` records each."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    spec = cifar.ARCHIVES["cifar10"]
    for name in spec.train_files:
        (folder / name).write_bytes(records(per_file, 1, rng).tobytes())
    (folder / spec.test_file).write_bytes(records(test, 1, rng).tobytes())
    (folder / "batches.meta.txt").write_text("\n".join(CIFAR10_NAMES))
    return folder


def test_a_cached_cifar_batch_cut_short_is_an_error_naming_the_file_and_the_count(tmp_path):
    cifar10_cache(tmp_path, per_file=2)
    with pytest.raises(DatasetUnavailable, match=r"data_batch_1\.bin holds 2 records, expected 10000"):
        data.load("cifar10", root=tmp_path, download=False)


def test_a_cifar_test_file_cut_short_is_named_too(tmp_path):
    cifar10_cache(tmp_path, per_file=10000, test=9999)
    with pytest.raises(DatasetUnavailable, match=r"test_batch\.bin holds 9999 records, expected 10000"):
        data.load("cifar10", root=tmp_path, download=False)


def test_a_killed_download_leaves_nothing_behind_after_the_next_load(tmp_path, monkeypatch):
    path, _ = make_archive(tmp_path, "cifar10")
    patch_md5(monkeypatch, "cifar10", md5_of(path))
    (tmp_path / ".cifar-10-binary.tar.gz.k1ll3d_x.part").write_bytes(b"half a download")
    staging = tmp_path / ".cifar-10-batches-bin.k1ll3d_x.tmp"
    (staging / "cifar-10-batches-bin").mkdir(parents=True)
    ds = data.load("cifar10", root=tmp_path, download=False)
    assert ds.train_x.shape == (10, 3, 32, 32)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]


def save_png16(path, values: np.ndarray) -> None:
    Image.fromarray(values.astype(np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # really a 16-bit image


def test_a_16_bit_png_is_read_with_its_real_bit_depth(tmp_path):
    values = (np.arange(16 * 16).reshape(16, 16) * 257).astype(np.uint16)  # 0 .. 65535 in steps of 257
    save_png16(tmp_path / "g.png", values)
    rgb = np.asarray(decode_rgb(tmp_path / "g.png"))
    assert rgb.shape == (16, 16, 3)
    expected = np.round(values / 65535 * 255).astype(np.uint8)
    assert all(np.array_equal(rgb[..., c], expected) for c in range(3))  # not white everywhere


def test_an_image_folder_of_16_bit_pngs_loads_their_values(tmp_path):
    for label, level in (("dark", 1000), ("light", 60000)):
        (tmp_path / label).mkdir()
        for i in range(3):
            save_png16(tmp_path / label / f"{i}.png", np.full((8, 8), level))
    ds = data.load("imagefolder", path=tmp_path, image_size=8, val_fraction=0.4, num_workers=0)
    x, y = next(iter(ds.test_loader(4)))
    pixel = (x[:, 0] * ds.std[0] + ds.mean[0]).mean((1, 2))  # back to [0, 1]
    want = torch.tensor([round(v / 65535 * 255) / 255 for v in (1000, 60000)])[y]
    assert torch.allclose(pixel, want, atol=1e-5)


@pytest.mark.parametrize("payload", ["truncated", "not an image"])
def test_an_undecodable_image_is_an_error_naming_the_file(tmp_path, payload):
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    raw = buf.getvalue()
    for label in ("a", "b"):
        (tmp_path / label).mkdir()
        for i in range(2):
            (tmp_path / label / f"{i}.jpg").write_bytes(raw)
    bad = tmp_path / "b" / "1.jpg"
    bad.write_bytes(raw[: len(raw) // 3] if payload == "truncated" else b"hello, not a JPEG")
    with pytest.raises(ValueError, match=rf"cannot decode image {bad}"):
        decode_rgb(bad)
    ds = data.load("imagefolder", path=tmp_path, image_size=8, val_fraction=0.5, num_workers=0)
    loader = ds.train_loader(2, shuffle=False) if str(bad) in dict(ds.train_samples) else ds.test_loader(2)
    with pytest.raises(image_folder.UnreadableImage, match=str(bad)):
        for _ in loader:
            pass


def test_an_8_bit_png_reads_as_before(tmp_path):
    values = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(values).save(tmp_path / "c.png")
    assert np.array_equal(np.asarray(decode_rgb(tmp_path / "c.png")), values)
