"""Loading trained weights: the authors' Container-Light checkpoint, our own checkpoints, the release.

The authors' network is rebuilt here in their layout (the names of allenai/container's
``container_v1_light``), written independently of unifiedctx's code, filled with random float64
weights and saved as the DeiT engine saves checkpoints. Loading it through ``create_model`` must then
give the same function to 1e-12.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err
from torch import nn

import unifiedctx
from unifiedctx.data.base import DatasetUnavailable
from unifiedctx.models import pretrained
from unifiedctx.train.checkpoint import save_checkpoint

TOL = 1e-12


# ------------------------------------------------------------------ the authors' layout, written anew

class ChannelMlp(nn.Module):
    def __init__(self, dim, hidden):
        super().__init__()
        self.fc1, self.fc2 = nn.Conv2d(dim, hidden, 1), nn.Conv2d(hidden, dim, 1)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class ConvBlock(nn.Module):
    """Stages 1-3: x + pos(x); x + 1x1(dw5x5(1x1(BN(x)))); x + mlp(BN(x))."""

    def __init__(self, dim, ratio):
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1, self.norm2 = nn.BatchNorm2d(dim), nn.BatchNorm2d(dim)
        self.conv1, self.conv2 = nn.Conv2d(dim, dim, 1), nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.mlp = ChannelMlp(dim, dim * ratio)

    def forward(self, x):
        x = x + self.pos_embed(x)
        x = x + self.conv2(self.attn(self.conv1(self.norm1(x))))
        return x + self.mlp(self.norm2(x))


class MixedBlock(nn.Module):
    """Stage 4: one 1x1 conv to q, k, v; w = sigmoid(sa_weight) mixes attention with a dw5x5 of v."""

    def __init__(self, dim, ratio, heads):
        super().__init__()
        self.heads = heads
        self.pos_embed = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)
        self.norm1, self.norm2 = nn.BatchNorm2d(dim), nn.BatchNorm2d(dim)
        self.conv1 = nn.Conv2d(dim, 3 * dim, 1)
        self.conv = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.sa_weight = nn.Parameter(torch.zeros(1))
        self.mlp = ChannelMlp(dim, dim * ratio)

    def forward(self, x):
        x = x + self.pos_embed(x)
        b, c, h, w = x.shape
        q, k, v = self.conv1(self.norm1(x)).chunk(3, dim=1)  # each (B, C, H, W)
        per_head = lambda t: t.reshape(b, self.heads, c // self.heads, h * w).transpose(-1, -2)
        weights = torch.softmax(per_head(q) @ per_head(k).transpose(-1, -2) / math.sqrt(c // self.heads), -1)
        attended = (weights @ per_head(v)).transpose(-1, -2).reshape(b, c, h, w)
        alpha = torch.sigmoid(self.sa_weight)
        x = x + self.conv2(alpha * attended + (1 - alpha) * self.conv(v))
        return x + self.mlp(self.norm2(x))


class Embed(nn.Module):
    def __init__(self, cin, dim, patch):
        super().__init__()
        self.proj = nn.Conv2d(cin, dim, patch, stride=patch)
        self.norm = nn.LayerNorm(dim)

    def forward(self, x):
        return self.norm(self.proj(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class AuthorsContainerLight(nn.Module):
    """Container-Light with the authors' parameter names (patch_embed1..4, blocks1..4, norm, head)."""

    def __init__(self, dims=(64, 128, 320, 512), depths=(3, 4, 8, 3), ratios=(8, 8, 4, 4), heads=16,
                 classes=1000):
        super().__init__()
        cin = 3
        for s, (dim, depth, ratio) in enumerate(zip(dims, depths, ratios), start=1):
            setattr(self, f"patch_embed{s}", Embed(cin, dim, 4 if s == 1 else 2))
            blocks = [MixedBlock(dim, ratio, heads) if s == 4 else ConvBlock(dim, ratio)
                      for _ in range(depth)]
            setattr(self, f"blocks{s}", nn.ModuleList(blocks))
            cin = dim
        self.norm = nn.BatchNorm2d(dims[-1])
        self.head = nn.Linear(dims[-1], classes)

    def forward(self, x):
        for s in range(1, 5):
            x = getattr(self, f"patch_embed{s}")(x)
            for block in getattr(self, f"blocks{s}"):
                x = block(x)
        return self.head(self.norm(x).mean(dim=(2, 3)))


