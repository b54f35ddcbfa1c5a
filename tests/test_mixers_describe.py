"""``describe()`` and ``head_unit``: every registered mixer says in words what its affinity is."""

from __future__ import annotations

import pytest

from unifiedctx.mixers import REGISTRY, available, create
from unifiedctx.mixers.base import DESCRIPTIONS, AffinityMixer

GRID = (4, 4)


def instances():
    for name in available():
        for options in REGISTRY[name].example_options(GRID):
            yield name, options


@pytest.mark.parametrize(("name", "options"), list(instances()),
                         ids=lambda v: v if isinstance(v, str) else ",".join(map(str, v.values())))
def test_every_mixer_describes_itself(name, options):
    mixer = create(name, **options)
    text = mixer.describe()
    assert isinstance(text, str) and text.strip() == text and len(text) > 10
    assert text.split(":")[0].split()[0] in ("static", "dynamic", "mixed", "input-gated"), text
    assert mixer.head_unit in ("head", "channel")


def test_the_words_name_the_family():
    assert "gated" in create("tokenmlp", dim=6, grid=GRID, hidden=8).describe()
    assert create("tokenmlp", dim=6, grid=GRID, hidden=8).head_unit == "channel"
    assert create("tokenmlp", dim=6, grid=GRID).describe().startswith("static dense matrix")
    assert create("mixer", dim=6, grid=GRID, hidden=8).describe() == create(
        "tokenmlp", dim=6, grid=GRID, hidden=8).describe()  # the alias is the same mixer
    assert create("attention", dim=8, heads=2).describe() == "dynamic: softmax(QK^T/sqrt d)"
    assert create("container", dim=8, heads=2).describe() == "mixed: alpha*attention + beta*conv"
    assert "5x5" in create("dwconv", dim=8, kernel_size=5).describe()
    assert create("dwconv", dim=8).head_unit == "channel" and create("attention", dim=8).head_unit == "head"


def test_the_default_comes_from_kind():
    class Plain(AffinityMixer):
        kind = "dynamic"

        def forward(self, x):
            return x

        def values(self, x):
            return x

        def affinity(self, x):
            return x

        def _project(self, z, grid):
            return z

    assert Plain(4).describe() == DESCRIPTIONS["dynamic"] and Plain(4).head_unit == "head"
    assert set(DESCRIPTIONS) == {"static", "dynamic", "mixed"}
