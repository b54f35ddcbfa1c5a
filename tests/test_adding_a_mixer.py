"""Adding a mixer is one class and one registry line (``docs/adding_a_mixer.md``, proven here).

``LinearAttention`` below is the class the doc walks through (the doc's code block is checked to
be this very source). Registered for the length of a test, nothing else changed, it is picked up
by the contract test (``test_mixers_registered.check_contract``), by ``create_model`` and the
network's generic layers, by the initialisation (``reset_parameters``) and by recording.
``MixedLinearAttention`` does the same for a mixer with a learned static kernel and a mixing knob.
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import perturb, rand_x, rel_err
from einops import rearrange, repeat
from test_mixers_registered import check_contract, examples
from torch import nn

from unifiedctx.inspection.layers import mixer_inputs
from unifiedctx.mixers import REGISTRY, available, create
from unifiedctx.mixers.attention import qkv_heads
from unifiedctx.mixers.base import AffinityMixer, check_heads, image, merge_heads
from unifiedctx.mixers.local import local_affinity
from unifiedctx.models import create_model, record_affinities, record_components

DOC = Path(__file__).resolve().parents[1] / "docs" / "adding_a_mixer.md"


class LinearAttention(AffinityMixer):
    """Linear attention (Katharopoulos et al., 2020): softmax replaced by a kernel feature map.

    Math, per head m (``phi(u) = elu(u) + 1 > 0``, so every entry of A is positive)::

        q, k, v  = split(x W_qkv)                          each (B, M, N, d)
        A[i, j]  = phi(q_i) . phi(k_j) / sum_j' phi(q_i) . phi(k_j')      rows sum to 1
        y        = W_proj concat_m(A_m v_m)

    Fast path: ``phi(Q) (phi(K)^T V) / (phi(Q) phi(K)^T 1)``: O(N d^2), no N x N matrix.
    """

    kind = "dynamic"

    def __init__(self, dim: int, heads: int = 8, qkv_bias: bool = True):
        super().__init__(dim)
        self.heads = check_heads(dim, heads)
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    @classmethod
    def example_options(cls, grid):
        return [{"dim": 6, "heads": 2}, {"dim": 6, "heads": 3, "qkv_bias": False}]

    def features(self, x):
        """``phi(q), phi(k), v``, each ``(B, M, N, d)``."""
        q, k, v = qkv_heads(self.qkv, x, self.heads)
        return F.elu(q) + 1, F.elu(k) + 1, v

    def forward(self, x):
        grid = self.check_input(x)
        q, k, v = self.features(x)
        kv = torch.einsum("bmnd,bmne->bmde", k, v)           # phi(K)^T V: (B, M, d, d)
        norm = torch.einsum("bmnd,bmd->bmn", q, k.sum(2))    # phi(Q) phi(K)^T 1: (B, M, N)
        z = torch.einsum("bmnd,bmde->bmne", q, kv) / norm.unsqueeze(-1)
        return self._project(z, grid)

    def values(self, x):
        self.check_input(x)
        return self.features(x)[2]

    def affinity(self, x):
        self.check_input(x)
        q, k, _ = self.features(x)
        scores = q @ k.transpose(-2, -1)                     # (B, M, N, N), all positive
        return scores / scores.sum(-1, keepdim=True)

    def _project(self, z, grid):
        return image(self.proj(merge_heads(z)), grid)


class MixedLinearAttention(LinearAttention):
    """``A_m = alpha * A_linear,m + beta * A_static,m`` with a learned k x k kernel per head.

    The static kernel ``w`` ``(M, k, k)`` is shared by the d channels of its head; the knob is
    ``alpha = sigmoid(t)``, ``beta = 1 - alpha`` (t = 0 at init). Fast path:
    ``alpha * linear(V) + beta * conv2d(V, w repeated over each head's channels, groups=C)``.
    """

    kind = "mixed"

    def __init__(self, dim: int, heads: int = 8, kernel_size: int = 3, qkv_bias: bool = True):
        super().__init__(dim, heads, qkv_bias)
        self.kernel_size = kernel_size
        self.kernel = nn.Parameter(torch.zeros(self.heads, kernel_size, kernel_size))
        self.mix_logit = nn.Parameter(torch.zeros(()))
        self.reset_parameters()

    @classmethod
    def example_options(cls, grid):
        return [{"dim": 6, "heads": 2, "kernel_size": 3}]

    @torch.no_grad()
    def reset_parameters(self):
        self.kernel.normal_(0, 0.1)
        self.mix_logit.zero_()

    def mixing_weights(self):
        alpha = torch.sigmoid(self.mix_logit)
        return {"alpha": alpha, "beta": 1 - alpha}

    def static_kernels(self):
        return self.kernel

    def forward(self, x):
        grid = self.check_input(x)
        q, k, v = self.features(x)
        w = self.mixing_weights()
        dynamic = torch.einsum("bmnd,bmde->bmne", q, torch.einsum("bmnd,bmne->bmde", k, v))
        dynamic = dynamic / torch.einsum("bmnd,bmd->bmn", q, k.sum(2)).unsqueeze(-1)
        per_channel = repeat(self.kernel, "m kh kw -> (m d) 1 kh kw", d=v.shape[-1])
        v_image = rearrange(v, "b m (h w) d -> b (m d) h w", h=grid[0])
        static = F.conv2d(v_image, per_channel, padding=self.kernel_size // 2, groups=self.dim)
        static = rearrange(static, "b (m d) h w -> b m (h w) d", m=self.heads)
        return self._project(w["alpha"] * dynamic + w["beta"] * static, grid)

    def components(self, x):
        grid = self.check_input(x)
        dynamic = super().affinity(x)
        static = local_affinity(self.kernel, grid).unsqueeze(0)
        w = self.mixing_weights()
        return {"dynamic": dynamic, "static": static, "mixed": w["alpha"] * dynamic + w["beta"] * static}

    def affinity(self, x):
        return self.components(x)["mixed"]


@pytest.fixture
def registered(monkeypatch):
    """The one registry line, for the length of a test: ``REGISTRY["linattn"] = LinearAttention``."""
    monkeypatch.setitem(REGISTRY, "linattn", LinearAttention)
    monkeypatch.setitem(REGISTRY, "mixedlin", MixedLinearAttention)
    return ["linattn", "mixedlin"]


def test_the_docs_code_is_this_class():
    """The code block of the walk-through is LinearAttention's source here, line for line."""
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)
    source = inspect.getsource(LinearAttention)
    assert any(source.strip() in block for block in blocks)


