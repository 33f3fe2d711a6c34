"""How each family is pretrained: one recipe per family, the only place `lmlab pretrain` learns a family.

A recipe says how batches are made from a corpus, which objective is trained, how the run is
evaluated, the default sequence length, how --seq-len maps onto the model's config, and the
family's own pretraining options (a small dataclass: BERT's masking lives here, not in the generic
flag table). `lmlab.train.pretrain` reads these fields and nothing else about a family.

- Causal LMs with a KV cache (GPT §3.1, GPT-2): random windows of the token stream, next-token
  loss, validation loss on fixed windows.
- Masked LMs (BERT §3.1): masked sentence pairs, MLM + NSP, MLM/NSP loss and accuracy.
- Causal LMs that carry state (Transformer-XL §3.2): the corpus as `batch_size` contiguous streams
  read `seq_len` tokens a step, the state carried from step to step, validation with the memory
  protocol.
- Bidirectional LMs (ELMo §3.1): the same streams for the forward LM and streams of the reversed
  corpus for the backward LM, both states carried, the mean of the two losses; bilm-tf's 20
  unrolled steps by default. The model spells its word ids with the tokenizer's characters.
- Translation (CoVe, McCann et al. 2017 §3): batches of sentence pairs (lmlab.data.parallel), the
  decoder's NLL of the target given the source, validation loss and BLEU of greedy translations of
  the first valid sentences. The model reads fixed word vectors (`--word-vectors`) for its source
  words; words without one read the zero vector (counted and reported at the start).
- AWD-LSTM (ULMFiT §3.1, Merity et al. 2017 §4): the same streams read a random length a step
  (variable-length BPTT around seq_len = 70), the state carried, AR/TAR added to the loss.
- The deep character transformer (Al-Rfou et al. 2018, §2.1): random windows of the model's whole
  context, each with the characters one and two places ahead, the auxiliary losses of
  `lmlab.objectives.char_aux` (switched by `CharAuxOptions`), validation loss on fixed windows.
- Music (MuseNet, Music Transformer): a MIDI tokenizer over the source's composer labels, random
  windows of the music token shards with each piece's composer/instrument prefix in front
  (lmlab.data.music_windows), optional transposition and time stretch, validation NLL per event
  piece by piece; the default sequence length is the model's context.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch

from lmlab.data.prepare import prepare_tokens
from lmlab.data.sampler import (
    BidirectionalStreams,
    ContiguousStreams,
    RandomWindowSampler,
    SequentialWindows,
    VariableBPTTStreams,
)
from lmlab.errors import ConfigError
from lmlab.objectives.awd import AWDObjective
from lmlab.objectives.bilm import BiLMObjective, bilm_stream_loss
from lmlab.objectives.char_aux import CharAuxLoss
from lmlab.objectives.clm import clm_loss
from lmlab.objectives.clm_state import CarriedStateCLM
from lmlab.objectives.mlm_nsp import metrics_from_sums, mlm_nsp_loss, mlm_nsp_sums
from lmlab.objectives.translation import translation_loss
from lmlab.options import option
from lmlab.train.config import TrainConfig
from lmlab.train.distributed import Dist, barrier

DEFAULT_SEQ_LEN = 128


@dataclass(frozen=True)
class NoOptions:
    """A recipe without options of its own."""


@dataclass(frozen=True)
class MaskedLMOptions:
    """BERT pretraining (lmlab.data.pairs): `masking` dynamic (a fresh mask every step, RoBERTa's) or
    static (the paper's: each instance masked `dupe_factor` times, fixed across epochs)."""

    masking: str = option("dynamic", "bert: dynamic (a fresh mask every step) or static (the paper's)",
                          choices=("dynamic", "static"))
    dupe_factor: int = option(10, "bert with --masking static: maskings made of each instance")

    def __post_init__(self):
        if self.masking not in ("dynamic", "static"):
            raise ConfigError(f"--masking must be dynamic or static, got {self.masking!r}")
        if type(self.dupe_factor) is not int or self.dupe_factor < 1:
            raise ConfigError(f"--dupe-factor must be an integer >= 1, got {self.dupe_factor!r}")


@dataclass(frozen=True)
class BiLMOptions:
    """ELMo pretraining: `sampled_softmax` S > 0 trains with S sampled softmax candidates per batch
    (bilm-tf: 8192 over its 793k words; worth it only for large vocabularies), 0 = the full softmax."""

    sampled_softmax: int = option(0, "elmo: sampled softmax candidates per step (0 = the full softmax; "
                                     "bilm-tf used 8192 for 793k words)")

    def __post_init__(self):
        if type(self.sampled_softmax) is not int or self.sampled_softmax < 0:
            raise ConfigError(f"--sampled-softmax must be an integer >= 0, got {self.sampled_softmax!r}")


@dataclass(frozen=True)
class AWDOptions:
    """AWD-LSTM / ULMFiT pretraining: the weights of activation regularisation (α·mean(dropped h²)) and
    temporal activation regularisation (β·mean((h_t - h_{t-1})²)) of the last layer (Merity §4.6)."""

    ar_alpha: float = option(2.0, "ulmfit: α of activation regularisation (AR)")
    tar_beta: float = option(1.0, "ulmfit: β of temporal activation regularisation (TAR)")

    def __post_init__(self):
        for name in ("ar_alpha", "tar_beta"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be a number >= 0, got {value!r}")


@dataclass(frozen=True)
class CharAuxOptions:
    """The auxiliary losses of the deep character transformer (Al-Rfou et al. 2018, §2.1;
    lmlab.objectives.char_aux), each on unless switched off."""

    aux_positions: bool = option(True, "char-transformer: predict at the last position of each window only "
                                       "(off: the multiple-positions loss)", flag="no-aux-positions")
    aux_intermediate: bool = option(True, "char-transformer: no intermediate-layer losses (on: layer l of "
                                          "n predicts too until l/(2n) of training)",
                                    flag="no-aux-intermediate")
    aux_targets: bool = option(True, "char-transformer: no multiple-targets loss (on: every scored position "
                                     "also predicts the character after next)", flag="no-aux-targets")
    aux_target_weight: float = option(0.5, "char-transformer: weight of the character-after-next losses "
                                           "(the paper's 0.5)")

    def __post_init__(self):
        for name in ("aux_positions", "aux_intermediate", "aux_targets"):
            if type(getattr(self, name)) is not bool:
                raise ConfigError(f"{name} must be true or false, got {getattr(self, name)!r}")
        weight = self.aux_target_weight
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not weight >= 0:
            raise ConfigError(f"--aux-target-weight must be a number >= 0, got {weight!r}")


@dataclass(frozen=True)
class TranslationOptions:
    """CoVe pretraining: the fixed source word vectors, and how many valid sentences are translated for
    BLEU at each evaluation."""

    word_vectors: str = option("builtin:glove-6b-50d", "cove: fixed source word vectors, "
                                                        "builtin:glove-6b-50d or a GloVe text file (words "
                                                        "without one read zeros)")
    bleu_sentences: int = option(200, "cove: valid sentences translated (greedy) for BLEU at each evaluation "
                                      "(0 = loss only)")

    def __post_init__(self):
        if not isinstance(self.word_vectors, str) or not self.word_vectors:
            raise ConfigError(f"--word-vectors must name word vectors, got {self.word_vectors!r}")
        if type(self.bleu_sentences) is not int or self.bleu_sentences < 0:
            raise ConfigError(f"--bleu-sentences must be an integer >= 0, got {self.bleu_sentences!r}")


@dataclass(frozen=True)
class MusicOptions:
    """Music pretraining (lmlab.data.music_windows): each window starts with its piece's conditioning
    prefix (MuseNet) unless `window_prefix` is off; `transpose` N draws a shift in [-N, N] semitones
    per window, `stretch` F a time factor in [1-F, 1+F] (the Music Transformer: 3 and 0.05)."""

    transpose: int = option(0, "music: transpose each window by up to +-N semitones (0 = off)")
    stretch: float = option(0.0, "music: stretch each window's time by a factor in [1-F, 1+F] (0 = off)")
    window_prefix: bool = option(True, "music: plain random windows, without each piece's composer and "
                                       "instrument prefix put in front", flag="no-window-prefix")
    midi_encoding: str = option("musenet", "music: the MIDI encoding of a new run's tokenizer (remi: "
                                           "no augmentation)", choices=("musenet", "remi"))

    def __post_init__(self):
        if type(self.transpose) is not int or not 0 <= self.transpose <= 24:
            raise ConfigError(f"--transpose must be a whole number of semitones in 0..24, "
                              f"got {self.transpose!r}")
        if not isinstance(self.stretch, (int, float)) or not 0 <= self.stretch <= 0.5:
            raise ConfigError(f"--stretch must be in [0, 0.5], got {self.stretch!r}")
        if self.midi_encoding not in ("musenet", "remi"):
            raise ConfigError(f"--midi-encoding must be musenet or remi, got {self.midi_encoding!r}")
        if self.midi_encoding == "remi" and (self.transpose or self.stretch):
            raise ConfigError("--transpose and --stretch work on the musenet encoding's ids; "
                              "not with --midi-encoding remi")


@dataclass(frozen=True)
class Recipe:
    """batches(data, tokenizer, TrainConfig, Dist, valid, options) -> (batches, evaluate).
    objective: a loss function; a class of stateful objectives (one new object per run, built with
    the options' fields as keywords); or, with `builds_objective`, a function (options, model config,
    TrainConfig) -> the run's objective (one made from the family's options, the model's shape and
    the run's length). fit_config(tokenizer, options): config fields the tokenizer sets besides
    vocab_size (CoVe: its source vocabulary). fit_model(model, tokenizer, options): what the new model
    takes from the tokenizer before step 0 (ELMo: the spelling of every word id; CoVe: the word
    vectors of its source words). make_tokenizer(data, kind, options): a new run's tokenizer, for data
    that needs its own kind (music: MIDI); None = the text tokenizers."""

    batches: Callable
    objective: Callable
    default_seq_len: Callable[[object], int]  # the model config -> --seq-len when none is given
    options: type = NoOptions
    seq_len_field: str | None = None  # a config field --seq-len sets (Transformer-XL's tgt_len)
    reads_windows: bool = True  # reads windows of seq_len + 1 tokens of each split (not sentence pairs)
    fit_model: Callable | None = None
    make_tokenizer: Callable | None = None
    builds_objective: bool = False
    fit_config: Callable | None = None

    def make_objective(self, options, config, cfg: TrainConfig):
        """The objective of one run of a model with `config`: a loss function as is; a stateful
        objective class, one new object; with `builds_objective`, objective(options, config, cfg)."""
        if self.builds_objective:
            return self.objective(options, config, cfg)
        return self.objective(**asdict(options)) if isinstance(self.objective, type) else self.objective

    def make_options(self, family: str, values: dict):
        """The recipe's options from the values given (None = not given); ConfigError names an option
        this family's pretraining does not have."""
        given = {k: v for k, v in values.items() if v is not None}
        known = {f.name for f in fields(self.options)}
        for name in given:
            if name not in known:
                raise ConfigError(f"--{name.replace('_', '-')} is not an option of {family} pretraining"
                                  + (f"; its options: {', '.join(sorted(known))}" if known else ""))
        return self.options(**given)

    def config_overrides(self, overrides: dict, seq_len: int) -> dict:
        """--seq-len as the config field it stands for, checked against --set."""
        name = self.seq_len_field
        if name is None:
            return overrides
        if overrides.get(name, seq_len) != seq_len:
            raise ConfigError(f"--seq-len is the model's {name} here: --set {name}={overrides[name]} "
                              f"disagrees with --seq-len {seq_len}; give one value")
        return {**overrides, name: seq_len}


@dataclass(frozen=True)
class FinetuneRecipe:
    """How `lmlab finetune --recipe NAME` sets the loop's rates (lmlab.tasks.finetune): the schedule,
    the factor between layer groups, gradual unfreezing (one more group per epoch; never for task
    lm), Adam's betas and the base learning rate per task (None: the task's default)."""

    schedule: str
    discriminative: float
    unfreeze: bool
    betas: tuple[float, float]
    lr: dict[str | None, float]


FINETUNE_RECIPES = {
    # GPT §4.1 / BERT §4: linear warmup and decay, one rate, all layers, GPT's lr unless given.
    "default": FinetuneRecipe("linear", 1.0, False, (0.9, 0.999), {None: 6.25e-5}),
    # ULMFiT §3.2-3.3 and §4: STLR, ÷2.6 per group, gradual unfreezing, Adam (0.7, 0.99), lr 0.01
    # for the classifier and 0.004 for the LM.
    "ulmfit": FinetuneRecipe("stlr", 2.6, True, (0.7, 0.99), {None: 0.01, "lm": 0.004}),
}


def option_fields() -> dict[str, object]:
    """Every recipe option: name -> its dataclass field (the CLI makes one flag of each name)."""
    return {f.name: f for recipe in RECIPES.values() for f in fields(recipe.options)}


def _tokens(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None) -> dict:
    """Rank 0 tokenizes the corpus (cached); the others wait, then read its shards."""
    if d.is_main:
        shards = prepare_tokens(data, tok, valid=valid, seq_len=cfg.seq_len, progress=cfg.progress)
    barrier(d)
    if not d.is_main:
        shards = prepare_tokens(data, tok, valid=valid, seq_len=cfg.seq_len, progress=False)
    return shards


# ---------------------------------------------------------------- causal LM, random windows


def window_batches(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None, options):
    """Random windows of the token stream, validation loss on fixed windows."""
    shards = _tokens(data, tok, cfg, d, valid)
    per_rank = cfg.batch_size // d.world_size if cfg.batch_size % d.world_size == 0 else cfg.batch_size
    batches = RandomWindowSampler(shards["train"], cfg.seq_len, cfg.batch_size, cfg.seed,
                                  d.rank, d.world_size)
    return batches, window_evaluator(shards["valid"], cfg.seq_len, max(1, per_rank), cfg.eval_batches, d)


def window_evaluator(shard, seq_len: int, batch_size: int, max_batches: int, d: Dist):
    """Mean validation loss over the first `max_batches` fixed windows (the same every time)."""
    windows = SequentialWindows(shard, seq_len, batch_size=batch_size, rank=d.rank, world_size=d.world_size)

    @torch.no_grad()
    def evaluate(model) -> float:
        model.eval()
        device = next(model.parameters()).device
        total = torch.zeros(2, dtype=torch.float64, device=device)
        for i, (x, y, mask) in enumerate(windows):
            if i >= max_batches:
                break
            x, y, mask = x.to(device), y.to(device), mask.to(device)
            nll = model(x, targets=y).nll.float()
            total += torch.stack([(nll * mask).sum().double(), mask.sum().double()])
        if d.enabled:
            torch.distributed.all_reduce(total)
        return float(total[0] / total[1].clamp(min=1))

    return evaluate


# ---------------------------------------------------------------- masked LM, sentence pairs


def pair_batches(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None, options: MaskedLMOptions):
    """BERT: masked sentence pairs (lmlab.data.pairs); MLM/NSP metrics on a fixed set of pairs."""
    from lmlab.data.masking import MaskingSpec
    from lmlab.data.pairs import PairSampler, load_pairs

    spec = MaskingSpec.from_tokenizer(tok)
    splits = {}
    for main in (True, False):  # rank 0 tokenizes first, the others then read its cache
        if d.is_main == main:
            splits = {s: load_pairs(data, s, tok, valid=valid, progress=cfg.progress and main)
                      for s in ("train", "valid")}
        barrier(d)
    ids = (tok.cls_token_id, tok.sep_token_id, tok.pad_token_id)
    batches = PairSampler(splits["train"], cfg.seq_len, cfg.batch_size, spec, *ids, seed=cfg.seed,
                          rank=d.rank, world_size=d.world_size, masking=options.masking,
                          dupe_factor=options.dupe_factor)
    per_rank = cfg.batch_size // d.world_size
    fixed = PairSampler(splits["valid"], cfg.seq_len, per_rank * cfg.eval_batches * d.world_size, spec, *ids,
                        seed=cfg.seed, rank=d.rank, world_size=d.world_size).batch(0)
    return batches, pair_evaluator(fixed, per_rank, d)


def pair_evaluator(fixed: dict, batch_size: int, d: Dist):
    """{"loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"} over this rank's rows of `fixed`,
    summed over all ranks."""

    @torch.no_grad()
    def evaluate(model) -> dict:
        model.eval()
        device = next(model.parameters()).device
        sums = 0
        for i in range(0, len(fixed["input_ids"]), batch_size):
            sums = sums + mlm_nsp_sums(model, {k: v[i : i + batch_size].to(device) for k, v in fixed.items()})
        if d.enabled:
            torch.distributed.all_reduce(sums)
        return metrics_from_sums(sums.cpu())

    return evaluate


# ---------------------------------------------------------------- causal LM, contiguous streams


def stream_batches(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None, options):
    """The corpus as batch_size contiguous streams read seq_len tokens a step, so the state a row
    leaves is the history of the segment it reads next; validation with the memory protocol."""
    shards = _tokens(data, tok, cfg, d, valid)
    batches = ContiguousStreams(shards["train"], cfg.seq_len, cfg.batch_size, d.rank, d.world_size)
    return batches, stream_evaluator(shards["valid"], cfg)


def stream_evaluator(shard, cfg: TrainConfig):
    """Memory-protocol loss (the model's own segment and memory lengths) over the first eval_batches
    x batch_size x seq_len validation tokens, read as batch_size streams. Every rank computes the
    same number (no reduction), the one a single process would."""
    from lmlab.eval.memory import memory_perplexity

    tokens = getattr(shard, "tokens", shard)
    ids = torch.from_numpy(tokens[:cfg.eval_batches * cfg.batch_size * cfg.seq_len + 1].astype("int64"))

    def evaluate(model) -> float:
        return memory_perplexity(model, ids, streams=cfg.batch_size)["loss"]

    return evaluate


# ---------------------------------------------------------------- bidirectional LM, two stream sets


def bilm_batches(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None, options: BiLMOptions):
    """Forward streams and reversed-corpus streams side by side; both LM losses on the valid split."""
    shards = _tokens(data, tok, cfg, d, valid)
    batches = BidirectionalStreams(shards["train"], cfg.seq_len, cfg.batch_size, d.rank, d.world_size)
    return batches, bilm_evaluator(shards["valid"], cfg)


def bilm_evaluator(shard, cfg: TrainConfig):
    """Forward and backward LM loss over the first eval_batches batches of the valid split read as up to
    batch_size streams each way, states carried (fewer, shorter streams for a short split). Every
    rank computes the same numbers."""
    tokens = getattr(shard, "tokens", shard)
    n = len(tokens)
    streams = max(1, min(cfg.batch_size, (n - 1) // (cfg.seq_len + 1)))
    windows = BidirectionalStreams(tokens, min(cfg.seq_len, n // streams - 1), streams)
    steps = min(cfg.eval_batches, windows.steps_per_epoch)

    def evaluate(model) -> dict:
        return bilm_stream_loss(model, (windows.batch(k) for k in range(steps)))

    return evaluate


# ---------------------------------------------------------------- music, conditioned windows


def midi_tokenizer(data: str, kind: str | None, options: MusicOptions):
    """A MIDI tokenizer knowing lmlab's default composer labels and every label of `data`'s pieces
    (converting a built-in from music21 first, once, with a progress bar)."""
    from lmlab.data.music import all_pieces, composers_of
    from lmlab.tokenizers.midi import DEFAULT_COMPOSERS, MidiTokenizer

    if kind not in (None, "midi"):
        raise ConfigError(f"music is read with the midi tokenizer; --tokenizer {kind} does not apply")
    labels = composers_of(all_pieces(data))
    return MidiTokenizer(options.midi_encoding,
                         composers=[*DEFAULT_COMPOSERS, *(c for c in labels if c not in DEFAULT_COMPOSERS)])


def music_batches(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None, options: MusicOptions):
    """Conditioned random windows of the train pieces; NLL per event on the valid pieces."""
    from lmlab.data.music_shards import prepare_music
    from lmlab.data.music_windows import MusicWindows

    if valid is not None:
        raise ConfigError("--valid does not apply to music: its pieces are split by piece into train, "
                          "valid and test (lmlab.data.music)")
    if d.is_main:
        shards = prepare_music(data, tok, seq_len=cfg.seq_len, progress=cfg.progress)
    barrier(d)
    if not d.is_main:
        shards = prepare_music(data, tok, seq_len=cfg.seq_len, progress=False)
    batches = MusicWindows(shards["train"], cfg.seq_len, cfg.batch_size, tok, cfg.seed, d.rank, d.world_size,
                           prefix=options.window_prefix, transpose=options.transpose, stretch=options.stretch)
    return batches, music_evaluator(shards["valid"], tok, cfg)


def music_evaluator(shard, tok, cfg: TrainConfig):
    """NLL per event over the first eval_batches batches of the valid pieces (the same every time;
    every rank computes the same number)."""
    from lmlab.eval.music import music_nll

    per_batch = max(1, cfg.micro_batch_size or cfg.batch_size)

    def evaluate(model) -> float:
        result = music_nll(model, shard, tok, cfg.seq_len, per_batch, max_batches=cfg.eval_batches)
        return result["nll_per_event"]

    return evaluate


def spell_words(model, tok, options=None) -> None:
    """The model spells word id i as the tokenizer spells word i."""
    model.set_word_chars(tok.char_table())


# ---------------------------------------------------------------- AWD-LSTM, variable-length streams


def variable_stream_batches(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None, options):
    """AWD-LSTM: contiguous streams read a random length around seq_len a step; memory-protocol
    validation (the state carried over the whole valid split)."""
    shards = _tokens(data, tok, cfg, d, valid)
    batches = VariableBPTTStreams(shards["train"], cfg.seq_len, cfg.batch_size, cfg.seed, d.rank,
                                  d.world_size)
    return batches, stream_evaluator(shards["valid"], cfg)


# ---------------------------------------------------------------- deep character transformer


def char_window_batches(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None, options):
    """Random windows with the characters one and two places ahead (x, y, y2); validation loss of
    the next character on fixed windows."""
    shards = _tokens(data, tok, cfg, d, valid)
    per_rank = cfg.batch_size // d.world_size if cfg.batch_size % d.world_size == 0 else cfg.batch_size
    batches = RandomWindowSampler(shards["train"], cfg.seq_len, cfg.batch_size, cfg.seed, d.rank,
                                  d.world_size, ahead=2)
    return batches, window_evaluator(shards["valid"], cfg.seq_len, max(1, per_rank), cfg.eval_batches, d)


def char_aux_objective(options: CharAuxOptions, config, cfg: TrainConfig) -> CharAuxLoss:
    return CharAuxLoss.for_model(config, cfg.steps, all_positions=options.aux_positions,
                                 intermediate=options.aux_intermediate, multiple_targets=options.aux_targets,
                                 next2_weight=float(options.aux_target_weight))


# ---------------------------------------------------------------- translation (CoVe)


def translation_batches(data: str, tok, cfg: TrainConfig, d: Dist, valid: str | None,
                        options: TranslationOptions):
    """Sentence-pair batches (pairs with more than --seq-len words on a side are left out, counted);
    validation loss over the first eval_batches x batch_size valid pairs, BLEU over the first
    `bleu_sentences` of them. Every rank computes the same numbers."""
    from lmlab.data.parallel import ParallelBatches, encode_pairs, read_parallel
    from lmlab.eval.translation import translation_metrics

    examples, dropped = encode_pairs(read_parallel(data, "train", valid), tok, cfg.seq_len)
    if dropped and d.is_main:
        print(f"lmlab: {dropped:,} training pairs longer than --seq-len {cfg.seq_len} words left out, "
              f"{len(examples):,} kept", file=sys.stderr)
    batches = ParallelBatches(examples, cfg.batch_size, cfg.seed, tok.bos_token_id, tok.eos_token_id,
                              d.rank, d.world_size)
    held = read_parallel(data, "valid", valid)[: cfg.eval_batches * cfg.batch_size]

    def evaluate(model) -> dict:
        # Translations may run to 2·|source| + 10 words, as `lmlab evaluate` decodes: --seq-len filters
        # the training pairs, it must not cut the valid translations (that scored long sentences as
        # truncated when training on short pairs).
        return translation_metrics(model, tok, held, batch_size=cfg.batch_size,
                                   bleu_sentences=options.bleu_sentences)

    return batches, evaluate


def source_vocabulary(tok, options: TranslationOptions) -> dict:
    """The config fields of a translation model's source side: its vocabulary size and where its
    vectors come from (a built-in name, or only a file's name: a config never holds a path)."""
    name = options.word_vectors
    return {"source_vocab_size": tok.source_vocab_size,
            "word_vectors": name if name.startswith("builtin:") else Path(name).name}


def source_word_vectors(model, tok, options: TranslationOptions) -> None:
    """The model reads source word i as its vector in --word-vectors (zeros when it has none: reported)."""
    from lmlab.data.word_vectors import lookup

    found = lookup(options.word_vectors, tok.source_tokens[2:])
    if found.dim != model.config.d_input:
        raise ConfigError(f"--word-vectors {options.word_vectors} holds {found.dim}-d vectors; this model "
                          f"reads d_input={model.config.d_input} (pass --set d_input={found.dim})")
    table = torch.zeros(tok.source_vocab_size, found.dim)
    table[2:] = torch.from_numpy(found.vectors)
    model.set_source_vectors(table)
    missing = found.missing
    if missing:
        print(f"lmlab: {len(missing):,} of {len(found.words):,} source word types have no vector in "
              f"{options.word_vectors} and read zeros (e.g. {', '.join(missing[:5])})", file=sys.stderr)


def _context_or_default(config) -> int:
    return min(DEFAULT_SEQ_LEN, config.max_seq_len)


CAUSAL_WINDOWS = Recipe(window_batches, clm_loss, _context_or_default)
MASKED_PAIRS = Recipe(pair_batches, mlm_nsp_loss, _context_or_default, options=MaskedLMOptions,
                      reads_windows=False)
# Transformer-XL: --seq-len is the segment length tgt_len (training, and later generation).
MEMORY_STREAMS = Recipe(stream_batches, CarriedStateCLM, lambda config: config.tgt_len,
                        seq_len_field="tgt_len")
# ELMo: bilm-tf's unroll_steps = 20 tokens per step and direction.
BILM_STREAMS = Recipe(bilm_batches, BiLMObjective, lambda config: 20, options=BiLMOptions,
                      fit_model=spell_words)

# AWD-LSTM / ULMFiT: BPTT 70 (ULMFiT §4, fastai's bptt), AR/TAR in the objective.
AWD_STREAMS = Recipe(variable_stream_batches, AWDObjective, lambda config: 70, options=AWDOptions)
# The character transformer reads its whole fixed context per window (§2: 512 characters).
CHAR_AUX_WINDOWS = Recipe(char_window_batches, char_aux_objective, lambda config: config.max_seq_len,
                          options=CharAuxOptions, builds_objective=True)

# CoVe: sentence pairs; --seq-len caps the words of a side (the built-in corpus has at most 100).
TRANSLATION_PAIRS = Recipe(translation_batches, translation_loss, lambda config: 100,
                           options=TranslationOptions, reads_windows=False, fit_model=source_word_vectors,
                           fit_config=source_vocabulary)
# Music: the model's whole context per window by default (a chorale is ~700 tokens).
MUSIC_WINDOWS = Recipe(music_batches, clm_loss, lambda config: config.max_seq_len, options=MusicOptions,
                       make_tokenizer=midi_tokenizer)

RECIPES: dict[str, Recipe] = {
    "gpt": CAUSAL_WINDOWS,
    "gpt2": CAUSAL_WINDOWS,
    "bert": MASKED_PAIRS,
    "transfo-xl": MEMORY_STREAMS,
    "elmo": BILM_STREAMS,
    "char-transformer": CHAR_AUX_WINDOWS,
    "cove": TRANSLATION_PAIRS,
    "music": MUSIC_WINDOWS,
    "ulmfit": AWD_STREAMS,
}


def recipe_for(family: str) -> Recipe:
    if family not in RECIPES:
        raise ConfigError(f"no pretraining recipe for family {family!r}; expected one of "
                          f"{', '.join(RECIPES)}")
    return RECIPES[family]
