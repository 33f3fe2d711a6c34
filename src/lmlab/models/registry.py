"""Every model family, declared once: what it is and what it can do. A literal dict, no import-time
registration.

The rest of lmlab asks these declarations (`spec_of(model).state == "kv_cache"`), never a family
name or `hasattr(model, ...)`. A family declares:

- `kind`: what the network computes: `causal_lm` (next token), `masked_lm` (BERT), `bilm` (forward
  and backward LMs, ELMo), `seq2seq` (source -> target, CoVe) or `tagger` (labels per token, CVT);
  its forward returns `models.output.OUTPUTS[kind]`.
- `state`: what a decoding or streaming call carries to the next one: `none`, `kv_cache` (keys and
  values of the prefix), `memory` (Transformer-XL's segment memory; its config has tgt_len,
  mem_len, clamp_len, same_length) or `rnn` (LSTM (h, c)). Every family with a state has
  `init_state(batch_size, max_len, device)` and takes `forward(..., state=)`, returning `out.state`;
  every state tensor holds the batch in dim 0. `memory` and `rnn` states are *carried*: training,
  evaluation and embedding continue them across calls.
- `tokenizer`: the tokenizer kind `lmlab pretrain` builds by default (None: the corpus's own).
- `readers`: how task heads read the network, first = default: `pooled_cls` (the pooled [CLS]
  state), `extract_token` (GPT's <extract> token; the model has `init_token_rows`), `scalar_mix`
  (a learned mix of every layer over a frozen network), `concat_pool` (ULMFiT's pooling).

Every model also has `layer_groups()` (parameters bottom to top, for discriminative learning rates
and gradual unfreezing) and a config with `vocab_size` and `max_seq_len`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lmlab.errors import ConfigError
from lmlab.models import bert, char_transformer, elmo, gpt, transformer_xl, ulmfit
from lmlab.models.config import config_from_dict

KINDS = ("causal_lm", "masked_lm", "bilm", "seq2seq", "tagger")
STATES = ("none", "kv_cache", "memory", "rnn")
CARRIED = ("memory", "rnn")  # states that continue from one call (segment, batch) to the next
READERS = ("pooled_cls", "extract_token", "scalar_mix", "concat_pool")


@dataclass(frozen=True)
class Family:
    config: type
    model: type
    presets: dict[str, dict]
    kind: str
    state: str
    paper: str
    tokenizer: str | None = None
    readers: tuple[str, ...] = ()
    name: str = field(default="", compare=False)  # filled in from the FAMILIES key

    def __post_init__(self):
        if self.kind not in KINDS or self.state not in STATES or not set(self.readers) <= set(READERS):
            raise ValueError(f"family declaration: kind {self.kind!r}, state {self.state!r}, readers "
                             f"{self.readers!r}; expected kind in {KINDS}, state in {STATES}, readers in "
                             f"{READERS}")
        if "tiny" not in self.presets:
            raise ValueError("family declaration: every family has a 'tiny' preset (the tests use it)")

    @property
    def carries_state(self) -> bool:
        return self.state in CARRIED


FAMILIES: dict[str, Family] = {
    "gpt": Family(gpt.GPTConfig, gpt.GPT, gpt.PRESETS["gpt"], kind="causal_lm", state="kv_cache",
                  paper="Radford et al. 2018", readers=("extract_token", "scalar_mix")),
    "gpt2": Family(gpt.GPTConfig, gpt.GPT, gpt.PRESETS["gpt2"], kind="causal_lm", state="kv_cache",
                   paper="Radford et al. 2019", readers=("extract_token", "scalar_mix")),
    "bert": Family(bert.BertConfig, bert.Bert, bert.PRESETS, kind="masked_lm", state="none",
                   paper="Devlin et al. 2018", tokenizer="wordpiece", readers=("pooled_cls", "scalar_mix")),
    "transfo-xl": Family(transformer_xl.TransfoXLConfig, transformer_xl.TransfoXL, transformer_xl.PRESETS,
                         kind="causal_lm", state="memory", paper="Dai et al. 2019"),
    "elmo": Family(elmo.ELMoConfig, elmo.ELMo, elmo.PRESETS, kind="bilm", state="rnn",
                   paper="Peters et al. 2018", tokenizer="word_chars", readers=("scalar_mix",)),
    "ulmfit": Family(ulmfit.ULMFiTConfig, ulmfit.ULMFiT, ulmfit.PRESETS, kind="causal_lm", state="rnn",
                     paper="Howard & Ruder 2018", tokenizer="words", readers=("concat_pool",)),
    # Characters (lmlab's chars tokenizer: one id per code point seen, text8 = 27 + <unk>, <eos>).
    "char-transformer": Family(char_transformer.CharTransformerConfig, char_transformer.CharTransformer,
                               char_transformer.PRESETS, kind="causal_lm", state="kv_cache",
                               paper="Al-Rfou et al. 2018", tokenizer="chars"),
}


DEFAULT_FAMILY = "gpt2"  # what `lmlab pretrain` trains when no --model is given


def family_spec(family: str) -> Family:
    if not isinstance(family, str) or family not in FAMILIES:  # a JSON list would be unhashable
        raise ConfigError(f"unknown model family {family!r}; expected one of {', '.join(FAMILIES)}")
    return dataclasses.replace(FAMILIES[family], name=family)


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


def spec_of(model) -> Family:
    """The declaration of `model`'s family (ConfigError for a model lmlab did not build)."""
    return family_spec(family_of(model))


def config_fields(model) -> dict:
    return dataclasses.asdict(model.config)
