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
  (a learned mix of every layer over a frozen network), `concat_pool` (ULMFiT's pooling), `directions`
  (per-direction states whose directions never mix: CVT's restricted views, `models/cvt.py`).
- `lineage`: how the family stands in the lecture's summary table (network, pretraining, how it is
  used downstream and fine-tuned), which published weights lmlab reads for it and which oracle its
  numbers are checked against. Text for people: `lmlab zoo` prints it, nothing branches on it.

Every model also has `layer_groups()` (parameters bottom to top, for discriminative learning rates
and gradual unfreezing) and a config with `vocab_size` and `max_seq_len`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from lmlab.errors import ConfigError
from lmlab.models import bert, char_transformer, cove, cvt, elmo, gpt, music, transformer_xl, ulmfit
from lmlab.models.config import config_from_dict

KINDS = ("causal_lm", "masked_lm", "bilm", "seq2seq", "tagger")
STATES = ("none", "kv_cache", "memory", "rnn")
CARRIED = ("memory", "rnn")  # states that continue from one call (segment, batch) to the next
READERS = ("pooled_cls", "extract_token", "scalar_mix", "concat_pool", "directions")


@dataclass(frozen=True)
class Lineage:
    """One row of the lecture's summary table ("Base model, pre-training, downstream tasks, downstream
    model, fine-tuning"), plus what lmlab can load and is checked against."""

    network: str
    pretraining: str  # supervised / unsupervised / semi-supervised, and on what objective
    downstream: str  # feature-based, model-based or zero-shot
    downstream_model: str  # task-specific (a model per task) or task-agnostic (the same network)
    finetuning: str  # what is trained on the task ("/" = nothing: features only)
    weights: tuple[str, ...] = ()  # published releases lmlab reads, with the command
    oracle: str = ""  # the reference the outputs are compared with, on the same weights
    # How `lmlab zoo --run` measures it: the built-in corpus it pretrains on, and the `lmlab finetune`
    # options of its paper's transfer method on the downstream task (None: no downstream use, a
    # language model only; {} = fine-tune the whole network through its first reader).
    corpus: str | None = "builtin:ptb"  # None: not pretrained (trained on a task, e.g. CVT)
    preset: str = "tiny"  # the preset it pretrains
    transfer: dict | None = field(default_factory=dict)


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
    lineage: Lineage | None = None
    name: str = field(default="", compare=False)  # filled in from the FAMILIES key

    def __post_init__(self):
        if self.kind not in KINDS or self.state not in STATES or not set(self.readers) <= set(READERS):
            raise ValueError(f"family declaration: kind {self.kind!r}, state {self.state!r}, readers "
                             f"{self.readers!r}; expected kind in {KINDS}, state in {STATES}, readers in "
                             f"{READERS}")
        if "tiny" not in self.presets:
            raise ValueError("family declaration: every family has a 'tiny' preset (the tests use it)")
        if self.lineage is not None and self.lineage.preset not in self.presets:
            raise ValueError(f"family declaration: lineage preset {self.lineage.preset!r} is not a preset")

    @property
    def carries_state(self) -> bool:
        return self.state in CARRIED


FAMILIES: dict[str, Family] = {
    "gpt": Family(gpt.GPTConfig, gpt.GPT, gpt.PRESETS["gpt"], kind="causal_lm", state="kv_cache",
                  paper="Radford et al. 2018", readers=("extract_token", "scalar_mix"),
                  lineage=Lineage("Transformer decoder (post-LN)", "unsupervised: left-to-right LM",
                                  "model-based", "task-agnostic",
                                  "pre-trained layers + top task layer(s), LM loss kept as auxiliary",
                                  weights=("openai-gpt (convert --from-hf)",),
                                  oracle="HF transformers OpenAIGPTLMHeadModel", transfer={"lm_coef": 0.5})),
    "gpt2": Family(gpt.GPTConfig, gpt.GPT, gpt.PRESETS["gpt2"], kind="causal_lm", state="kv_cache",
                   paper="Radford et al. 2019", readers=("extract_token", "scalar_mix"),
                   lineage=Lineage("Transformer decoder (pre-LN)", "unsupervised: left-to-right LM",
                                   "zero-shot; model-based", "task-agnostic",
                                   "none (zero-shot), or pre-trained layers + top task layer(s)",
                                   weights=("gpt2, gpt2-medium/large/xl (convert --from-hf)",),
                                   oracle="HF transformers GPT2LMHeadModel")),
    "bert": Family(bert.BertConfig, bert.Bert, bert.PRESETS, kind="masked_lm", state="none",
                   paper="Devlin et al. 2018", tokenizer="wordpiece", readers=("pooled_cls", "scalar_mix"),
                   lineage=Lineage("Transformer encoder",
                                   "unsupervised: masked LM + next sentence prediction", "model-based",
                                   "task-agnostic", "pre-trained layers + top task layer(s)",
                                   weights=("bert-base/large, cased and uncased (convert --from-hf)",),
                                   oracle="HF transformers BertForPreTraining")),
    "transfo-xl": Family(transformer_xl.TransfoXLConfig, transformer_xl.TransfoXL, transformer_xl.PRESETS,
                         kind="causal_lm", state="memory", paper="Dai et al. 2019",
                         lineage=Lineage("Transformer decoder + segment memory, relative positions",
                                         "unsupervised: left-to-right LM over carried segments",
                                         "language model (long context)", "/", "/",
                                         weights=("transfo-xl-wt103 (convert --from-hf)",),
                                         oracle="HF transformers 4.44 TransfoXLLMHeadModel (goldens)",
                                         transfer=None)),
    "elmo": Family(elmo.ELMoConfig, elmo.ELMo, elmo.PRESETS, kind="bilm", state="rnn",
                   paper="Peters et al. 2018", tokenizer="word_chars", readers=("scalar_mix", "directions"),
                   lineage=Lineage("two-layer biLSTM over a char CNN", "unsupervised: forward + backward LM",
                                   "feature-based", "task-specific", "/ (a learned mix of frozen layers)",
                                   weights=("bilm-tf options.json + weights.hdf5 (convert --from-elmo)",),
                                   oracle="bilm-tf TensorFlow outputs on the released weights",
                                   transfer={"features": True, "word_vectors": "builtin:glove-6b-50d",
                                             "lowercase": True})),
    # Source words in (fixed word vectors), target words out; features from the encoder.
    "ulmfit": Family(ulmfit.ULMFiTConfig, ulmfit.ULMFiT, ulmfit.PRESETS, kind="causal_lm", state="rnn",
                     paper="Howard & Ruder 2018", tokenizer="words", readers=("concat_pool",),
                     lineage=Lineage("AWD-LSTM (3-layer LSTM, weight-dropped, regularised)",
                                     "unsupervised: left-to-right LM, then LM fine-tuning on the task's text",
                                     "model-based", "task-agnostic",
                                     "all layers; discriminative rates, slanted triangular lr, gradual "
                                     "unfreezing",
                                     weights=("fastai AWD-LSTM lm .pth + itos (convert --from-fastai)",),
                                     oracle="fastai 2.8 AWD_LSTM on the same weights",
                                     transfer={"recipe": "ulmfit"})),
    "cove": Family(cove.CoVeConfig, cove.CoVe, cove.PRESETS, kind="seq2seq", state="rnn",
                   paper="McCann et al. 2017", tokenizer="parallel_words", readers=("scalar_mix",),
                   lineage=Lineage("two-layer biLSTM (MT-LSTM) over fixed GloVe + attentional LSTM decoder",
                                   "supervised: English -> German translation (builtin:lohelp-en-de)",
                                   "feature-based", "task-specific", "/ ([GloVe; CoVe] into a task model)",
                                   weights=("salesforce/cove wmtlstm .pth (convert --from-cove)",),
                                   oracle="torch.nn.LSTM on packed sequences; sacrebleu for BLEU",
                                   corpus="builtin:lohelp-en-de", preset="tiny-glove",
                                   transfer={"features": True, "word_vectors": "builtin:glove-6b-50d"})),
    "cvt": Family(cvt.CVTConfig, cvt.CVTTagger, cvt.PRESETS, kind="tagger", state="none",
                  paper="Clark et al. 2018", tokenizer="word_chars", readers=("directions",),
                  lineage=Lineage("two-layer biLSTM over word vectors + a char CNN",
                                  "semi-supervised: the task's labels + cross-view consistency on "
                                  "unlabeled text", "model-based",
                                  "task-specific (prediction modules per task) / task-agnostic "
                                  "(shared encoder)",
                                  "/ (trained on the task from the start; `finetune --task tag --cvt`)",
                                  oracle="the views' bitwise independence and the losses by hand",
                                  corpus=None,
                                  transfer={"task": "tag", "train": "builtin:wsj-pos",
                                            "dev": "builtin:wsj-pos", "cvt": True, "unlabeled": "builtin:ptb",
                                            "lowercase": True, "word_vectors": "builtin:glove-6b-50d",
                                            "cvt_preset": "tiny", "lr": 3e-3})),
    "music": Family(music.MusicConfig, music.MusicTransformer, music.PRESETS, kind="causal_lm",
                    state="kv_cache",
                    paper="Payne 2019 (MuseNet); Huang et al. 2018 (Music Transformer)", tokenizer="midi",
                    lineage=Lineage("Transformer decoder (GPT-2) over MIDI events, optional relative "
                                    "attention", "unsupervised: next MIDI event, composer/instrument "
                                    "tokens prepended", "generation (continuing a prompt or conditioning "
                                    "tokens)", "/", "/",
                                    oracle="naive relative attention (float64); music21 reads the MIDI back",
                                    corpus="builtin:bach-chorales", transfer=None)),
    # Characters (lmlab's chars tokenizer: one id per code point seen, text8 = 27 + <unk>, <eos>).
    "char-transformer": Family(char_transformer.CharTransformerConfig, char_transformer.CharTransformer,
                               char_transformer.PRESETS, kind="causal_lm", state="kv_cache",
                               paper="Al-Rfou et al. 2018", tokenizer="chars",
                               lineage=Lineage("deep Transformer decoder over characters (T12, T64)",
                                               "unsupervised: next character + auxiliary losses",
                                               "language model (characters)", "/", "/",
                                               oracle="the paper's auxiliary-loss formulas (section 2.1)",
                                               corpus="builtin:ptb-char", transfer=None)),
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
