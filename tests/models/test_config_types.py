"""Config field types are checked against the dataclass annotations before a model is built."""

from __future__ import annotations

import pytest

import lmlab
from lmlab.errors import ConfigError
from lmlab.models.registry import FAMILIES, build_from_config, family_spec, make_config


@pytest.mark.parametrize("family, field, value, expected", [
    ("gpt2", "layer_norm_eps", "abc", "a number"),
    ("gpt2", "init_std", "x", "a number"),
    ("gpt2", "pre_ln", "no", "true or false"),
    ("gpt", "vocab_size", True, "an integer"),
    ("bert", "pooler", 1, "true or false"),
    ("bert", "pad_token_id", "0", "an integer or null"),
    ("transfo-xl", "cutoffs", ["a"], "a list of integers"),
    ("transfo-xl", "tie_projs", [1, 0], "a list of booleans"),
])
def test_wrong_field_type_is_one_line_config_error(family, field, value, expected):
    values = {**family_spec(family).presets["tiny"], field: value}
    with pytest.raises(ConfigError) as info:
        build_from_config(family, values, where="config.json")
    assert str(info.value) == f"config.json: field {field} must be {expected}, got {value!r}"


def test_ints_count_as_floats_and_lists_as_tuples():
    assert make_config("gpt2", layer_norm_eps=1, dropout=0).layer_norm_eps == 1
    assert make_config("transfo-xl", cutoffs=[100, 200]).cutoffs == (100, 200)
    assert make_config("bert", pad_token_id=None).pad_token_id is None


@pytest.mark.parametrize("family", list(FAMILIES))
def test_every_preset_passes_the_type_check(family):
    for preset in FAMILIES[family].presets:
        make_config(family, preset)


def test_unhashable_family_name_is_a_config_error():
    with pytest.raises(ConfigError, match=r"unknown model family \['gpt2'\]"):
        lmlab.build(["gpt2"])
