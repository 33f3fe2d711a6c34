"""Family name -> (config class, model class, presets). A literal dict: no import-time registration."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

from lmlab.errors import ConfigError
from lmlab.models import bert, gpt, transformer_xl
from lmlab.models.config import config_from_dict


class Family(NamedTuple):
    config: type
    model: type
    presets: dict[str, dict]


FAMILIES: dict[str, Family] = {
    "gpt": Family(gpt.GPTConfig, gpt.GPT, gpt.PRESETS["gpt"]),
    "gpt2": Family(gpt.GPTConfig, gpt.GPT, gpt.PRESETS["gpt2"]),
    "bert": Family(bert.BertConfig, bert.Bert, bert.PRESETS),
    "transfo-xl": Family(transformer_xl.TransfoXLConfig, transformer_xl.TransfoXL, transformer_xl.PRESETS),
}


def family_spec(family: str) -> Family:
    if not isinstance(family, str) or family not in FAMILIES:  # a JSON list would be unhashable
        raise ConfigError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return FAMILIES[family]


def make_config(family: str, preset: str = "tiny", **overrides):
    spec = family_spec(family)
    if preset not in spec.presets:
        raise ConfigError(f"unknown preset {preset!r} for family {family}; "
                          f"expected one of {', '.join(spec.presets)}")
    return config_from_dict(spec.config, {**spec.presets[preset], **overrides},
                            where=f"{family}/{preset} overrides")


def build(family: str, preset: str = "tiny", **overrides):
    """A freshly initialised model: `build("gpt2", "tiny", d_model=128)`."""
    model = family_spec(family).model(make_config(family, preset, **overrides))
    model.family = family
    return model


def build_from_config(family: str, values: dict, where: str = "config.json"):
    spec = family_spec(family)
    model = spec.model(config_from_dict(spec.config, values, where=where))
    model.family = family
    return model


def family_of(model) -> str:
    family = getattr(model, "family", None)
    if family not in FAMILIES:
        raise ConfigError("model has no lmlab family; build it with lmlab.build or lmlab.load")
    return family


def config_fields(model) -> dict:
    return dataclasses.asdict(model.config)
