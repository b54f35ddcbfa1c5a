"""The registry: names, the old alias ``mixer`` of ``tokenmlp``, and clear errors for unknown names."""

from __future__ import annotations

import pytest
import torch

from unifiedctx.mixers import ALIASES, REGISTRY, TokenMixing, available, create, resolve
from unifiedctx.models import create_model, from_config


def test_tokenmlp_is_registered_and_mixer_is_only_an_alias():
    assert "tokenmlp" in available() and "mixer" not in available()
    assert ALIASES == {"mixer": "tokenmlp"} and resolve("mixer") == "tokenmlp"
    old, new = create("mixer", dim=6, grid=(4, 4), hidden=5), create("tokenmlp", dim=6, grid=(4, 4), hidden=5)
    assert type(old) is type(new) is TokenMixing
    assert old.state_dict().keys() == new.state_dict().keys()


def test_a_config_that_names_the_old_key_still_builds_and_loads():
    """A checkpoint written before the rename says "mixer": "mixer"; it builds the same network."""
    model = create_model("mixer_s16_nano", img_size=32)
    config = model.config
    assert [s["mixer"] for s in config["stages"]] == ["tokenmlp"]
    old = {**config, "stages": [{**s, "mixer": "mixer"} for s in config["stages"]]}
    rebuilt = from_config(old)
    rebuilt.load_state_dict(model.state_dict())  # strict: the same keys and shapes
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(rebuilt.eval()(x), model.eval()(x))


def test_unknown_name_suggests_close_ones():
    with pytest.raises(ValueError) as info:
        create("tokenmpl", dim=6)
    message = str(info.value)
    assert message.startswith("mixer must be one of 'dwconv', ")
    assert "got 'tokenmpl'" in message and "Did you mean 'tokenmlp'" in message
    assert all(repr(name) in message for name in REGISTRY)


def test_a_name_that_is_not_a_string_is_a_type_error():
    with pytest.raises(TypeError, match=r"^mixer must be a string, one of 'dwconv'.*got int 3$"):
        create(3, dim=6)
