"""The reader is never silent (issue 26) and every module call is a step (issue 27).

A token mixing it cannot read (a linear attention: no softmax) is refused by name, with its module and
class; a hand-written softmax attention that no table knows is read through its call and equals its own
probabilities; a module called twice in one forward (weight sharing, ``b = a``, a loop) gives one node per
call, so the signed rollout of a linear network equals its Jacobian, and the ERF reads the call it names.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from einops import rearrange
from torch import nn

from unifiedctx import context


class Embed(nn.Module):
    def __init__(self, dim=8, patch=4):
        super().__init__()
        self.proj = nn.Conv2d(3, dim, patch, stride=patch)

    def forward(self, x):
        return rearrange(self.proj(x), "b c h w -> b (h w) c")


class LinearAttention(nn.Module):
    """``phi(Q) (phi(K)^T V)``: it mixes the tokens, with no softmax anywhere."""

    def __init__(self, dim=8):
        super().__init__()
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x):
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        q, k = torch.nn.functional.elu(q) + 1, torch.nn.functional.elu(k) + 1
        return x + q @ (k.transpose(-2, -1) @ v)


class HandAttention(nn.Module):
    """A user's own softmax attention, written out: no class the reader knows."""

    def __init__(self, dim=8, heads=2):
        super().__init__()
        self.heads, self.qkv, self.out = heads, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.probs = None

    def forward(self, x):
        q, k, v = rearrange(self.qkv(x), "b n (three m d) -> three b m n d", three=3, m=self.heads)
        a = (q @ k.transpose(-2, -1) / q.shape[-1] ** 0.5).softmax(-1)
        self.probs = a.detach()  # what a user would look at
        return x + self.out(rearrange(a @ v, "b m n d -> b n (m d)"))


def test_a_linear_attention_is_refused_by_name():
    torch.manual_seed(0)
    model = nn.Sequential(Embed(), LinearAttention(), LinearAttention()).double()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    with pytest.raises(ValueError) as err:
        context.rollout(model, x)
    message = str(err.value)
    assert "1: LinearAttention" in message and "2: LinearAttention" in message
    assert "sums over the 16 tokens with no softmax" in message and "partial=True" in message
    with pytest.raises(ValueError, match="1: LinearAttention"):
        context.rollout_maps(model, x, query=(1, 1))
    with pytest.raises(ValueError, match="1: LinearAttention"):
        context.context_distance(model, x)
    partial = context.rollout(model, x, partial=True)  # asked for: what was read, the rest named
    assert set(partial.skipped) == {"1", "2"} and partial.layers == ["0.proj"]


def test_a_hand_written_softmax_attention_is_read_through_its_call():
    torch.manual_seed(1)
    model = nn.Sequential(Embed(), HandAttention(), HandAttention()).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    graph = context.context_graph(model, x)
    assert not graph.unread
    assert [n.kind for n in graph.nodes[1:]] == ["map", "map", "join", "map", "join"]
    own = [model[1].probs, model[2].probs]  # set by the graph's own forward pass
    nodes = [n for n in graph.nodes if n.name in ("1", "2") and n.kind == "map"]  # not "1"'s sum
    for node, a in zip(nodes, own):
        assert (node.step.affinity - a).abs().max().item() < 1e-15
    eye = torch.eye(16, dtype=torch.float64)
    tokens = (0.5 * own[1].mean(1) + 0.5 * eye) @ (0.5 * own[0].mean(1) + 0.5 * eye)
    kernel = model[0].proj.weight.detach().abs().sum((0, 1))
    embed = torch.zeros(4, 4, 16, 16, dtype=torch.float64)
    for r in range(4):
        for c in range(4):
            embed[r, c, 4 * r:4 * r + 4, 4 * c:4 * c + 4] = kernel / kernel.sum()
    want = tokens @ embed.reshape(16, 256)
    assert (context.rollout(model, x).maps - want).abs().max().item() < 1e-12


