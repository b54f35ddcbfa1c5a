"""The layers above ``mixers/`` that views use only the mixer contract and public members.

Read from the source (``ast``) of the plots, the widgets, recording and the history:

* no ``isinstance`` on a particular mixer class (only ``AffinityMixer``, the contract);
* no ``hasattr`` probing for a mixer's methods, and no attribute named like a mixer's own
  submodules or parameters (``qkv``, ``static``, ``mix_logit``, ...), which are its business;
* no file reaches into another object's private members (``other._name``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from unifiedctx import mixers

ROOT = Path(__file__).resolve().parents[1] / "unifiedctx"
FILES = sorted([*ROOT.glob("viz/*.py"), *ROOT.glob("widgets/*.py"), ROOT / "inspection" / "layers.py",
                ROOT / "train" / "history.py"])
CONTRACT = ("components", "mixing_weights", "static_kernels", "reset_parameters")


def mixer_internals() -> set[str]:
    """The names of every registered mixer's own submodules and parameters (top level)."""
    names = set()
    for name in mixers.available():
        cls = mixers.REGISTRY[name]
        for options in cls.example_options((4, 4)):
            mixer = mixers.create(name, **options)
            names |= {n for n, _ in mixer.named_children()}
            names |= {n for n, _ in mixer.named_parameters(recurse=False)}
    return names


def trees():
    return [(path.relative_to(ROOT.parent), ast.parse(path.read_text())) for path in FILES]


@pytest.mark.parametrize(("path", "tree"), trees(), ids=lambda v: str(v) if isinstance(v, Path) else "")
def test_views_keep_to_the_contract(path, tree):
    classes = {cls.__name__ for cls in mixers.REGISTRY.values()} - {"AffinityMixer"}
    internals = mixer_internals()
    assert {"qkv", "static", "conv"} <= internals  # the check knows what it looks for
    problems = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            args = node.args
            if node.func.id == "isinstance" and len(args) == 2:
                named = {n.id for n in ast.walk(args[1]) if isinstance(n, ast.Name)}
                named |= {n.attr for n in ast.walk(args[1]) if isinstance(n, ast.Attribute)}
                problems += [f"line {node.lineno}: isinstance on {c}" for c in named & classes]
            if node.func.id == "hasattr" and len(args) == 2 and isinstance(args[1], ast.Constant):
                if args[1].value in CONTRACT or args[1].value in internals:
                    problems.append(f"line {node.lineno}: hasattr(..., {args[1].value!r})")
        if isinstance(node, ast.Attribute):
            if node.attr in internals and node.attr not in CONTRACT:
                problems.append(f"line {node.lineno}: .{node.attr} (a mixer's own submodule)")
            private = node.attr.startswith("_") and not node.attr.startswith("__")
            own = (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls")) or (
                isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
                and node.value.func.id == "super")  # super()._x is the object's own method
            if private and not own:
                problems.append(f"line {node.lineno}: reaches into ._{node.attr[1:]} of another object")
    assert not problems, f"{path}: " + "; ".join(problems)


def test_a_new_mixer_with_a_kernel_and_a_knob_is_picked_up_untouched():
    """A mixer the views have never heard of: its static kernel, its knob and its components
    reach the kernel plot, the history row and the explorer's data through the contract alone."""
    from unifiedctx.mixers.local import local_affinity
    from unifiedctx.models import mixing_weights
    from unifiedctx.train.history import mixing_columns
    from unifiedctx.viz import static_kernels
    from unifiedctx.widgets.explorer_data import ExplorerData

    class Blurred(mixers.AffinityMixer):
        """``A = g * local(w)`` per channel: a static kernel and one knob ``g``."""

        kind = "static"

        def __init__(self, dim):
            super().__init__(dim)
            self.heads = dim
            self.w = torch.nn.Parameter(torch.randn(dim, 3, 3))
            self.g = torch.nn.Parameter(torch.tensor(0.25))

        def values(self, x):
            self.check_input(x)
            return x.flatten(2).unsqueeze(-1)

        def affinity(self, x):
            return self.g * local_affinity(self.w, self.check_input(x)).unsqueeze(0)

        def _project(self, z, grid):
            return z.squeeze(-1).unflatten(2, grid)

        def forward(self, x):
            return self.reference(x)

        def mixing_weights(self):
            return {"g": self.g}

        def static_kernels(self):
            return self.w

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), Blurred(4))
    assert list(static_kernels(model)) == ["1"]
    torch.testing.assert_close(static_kernels(model)["1"], model[1].w.detach().double())
    assert mixing_weights(model) == {"1": {"g": 0.25}}
    assert mixing_columns(model) == {"mixing": {"1": {"g": 0.25}}}
    data = ExplorerData({"m": model}, [torch.rand(3, 5, 5)])
    assert list(data.catalogue("m")) == ["1"] and data.info("m", "1").heads == {"static": 4}