@torch.no_grad()
def randomise(module: nn.Module, seed: int) -> nn.Module:
    """Random float64 weights at scales that keep 18 residual blocks finite; BN statistics too."""
    gen = torch.Generator().manual_seed(seed)
    module.double()
    for name, t in module.state_dict().items():
        if name.endswith("num_batches_tracked"):
            t.fill_(int(torch.randint(1, 10_000, (), generator=gen)))
        elif name.endswith("running_var") or (name.endswith("weight") and t.dim() == 1):
            t.copy_(0.5 + torch.rand(t.shape, generator=gen, dtype=torch.float64))
        elif t.dim() >= 2:
            fan_in = t[0].numel()
            t.copy_(torch.randn(t.shape, generator=gen, dtype=torch.float64) / math.sqrt(fan_in))
        else:  # biases, running means, sa_weight
            t.copy_(0.3 * torch.randn(t.shape, generator=gen, dtype=torch.float64))
    return module.eval()


@pytest.fixture(scope="module")
def authors():
    """Two random weight sets in the authors' layout: (model, model_ema)."""
    return randomise(AuthorsContainerLight(), 0), randomise(AuthorsContainerLight(), 1)


def deit_checkpoint(path: Path, model_state: dict, ema_state: dict | None = None, args=None) -> Path:
    """A checkpoint as the DeiT engine writes it."""
    state = {"model": model_state, "optimizer": {"state": {}, "param_groups": [{"lr": 5e-4, "params": [0]}]},
             "lr_scheduler": {"last_epoch": 299}, "epoch": 299, "scaler": {"scale": 65536.0},
             "args": args if args is not None else argparse.Namespace(model="container_v1_light", lr=5e-4,
                                                                      epochs=300, model_ema=True)}
    if ema_state is not None:
        state["model_ema"] = ema_state
    torch.save(state, path)
    return path


@pytest.fixture(scope="module")
def authors_file(authors, tmp_path_factory):
    model, ema = authors
    folder = tmp_path_factory.mktemp("ckpt")
    return deit_checkpoint(folder / "checkpoint.pth", model.state_dict(), ema.state_dict())


def probe(size: int) -> torch.Tensor:
    return torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(size), dtype=torch.float64)


@pytest.fixture(scope="module")
def reference(authors):
    """``reference(which, size)``: the authors' output (0: model, 1: model_ema) on ``probe(size)``, cached
    (a float64 forward at 224 takes seconds on this CPU)."""
    cache = {}

    def get(which: int, size: int) -> torch.Tensor:
        if (which, size) not in cache:
            with torch.no_grad():
                cache[which, size] = authors[which](probe(size))
        return cache[which, size]
    return get


def error(ours: nn.Module, expected: torch.Tensor, size: int) -> float:
    with torch.no_grad():
        return rel_err(ours.eval()(probe(size)), expected)


# ------------------------------------------------------------------ the authors' checkpoint

def test_key_map_covers_every_tensor_once():
    ours = unifiedctx.create_model("container_light").state_dict()
    theirs = AuthorsContainerLight().state_dict()
    mapping = pretrained.authors_key_map(ours)
    assert set(mapping) == set(ours)
    sources = [src for src, _ in mapping.values()]
    assert len(sources) == len(set(sources)) and set(sources) == set(theirs)
    assert mapping["stages.3.blocks.2.mixer.mix_logit"][0] == "blocks4.2.sa_weight"
    assert mapping["stages.0.blocks.0.mixer.conv.weight"][0] == "blocks1.0.attn.weight"
    assert mapping["stages.3.norm.running_var"][0] == "norm.running_var"