class Twice(nn.Module):
    """One conv applied twice (weight sharing, a loop), then a second name for the same module."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(1, 1, 3, padding=1)
        self.b = self.a  # b = a
        self.c = nn.Conv2d(1, 1, 3, padding=1)

    def forward(self, x):
        for _ in range(2):
            x = x + 0.5 * self.a(x)
        return self.c(self.b(x))


def jacobian(f, x):
    j = torch.autograd.functional.jacobian(f, x)
    return j.reshape(j.shape[2] * j.shape[3], x.shape[-2] * x.shape[-1])


def test_every_call_of_a_module_is_a_step_and_the_signed_rollout_is_the_jacobian():
    torch.manual_seed(2)
    model = Twice().double()
    x = torch.randn(1, 1, 8, 8, dtype=torch.float64)
    r = context.rollout(model, x, signed=True)
    assert r.layers == ["a#0", "<model>", "a#1", "<model>", "a#2", "c"]
    err = (r.maps[0] - jacobian(model, x)).abs().max().item()
    assert err < 1e-12, err
    # the ERF reads the call it names, and refuses a name that is several calls
    with pytest.raises(ValueError, match=r"runs 3 times.*'a#0', 'a#1', 'a#2'"):
        context.effective_receptive_field(model, x, "a")
    first = context.rollout(model, x, upto="a#0", signed=True).map((3, 3)).abs()
    erf = context.effective_receptive_field(model, x, "a#0", query=(3, 3))[0]
    assert torch.allclose(erf, first / first.sum(), atol=1e-12, rtol=0)
    second = context.effective_receptive_field(model, x, "a#1", query=(3, 3))[0]
    assert int((second > 0).sum()) > int((erf > 0).sum())  # the second call sees through the first
    with pytest.raises(ValueError, match="runs only 3"):
        context.effective_receptive_field(model, x, "a#5")
    with pytest.raises(ValueError, match=r"upto='a' runs 3 times.*'a#0', 'a#1', 'a#2'"):  # the rollout too
        context.rollout(model, x, upto="a")
    with pytest.raises(ValueError, match=r"upto='b' is not a layer.*a#0"):  # b = a: one module, named 'a'
        context.rollout(model, x, upto="b")


def test_the_explorer_names_what_it_could_not_read():
    from unifiedctx.widgets.explorer_data import ExplorerData

    torch.manual_seed(3)
    image = torch.randn(3, 16, 16)
    only_linear = nn.Sequential(Embed(), LinearAttention()).eval()
    data = ExplorerData({"linear": only_linear}, [image])
    with pytest.raises(ValueError, match=r"'linear' has no layer to explore.*1: token mixing not read: "
                                         r"LinearAttention: a matmul that sums over the 16 tokens"):
        data.catalogue("linear")

    class ConvThenLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3, padding=1, groups=1)
            self.embed, self.mix = Embed(), LinearAttention()

        def forward(self, x):
            return self.mix(self.embed(x + 0.0 * self.conv(x).mean(1, keepdim=True)))

    class LinearThenConv(ConvThenLinear):
        def forward(self, x):
            tokens = self.mix(self.embed(x))  # (B, 16, 8) on a 4 x 4 grid
            return self.conv(rearrange(tokens, "b (h w) c -> b c h w", h=4)[:, :3])

    data = ExplorerData({"mixed": ConvThenLinear().eval(), "after": LinearThenConv().eval()}, [image, image])
    assert list(data.catalogue("mixed")) == ["conv"]  # what has a view is shown...
    assert list(data.catalogue("after")) == ["conv"]
    # ...the depth map of a layer the unread mixing ran before is refused by name, not a partial map
    with pytest.raises(ValueError, match="mix: LinearAttention"):
        data.depth("after", 0, "conv", (1, 1), "rollout")
    with pytest.raises(ValueError, match="mix: LinearAttention"):
        context.rollout(LinearThenConv().eval(), image[None], upto="conv")
    # a layer that ran before it depends on nothing left out: its map is whole (the whole network's is not)
    whole = context.rollout_maps(data.models["mixed"], image[None], "conv", query=(1, 1))["map"]
    assert np.array_equal(data.depth("mixed", 0, "conv", (1, 1), "rollout")["map"], whole)
    with pytest.raises(ValueError, match="mix: LinearAttention"):
        context.rollout(data.models["mixed"], image[None])


def test_the_watch_always_ends_and_leaves_the_model_as_it_was():
    from torch.overrides import _get_current_function_mode_stack

    class Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

        def forward(self, x):
            y = self.bn(self.conv(x))
            if y.shape[-1] == 5:
                raise RuntimeError("the user's own error")
            return y + torch.rand_like(y)  # draws from the global RNG

    model = Fails().train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(RuntimeError, match="the user's own error"):
        context.context_graph(model, torch.randn(1, 3, 5, 5))
    assert _get_current_function_mode_stack() == []  # the TorchFunctionMode exited
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())
    x = torch.randn(1, 3, 6, 6)
    state = torch.random.get_rng_state()
    graph = context.context_graph(model, x)  # in train mode: BatchNorm updates...
    assert [n.name for n in graph.nodes[1:]] == ["conv"]
    assert torch.equal(torch.random.get_rng_state(), state)  # ...and rand_like draws, on copies only
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert _get_current_function_mode_stack() == []