def test_the_contract_test_picks_the_new_mixers_up(registered):
    assert set(registered) <= set(available())
    cases = examples(registered)
    assert {name for name, _, _ in cases} == set(registered)
    for case in cases:
        check_contract(*case)


def test_linear_attention_against_a_loop_written_here(registered):
    """Against the formula with explicit loops over heads and queries (no einsum, no helpers)."""
    torch.manual_seed(0)
    mixer = perturb(create("linattn", dim=6, heads=2).double())
    grid = (3, 4)
    x = rand_x(6, grid, batch=1)
    t = x.flatten(2).transpose(1, 2)[0]                       # (N, C)
    qkv = t @ mixer.qkv.weight.T + mixer.qkv.bias
    q, k, v = qkv[:, :6], qkv[:, 6:12], qkv[:, 12:]
    out = torch.zeros(12, 6, dtype=torch.float64)
    for m in range(2):
        cols = slice(3 * m, 3 * m + 3)
        fq, fk = F.elu(q[:, cols]) + 1, F.elu(k[:, cols]) + 1
        for i in range(12):
            weights = torch.stack([fq[i] @ fk[j] for j in range(12)])
            out[i, cols] = (weights / weights.sum()) @ v[:, cols]
    expected = (out @ mixer.proj.weight.T + mixer.proj.bias).T.reshape(1, 6, *grid)
    assert rel_err(mixer(x), expected) < 1e-12


def test_models_init_and_recording_pick_it_up(registered):
    """create_model builds networks of the new mixers, init runs their reset_parameters, a training
    step flows through them, and recording reads their affinities and components."""
    for name in registered:
        torch.manual_seed(0)
        model = create_model("deit_tiny_nano", mixer=name).double()
        mixers = [m for m in model.modules() if isinstance(m, REGISTRY[name])]
        assert mixers and all(m.heads == 2 for m in mixers)       # heads from the preset
        if name == "mixedlin":                                     # its own init, after the generic one
            assert all(m.mix_logit.item() == 0 for m in mixers)
        x = torch.randn(2, 3, 32, 32, dtype=torch.float64)
        loss = F.cross_entropy(model(x), torch.tensor([0, 1]))
        loss.backward()
        assert all(m.qkv.weight.grad is not None for m in mixers)
        model.eval()
        inputs = mixer_inputs(model, x)
        affinities = record_affinities(model, x)
        parts = record_components(model, x)
        assert list(affinities) == list(inputs) == list(parts) and len(affinities) == len(mixers)
        for layer, a in affinities.items():
            mixer = model.get_submodule(layer)
            assert rel_err(mixer.project(a @ mixer.values(inputs[layer])), mixer(inputs[layer])) < 1e-10
            expected = {"dynamic", "static", "mixed"} if name == "mixedlin" else {"dynamic"}
            assert set(parts[layer]) == expected