def test_authors_checkpoint_gives_their_function(authors, authors_file, reference):
    model = unifiedctx.create_model("container_light", checkpoint_path=authors_file)
    assert next(model.parameters()).dtype == torch.float64  # the file's dtype, not rounded to float32
    for size in (224, 96):  # the release's size, and another one the strides divide
        assert error(model, reference(0, size), size) < TOL
    alpha = torch.sigmoid(authors[0].blocks4[1].sa_weight).item()
    mixing = unifiedctx.mixing_weights(model)["stages.3.blocks.1.mixer"]
    assert mixing["alpha"] == pytest.approx(alpha, abs=1e-15)


def test_authors_checkpoint_ema_weights(authors_file, reference):
    model = unifiedctx.create_model("container_light", checkpoint_path=authors_file, ema=True)
    assert error(model, reference(1, 96), 96) < TOL
    assert error(model, reference(0, 96), 96) > 1e-3  # really the other set


def test_ema_asked_of_a_file_without_it(authors, tmp_path):
    path = deit_checkpoint(tmp_path / "no_ema.pth", authors[0].state_dict())
    with pytest.raises(ValueError, match="model_ema"):
        unifiedctx.create_model("container_light", checkpoint_path=path, ema=True)


def test_missing_key_is_named(authors, tmp_path):
    state = dict(authors[0].state_dict())
    del state["blocks3.5.conv2.bias"]
    path = deit_checkpoint(tmp_path / "missing.pth", state)
    with pytest.raises(ValueError, match=r"lacks 1 keys.*blocks3\.5\.conv2\.bias.*stages\.2\.blocks\.5"):
        unifiedctx.create_model("container_light", checkpoint_path=path)


def test_extra_key_is_named(authors, tmp_path):
    state = dict(authors[0].state_dict())
    state["blocks4.0.extra_gate"] = torch.zeros(3, dtype=torch.float64)
    path = deit_checkpoint(tmp_path / "extra.pth", state)
    with pytest.raises(ValueError, match=r"1 keys this model does not use: blocks4\.0\.extra_gate"):
        unifiedctx.create_model("container_light", checkpoint_path=path)


def test_wrong_shape_names_the_key_and_both_shapes(authors, tmp_path):
    state = dict(authors[0].state_dict())
    state["head.weight"] = torch.zeros(10, 512, dtype=torch.float64)
    path = deit_checkpoint(tmp_path / "shape.pth", state)
    with pytest.raises(ValueError, match=r"head\.weight has shape \(10, 512\).*\(1000, 512\)"):
        unifiedctx.create_model("container_light", checkpoint_path=path)


class Recipe:  # a class the unpickler must not be allowed to build
    def __init__(self):
        self.lr = 5e-4


def test_a_file_that_needs_another_class_is_refused(authors, tmp_path):
    path = deit_checkpoint(tmp_path / "recipe.pth", authors[0].state_dict(), args=Recipe())
    with pytest.raises(ValueError, match="weights-only"):
        unifiedctx.create_model("container_light", checkpoint_path=path)


def test_not_a_checkpoint_and_no_file(tmp_path):
    (tmp_path / "junk.pth").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="cannot be read"):
        unifiedctx.create_model("container_light", checkpoint_path=tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError):
        unifiedctx.create_model("container_light", checkpoint_path=tmp_path / "absent.pth")
    with pytest.raises(TypeError, match="checkpoint_path"):
        unifiedctx.create_model("container_light", checkpoint_path=3)
    with pytest.raises(ValueError, match="ema=True needs"):
        unifiedctx.create_model("container_light", ema=True)
    with pytest.raises(TypeError, match="pretrained"):
        unifiedctx.create_model("container_light", pretrained="yes")


