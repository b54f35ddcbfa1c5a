"""ImageData (the container), load()/available() (the registry) and the cache folder default."""

from __future__ import annotations

import pytest
import torch

from unifiedctx import data
from unifiedctx.data import ImageData, base


def tiny(n: int = 6, m: int = 4, channels: int = 3) -> ImageData:
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n + m, channels, 4, 5), generator=gen, dtype=torch.uint8)
    y = torch.arange(n + m) % 3
    mean, std = data.channel_stats(x[:n])
    return ImageData("tiny", x[:n], y[:n], x[n:], y[n:], ["a", "b", "c"], mean, std)


def test_available_lists_the_datasets():
    assert data.available() == ["cifar10", "cifar100", "mnist5k", "texture", "longrange", "imagefolder",
                                "mnist_canvas", "segfolder"]


def test_properties_and_channel_stats():
    ds = tiny()
    assert (ds.num_classes, ds.channels, ds.image_size) == (3, 3, (4, 5))
    as_float = ds.train_x.double() / 255
    assert torch.allclose(torch.tensor(ds.mean, dtype=torch.float64), as_float.mean(dim=(0, 2, 3)))
    population_std = as_float.std(dim=(0, 2, 3), unbiased=False)
    assert torch.allclose(torch.tensor(ds.std, dtype=torch.float64), population_std)
    chunked = data.channel_stats(ds.train_x, chunk=4)
    assert torch.allclose(torch.tensor(chunked), torch.tensor((ds.mean, ds.std)))
    assert "tiny" in repr(ds) and "(6, 3, 4, 5)" in repr(ds)


def test_normalize_is_per_channel_float32():
    ds = tiny()
    ds.mean, ds.std = (0.5, 0.25, 0.0), (0.5, 0.25, 2.0)
    x = ds.train_x[:2]
    out = ds.normalize(x)
    assert out.dtype == torch.float32 and out.shape == x.shape
    for c in range(3):
        expected = (x[:, c].float() / 255 - ds.mean[c]) / ds.std[c]
        assert torch.allclose(out[:, c], expected)
    assert torch.allclose(ds.normalize(x[0]), out[0])  # a single (C, H, W) image too
    with pytest.raises(TypeError, match="uint8"):
        ds.normalize(x.float())
    with pytest.raises(ValueError, match="3"):
        ds.normalize(x[:, :2])


def test_to_returns_a_new_object():
    ds = tiny()
    moved = ds.to("cpu")
    assert moved is not ds and moved.classes == ds.classes and torch.equal(moved.test_x, ds.test_x)
    assert moved.train_x.device.type == "cpu"


def test_subset_is_seeded_and_consistent():
    ds = tiny()
    a, b, c = ds.subset(3, 2, seed=1), ds.subset(3, 2, seed=1), ds.subset(3, 2, seed=2)
    assert a.train_x.shape == (3, 3, 4, 5) and a.test_x.shape == (2, 3, 4, 5)
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not (torch.equal(a.train_x, c.train_x) and torch.equal(a.test_x, c.test_x))
    assert a.mean == ds.mean
    # each picked image keeps its own label, and no image is picked twice
    rows = {tuple(img.flatten().tolist()): int(label) for img, label in zip(ds.train_x, ds.train_y)}
    picked = [tuple(img.flatten().tolist()) for img in a.train_x]
    assert len(set(picked)) == 3 and [rows[p] for p in picked] == a.train_y.tolist()
    assert ds.subset(None, 1).train_x.shape[0] == 6
    with pytest.raises(ValueError, match="n_train"):
        ds.subset(7, 1)


def test_bad_tensors_are_refused():
    ds = tiny()
    with pytest.raises(TypeError, match="train_x"):
        ImageData("x", ds.train_x.float(), ds.train_y, ds.test_x, ds.test_y, ds.classes, ds.mean, ds.std)
    with pytest.raises(TypeError, match="test_y"):
        ImageData("x", ds.train_x, ds.train_y, ds.test_x, ds.test_y[:1], ds.classes, ds.mean, ds.std)
    with pytest.raises(ValueError, match="mean"):
        ImageData("x", ds.train_x, ds.train_y, ds.test_x, ds.test_y, ds.classes, (0.5,), (0.5,))


def test_load_rejects_unknown_names_and_options():
    with pytest.raises(ValueError, match="Available: cifar10"):
        data.load("imagenet22k")
    with pytest.raises(TypeError, match="name"):
        data.load(3)
    with pytest.raises(TypeError, match="'colour'.*n_train"):
        data.load("texture", colour=True)


def test_data_root_default_and_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv(base.ENV_VAR, str(tmp_path))
    assert base.default_data_root() == tmp_path
    monkeypatch.delenv(base.ENV_VAR)
    repo = base.Path(base.__file__).resolve().parents[2]
    expected = repo / "data" if (repo / "pyproject.toml").is_file() and (repo / "data").is_dir() \
        else base.Path.home() / ".cache" / "unifiedctx"
    assert base.default_data_root() == expected


def test_load_reads_data_root_at_call_time(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "DATA_ROOT", tmp_path)
    with pytest.raises(data.DatasetUnavailable) as err:
        data.load("cifar10", download=False)
    assert str(tmp_path / "cifar-10-binary.tar.gz") in str(err.value)