# ------------------------------------------------------------------ unifiedctx's own checkpoints

def test_own_checkpoint_round_trip_and_ema(tmp_path):
    torch.manual_seed(0)
    model = unifiedctx.create_model("container_light_nano").double()
    ema = unifiedctx.create_model("container_light_nano").double()
    path = save_checkpoint(tmp_path / "ours.pt", model, ema=ema.state_dict(), epoch=1)
    with torch.no_grad():
        expected, expected_ema = model.eval()(probe(32)), ema.eval()(probe(32))
    loaded = unifiedctx.create_model("container_light_nano", checkpoint_path=path)
    assert error(loaded, expected, 32) == 0.0
    loaded_ema = unifiedctx.create_model("container_light_nano", checkpoint_path=path, ema=True)
    assert error(loaded_ema, expected_ema, 32) == 0.0
    with pytest.raises(ValueError, match="num_classes"):  # another architecture: both are named
        unifiedctx.create_model("container_light_nano", num_classes=3, checkpoint_path=path)
    bare = save_checkpoint(tmp_path / "bare.pt", model)
    with pytest.raises(ValueError, match="no EMA"):
        unifiedctx.create_model("container_light_nano", checkpoint_path=bare, ema=True)


# ------------------------------------------------------------------ the release: cache and download

def test_pretrained_downloads_into_the_cache_once(authors_file, reference, tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFIEDCTX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "RELEASE_URL", authors_file.resolve().as_uri())
    monkeypatch.setattr(pretrained, "RELEASE_MIN_BYTES", 1000)
    model = unifiedctx.create_model("container_light", pretrained=True)
    cached = tmp_path / "cache" / "weights" / pretrained.RELEASE_FILE
    assert cached.is_file() and cached.stat().st_size == authors_file.stat().st_size
    assert error(model, reference(0, 96), 96) < TOL
    assert not [p for p in cached.parent.iterdir() if p.name.endswith(".part")]  # atomic: no leftovers
    monkeypatch.setattr(pretrained, "RELEASE_URL", "file:///nonexistent/never.pth")  # the cache is used
    unifiedctx.create_model("container_light", pretrained=True)


def test_pretrained_offline_says_what_to_fetch_and_where(tmp_path, monkeypatch):
    monkeypatch.setenv("UNIFIEDCTX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "RELEASE_URL", "file:///nonexistent/never.pth")
    with pytest.raises(DatasetUnavailable) as info:
        unifiedctx.create_model("container_light", pretrained=True)
    message = str(info.value)
    assert pretrained.RELEASE_DRIVE_ID in message and "drive.google.com" in message
    assert str(tmp_path / "cache" / "weights" / pretrained.RELEASE_FILE) in message
    assert not (tmp_path / "cache" / "weights" / pretrained.RELEASE_FILE).exists()


def test_pretrained_refuses_an_error_page(tmp_path, monkeypatch):
    page = tmp_path / "page.html"
    page.write_text("<html>Google Drive can't scan this file for viruses</html>")
    monkeypatch.setenv("UNIFIEDCTX_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(pretrained, "RELEASE_URL", page.as_uri())
    with pytest.raises(DatasetUnavailable, match="error page"):
        unifiedctx.create_model("container_light", pretrained=True)
    assert not list((tmp_path / "cache" / "weights").iterdir())


def test_pretrained_only_for_the_released_model(tmp_path):
    with pytest.raises(ValueError, match="container_light"):
        unifiedctx.create_model("container", pretrained=True)
    with pytest.raises(ValueError, match="not both"):
        unifiedctx.create_model("container_light", pretrained=True, checkpoint_path=tmp_path / "x.pth")


def test_cache_folder_default(monkeypatch):
    monkeypatch.delenv("UNIFIEDCTX_CACHE", raising=False)
    assert pretrained.cache_dir() == Path.home() / ".cache" / "unifiedctx" / "weights"
