"""The rungs of the reproduction ladder (experiments/ladder.py, docs/results.md): per family, the
commands of its recipe, the number they produce and the paper's claim that number checks.

Every recipe is two runs that differ in the one thing the claim is about (model size, pretrained
weights, memory, auxiliary losses, contextual features, unlabeled text, relative attention), same
data, steps and seed otherwise; the number is the gap between them, signed so that a positive gap
is the paper's direction. `short` gives the same commands with fewer steps (tests/ladder).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

QUIET = ("--no-progress", "--seed", "0")


@dataclass(frozen=True)
class Step:
    """One command; its result is the run dir's report (`report`, relative to the rung's folder) or
    the JSON it prints (`reads_stdout`), or nothing (a data step)."""
    name: str
    argv: tuple[str, ...]
    report: str | None = None
    reads_stdout: bool = False


@dataclass(frozen=True)
class Expect:
    expected: float
    tolerance: float

    def holds(self, number: float) -> bool:
        return abs(number - self.expected) <= self.tolerance


@dataclass(frozen=True)
class Rung:
    family: str
    claim: str  # the paper's qualitative claim, one line
    measure: str  # what the number is
    why: str  # the recipe in words (markdown)
    make_steps: Callable[[bool], list[Step]]
    number: Callable[[dict], float]
    describe: Callable[[dict], str]  # a markdown line with each run's own numbers
    full: Expect
    short: Expect
    digits: int = 3
    # the short recipe's number where the full one would not move in a few steps (a classifier still
    # at the majority class): the same comparison in dev loss
    short_number: Callable[[dict], float] | None = None

    def steps(self, short: bool) -> list[Step]:
        return self.make_steps(short)

    def measured(self, results: dict, short: bool) -> float:
        return (self.short_number or self.number)(results) if short else self.number(results)

    def claim_holds(self, number: float) -> bool:
        return number > 0


def lmlab(*argv: str) -> tuple[str, ...]:
    return ("lmlab", *argv)


def sets(**fields) -> tuple[str, ...]:
    return tuple(x for k, v in fields.items() for x in ("--set", f"{k}={v}"))


def accuracy(result: dict) -> float:
    return result["dev_metrics"]["accuracy"]


# ---------------------------------------------------------------- GPT-2: capacity
GPT2_BIG = sets(d_model=128, n_layers=4, n_heads=4, d_ff=512)


def gpt2_steps(short: bool) -> list[Step]:
    n, tokens = (40, "4000") if short else (800, "82430")
    out = []
    for name, extra in (("tiny", ()), ("bigger", GPT2_BIG)):
        out.append(Step(f"pretrain-{name}", lmlab(
            "pretrain", "--model", "gpt2", "--preset", "tiny", *extra, "--data", "builtin:ptb",
            "--out", f"{{work}}/{name}", "--steps", str(n), "--batch-size", "16", "--seq-len", "64",
            "--lr", "2e-3", "--warmup", str(n // 10), "--eval-every", "0", "--save-every", "0", *QUIET),
            report=f"{name}/metrics.jsonl"))
        out.append(Step(f"test-{name}", lmlab("evaluate", f"{{work}}/{name}", "--data", "builtin:ptb",
                                              "--split", "test", "--max-tokens", tokens), reads_stdout=True))
    return out


# ---------------------------------------------------------------- GPT and BERT: transfer vs scratch
def transfer_steps(model: str, lr: str, scratch_lr: str, n: int) -> list[Step]:
    common = ("--task", "classify", "--train", "builtin:rotten-tomatoes", "--dev", "builtin:rotten-tomatoes",
              "--steps", str(n), "--batch-size", "16", "--max-len", "80", "--truncate",
              "--eval-every", str(n), "--save-every", str(n), *QUIET)
    return [Step("pretrained", lmlab("finetune", model, *common, "--lr", lr, "--out", "{work}/pretrained"),
                 report="pretrained/report.json"),
            Step("scratch", lmlab("finetune", model, *common, "--lr", scratch_lr, "--from-scratch",
                                  "--out", "{work}/scratch"), report="scratch/report.json")]


def gpt_steps(short: bool) -> list[Step]:
    # post-LN (GPT's layout) at the pre-LN rung's 2e-3 stays at the unigram loss: a lower peak rate
    n, m = (40, 30) if short else (1500, 400)
    pretrain = Step("pretrain", lmlab(
        "pretrain", "--model", "gpt", "--preset", "tiny", *GPT2_BIG, "--data", "builtin:ptb",
        "--out", "{work}/lm", "--steps", str(n), "--batch-size", "16", "--seq-len", "64", "--lr", "5e-4",
        "--warmup", str(n // 10), "--eval-every", "0", "--save-every", "0", *QUIET),
        report="lm/metrics.jsonl")
    return [pretrain, *transfer_steps("{work}/lm", "5e-4", "5e-4", m)]


def bert_steps(short: bool) -> list[Step]:
    m = 10 if short else 200
    convert = Step("convert", lmlab("convert", "--from-hf", "builtin:minilm", "--out", "{work}/minilm"))
    return [convert, *transfer_steps("{work}/minilm", "5e-5", "2e-4", m)]


def transfer_gap(r: dict) -> float:
    return accuracy(r["pretrained"]) - accuracy(r["scratch"])


def transfer_loss_gap(r: dict) -> float:
    return r["scratch"]["dev_metrics"]["loss"] - r["pretrained"]["dev_metrics"]["loss"]


def transfer_text(r: dict) -> str:
    a, b = r["pretrained"], r["scratch"]
    mcc_a, mcc_b = a["dev_metrics"]["mcc"], b["dev_metrics"]["mcc"]
    return (f"Dev accuracy (1,275 snippets): pretrained **{accuracy(a):.4f}** (MCC {mcc_a:.3f}), "
            f"from scratch **{accuracy(b):.4f}** (MCC {mcc_b:.3f}); the majority class scores 0.5804.")


# ---------------------------------------------------------------- Transformer-XL: memory
def txl_steps(short: bool) -> list[Step]:
    n, tokens = (40, "8000") if short else (600, "200000")
    model = sets(d_model=128, n_layers=4, n_heads=4, d_head=32, d_ff=512, dropout=0.1, mem_len=128)
    out = [Step("pretrain", lmlab(
        "pretrain", "--model", "transfo-xl", "--preset", "tiny", *model, "--data", "builtin:ptb-char",
        "--tokenizer", "chars", "--out", "{work}/mem128", "--steps", str(n), "--batch-size", "16",
        "--seq-len", "64", "--lr", "1e-3", "--warmup", str(n // 10), "--eval-every", "0", "--save-every", "0",
        *QUIET), report="mem128/metrics.jsonl")]
    for mem in ("0", "128"):
        out.append(Step(f"valid-mem{mem}", lmlab(
            "evaluate", "{work}/mem128", "--data", "builtin:ptb-char", "--split", "valid",
            "--protocol", "memory", "--mem-len", mem, "--batch-size", "8", "--max-tokens", tokens),
            reads_stdout=True))
    return out


# ---------------------------------------------------------------- the character transformer: aux losses
def char_steps(short: bool) -> list[Step]:
    n, tokens = (20, "8000") if short else (150, "100000")
    model = sets(d_model=64, n_layers=12, n_heads=4, d_ff=256, max_seq_len=64, dropout=0.0)
    out = []
    for name, switches in (("aux", ()), ("none", ("--no-aux-positions", "--no-aux-intermediate",
                                                  "--no-aux-targets"))):
        out.append(Step(f"pretrain-{name}", lmlab(
            "pretrain", "--model", "char-transformer", "--preset", "tiny", *model,
            "--data", "builtin:text8-kjv", "--out", f"{{work}}/{name}", "--steps", str(n),
            "--batch-size", "16", "--seq-len", "64",
            "--lr", "2e-3", "--warmup", str(n // 10), "--eval-every", "0", "--save-every", "0", *switches,
            *QUIET), report=f"{name}/metrics.jsonl"))
        out.append(Step(f"valid-{name}", lmlab(
            "evaluate", f"{{work}}/{name}", "--data", "builtin:text8-kjv", "--split", "valid",
            "--batch-size", "32", "--max-tokens", tokens), reads_stdout=True))
    return out


# ---------------------------------------------------------------- ELMo: contextual features
ELMO = sets(d_model=64, d_lstm=256, char_filters="[[1,16],[2,16],[3,32],[4,64],[5,64]]", n_highway=1,
            dropout=0.0)
TAGGER = ("--task", "tag", "--train", "builtin:wsj-pos", "--dev", "builtin:wsj-pos", "--features",
          "--word-vectors", "builtin:glove-6b-50d", "--lstm-dim", "100", "--dropout", "0.5",
          "--batch-size", "32", "--lr", "1e-2", *QUIET)


def elmo_steps(short: bool) -> list[Step]:
    n, epochs = (10, ("--steps", "10")) if short else (200, ("--epochs", "10"))
    return [
        Step("pretrain", lmlab(
            "pretrain", "--model", "elmo", "--preset", "small", *ELMO, "--data", "builtin:ptb",
            "--sampled-softmax", "1024", "--batch-size", "64", "--seq-len", "20", "--lr", "2e-3",
            "--warmup", str(n // 6), "--steps", str(n), "--eval-every", "0", "--save-every", "0",
            "--out", "{work}/elmo", *QUIET), report="elmo/metrics.jsonl"),
        Step("glove", lmlab("finetune", "none", *TAGGER, *epochs, "--out", "{work}/glove"),
             report="glove/report.json"),
        Step("glove+elmo", lmlab("finetune", "{work}/elmo", *TAGGER, "--lowercase", *epochs,
                                 "--out", "{work}/glove+elmo"), report="glove+elmo/report.json")]


def tagging_text(r: dict, base: str, plus: str, name: str) -> str:
    return (f"Dev token accuracy (wsj-pos, 100 held-out sentences, 2,471 words): GloVe alone "
            f"**{accuracy(r[base]):.4f}**, GloVe + {name} **{accuracy(r[plus]):.4f}**.")


# ---------------------------------------------------------------- CoVe: translation features
def cove_steps(short: bool) -> list[Step]:
    # the MT run is docs/cove.md's (benchmarks/cove_downstream.py's pretraining, ~53 min on one core)
    short_run, full_run = (10, "10", ("--steps", "10")), (4000, "300", ("--epochs", "10"))
    n, every, epochs = short_run if short else full_run
    return [
        Step("pretrain", lmlab(
            "pretrain", "--model", "cove", "--preset", "small", "--data", "builtin:lohelp-en-de",
            "--vocab-size", "8000", "--seq-len", "30", "--batch-size", "64", "--lr", "3e-3",
            "--warmup", "100", "--min-lr-ratio", "0.05", "--weight-decay", "0", "--steps", str(n),
            "--eval-every", every, "--eval-batches", "5", "--bleu-sentences", "200", "--save-every", every,
            "--keep-checkpoints", "100", "--log-every", "50", "--out", "{work}/mt", *QUIET),
            report="mt/metrics.jsonl"),
        Step("glove", lmlab("finetune", "none", *TAGGER, *epochs, "--out", "{work}/glove"),
             report="glove/report.json"),
        Step("glove+cove", lmlab("finetune", "{work}/mt", *TAGGER, *epochs,
                                 "--out", "{work}/glove+cove"), report="glove+cove/report.json")]


# ---------------------------------------------------------------- ULMFiT: LM pretraining for a classifier
ULMFIT_LM = sets(d_model=64, d_hidden=256, dropout=0.3)
CLASSIFY_REVIEWS = ("--task", "classify", "--train", "{work}/data/train.jsonl",
                    "--dev", "{work}/data/dev.jsonl", "--recipe", "ulmfit", "--extend-vocab", "20000",
                    "--max-len", "200", "--truncate",
                    "--pool-len", "140", "--bptt", "70", "--batch-size", "32", "--eval-every", "100000",
                    "--save-every", "100000", *QUIET)


def ulmfit_steps(short: bool) -> list[Step]:
    n, reviews, epochs = (10, ("--train", "64"), "1") if short else (500, (), "3")
    return [
        Step("data", ("python", "experiments/ladder_data.py", "polarity", "{work}/data", *reviews)),
        Step("pretrain", lmlab(
            "pretrain", "--model", "ulmfit", "--preset", "small", *ULMFIT_LM, "--data", "builtin:ptb",
            "--tokenizer", "words", "--out", "{work}/lm", "--steps", str(n), "--batch-size", "32",
            "--seq-len", "70", "--lr", "5e-3", "--warmup", str(n // 20), "--schedule", "cosine",
            "--weight-decay", "0.01", "--beta2", "0.99", "--eval-every", "0", "--save-every", "0", *QUIET),
            report="lm/metrics.jsonl"),
        Step("pretrained", lmlab("finetune", "{work}/lm", *CLASSIFY_REVIEWS, "--epochs", epochs,
                                 "--out", "{work}/pretrained"), report="pretrained/report.json"),
        Step("scratch", lmlab("finetune", "{work}/lm", *CLASSIFY_REVIEWS, "--epochs", epochs,
                              "--from-scratch", "--no-gradual-unfreezing", "--discriminative", "1",
                              "--out", "{work}/scratch"),
             report="scratch/report.json")]


# ---------------------------------------------------------------- CVT: unlabeled text
CVT = ("--task", "tag", "--train", "{work}/data/wsj-pos-10.conll", "--dev", "builtin:wsj-pos", "--cvt",
       "--cvt-preset", "small", "--word-vectors", "builtin:glove-6b-50d", "--lowercase", "--batch-size", "16",
       "--lr", "1e-2", *QUIET)


def cvt_steps(short: bool) -> list[Step]:
    n = 20 if short else 400  # labeled batches; CVT makes as many unlabeled steps in between
    return [
        Step("data", ("python", "benchmarks/cvt.py", "--stage", "data", "--work", "{work}")),
        Step("supervised", lmlab("finetune", "none", *CVT, "--steps", str(n), "--eval-every", str(n),
                                 "--save-every", str(n), "--out", "{work}/supervised"),
             report="supervised/report.json"),
        Step("cvt", lmlab("finetune", "none", *CVT, "--unlabeled", "{work}/data/unlabeled.txt",
                          "--steps", str(2 * n), "--eval-every", str(2 * n), "--save-every", str(2 * n),
                          "--out", "{work}/cvt"), report="cvt/report.json")]


# ---------------------------------------------------------------- music: relative attention
def music_steps(short: bool) -> list[Step]:
    n, pieces = (10, "3") if short else (400, "17")
    model = sets(d_model=128, n_layers=3, n_heads=4, d_ff=384, max_seq_len=256, dropout=0.1)
    out = []
    for rel in ("true", "false"):
        out.append(Step(f"pretrain-rel-{rel}", lmlab(
            "pretrain", "--model", "music", "--preset", "small", *model, *sets(relative_attention=rel),
            "--data", "builtin:bach-chorales", "--out", f"{{work}}/rel-{rel}", "--steps", str(n),
            "--batch-size", "16", "--seq-len", "256", "--lr", "1e-3", "--warmup", str(max(2, n // 8)),
            "--transpose", "3", "--stretch", "0.05",
            "--eval-every", "0", "--save-every", "0", *QUIET), report=f"rel-{rel}/metrics.jsonl"))
        out.append(Step(f"test-rel-{rel}", lmlab("evaluate", f"{{work}}/rel-{rel}", "--data",
                                                 "builtin:bach-chorales", "--split", "test",
                                                 "--max-examples", pieces), reads_stdout=True))
    return out


def gap(key: str, worse: str, better: str) -> Callable[[dict], float]:
    return lambda r: r[worse][key] - r[better][key]


# in the lineage's order (the lecture's story: features, fine-tuning, longer context and bigger models)
RUNGS: dict[str, Rung] = {r.family: r for r in [
    Rung("cove", "an encoder trained to translate gives features that help a task model beyond word vectors "
         "(CoVe §5, Table 2)", "dev accuracy, GloVe + CoVe − GloVe",
         "CoVe's MT model (the `small` preset: fixed GloVe 50-d, 2 × 128-unit biLSTM encoder, attentional "
         "decoder over 8,000 German words) trained on builtin:lohelp-en-de for 4,000 steps of 64 pairs of "
         "at most 30 words (~9 epochs; docs/cove.md's MT model, 53 min on one core, not in the wall "
         "column); then the ELMo rung's tagger on wsj-pos with GloVe alone or `[GloVe; CoVe]` (the frozen "
         "MT-LSTM's layers mixed).",
         cove_steps, lambda r: accuracy(r["glove+cove"]) - accuracy(r["glove"]),
         lambda r: (f"Translation: validation loss {r['pretrain']['val_loss']:.3f}, greedy BLEU "
                    f"{r['pretrain']['val_bleu']:.2f} on 200 validation pairs. "
                    + tagging_text(r, "glove", "glove+cove", "CoVe")),
         Expect(0.028, 0.01), Expect(-0.0271, 0.02)),
    Rung("elmo", "a frozen biLM's layers, mixed, help a task model beyond word vectors (ELMo §5, Table 1)",
         "dev accuracy, GloVe + ELMo − GloVe",
         "ELMo (char CNN, 2 × 256-cell LSTMs projected to 64) pretrained on PTB for 200 steps of 64 × 20 "
         "tokens per direction (sampled softmax of 1,024); then the same biLSTM tagger (100 units) on "
         "wsj-pos, 10 epochs, with GloVe 50-d alone or GloVe beside the learned mix of the frozen ELMo's "
         "layers.",
         elmo_steps, lambda r: accuracy(r["glove+elmo"]) - accuracy(r["glove"]),
         lambda r: tagging_text(r, "glove", "glove+elmo", "ELMo"),
         Expect(0.011, 0.005), Expect(-0.1384, 0.03)),
    Rung("cvt", "cross-view training on unlabeled text improves a tagger trained on few labels "
         "(CVT §4, Table 1)", "dev accuracy, CVT − supervised",
         "The CVT tagger (GloVe 50-d read lowercased, char CNN, biLSTMs) on 10% of wsj-pos (90 sentences), "
         "400 labeled batches of 16 at peak lr 1e-2: supervised only, and with CVT on PTB's valid and test "
         "sentences (one unlabeled batch after each labeled one).",
         cvt_steps, lambda r: accuracy(r["cvt"]) - accuracy(r["supervised"]),
         lambda r: (f"Dev token accuracy (100 held-out sentences): supervised "
                    f"**{accuracy(r['supervised']):.4f}**, CVT **{accuracy(r['cvt']):.4f}**."),
         Expect(0.013, 0.005), Expect(-0.0045, 0.01)),
    Rung("ulmfit", "a language model pretrained on general text makes a better classifier than the same "
         "network trained on the task alone (ULMFiT §5)", "dev accuracy, pretrained − scratch",
         "AWD-LSTM (3 layers, 64 / 256) pretrained on PTB words for 500 steps of 32 × 70 tokens; then the "
         "classifier (concat pooling, STLR, ÷2.6 discriminative rates, gradual unfreezing, the reviews' new "
         "words at the mean embedding) on builtin:polarity's 1,350 full training reviews (the first 200 "
         "tokens, pooled over the last 140), 3 epochs; from scratch: the same network from random weights, "
         "every layer at one rate from the start.",
         ulmfit_steps, transfer_gap,
         lambda r: (f"Dev accuracy (150 held-out reviews, majority class 0.513): pretrained "
                    f"**{accuracy(r['pretrained']):.4f}**, from scratch **{accuracy(r['scratch']):.4f}**."),
         Expect(0.04, 0.02), Expect(-0.0126, 0.02), short_number=transfer_loss_gap),
    Rung("gpt", "generative pretraining, then fine-tuning, beats the same model trained on the task alone "
         "(GPT §5)", "dev accuracy, pretrained − scratch",
         "GPT (post-LN, 4 layers of 128) pretrained on PTB words for 1,500 steps at peak lr 5e-4, then "
         "fine-tuned on rotten-tomatoes with the auxiliary LM loss (λ 0.5) for 400 steps of 16; the same "
         "network from random weights with the same fine-tuning.",
         gpt_steps, transfer_gap, transfer_text, Expect(0.089, 0.02), Expect(-0.0009, 0.005),
         short_number=transfer_loss_gap),
    Rung("bert", "a pretrained bidirectional encoder fine-tuned beats the same encoder from scratch "
         "(BERT §4)",
         "dev accuracy, pretrained − scratch",
         "A real pretrained BERT-layout encoder (`builtin:minilm`, all-MiniLM-L6-v2, 6 × 384) fine-tuned on "
         "rotten-tomatoes through the pooled [CLS] for 200 steps of 16 at 5e-5; the same encoder from random "
         "weights at 2e-4 (a rate a scratch transformer trains at).",
         bert_steps, transfer_gap, transfer_text, Expect(0.229, 0.03), Expect(0.0161, 0.01),
         short_number=transfer_loss_gap),
    Rung("transfo-xl", "the recurrence memory lowers the loss: context beyond the segment is used "
         "(Transformer-XL §3.2, Table 8)", "valid bpc, memory 0 − memory 128",
         "Transformer-XL (4 layers of 128) trained on PTB characters with mem_len 128 (2 × the 64-character "
         "segment) for 600 steps of 16 segments, then scored on the first 200k validation characters with "
         "the memory protocol, without and with its memory.",
         txl_steps, gap("bpc", "valid-mem0", "valid-mem128"),
         lambda r: (f"Validation bits per character: memory 0 **{r['valid-mem0']['bpc']:.4f}**, memory 128 "
                    f"**{r['valid-mem128']['bpc']:.4f}**."),
         Expect(0.046, 0.01), Expect(4.276, 0.05),
         # 40 steps learn no context beyond the segment: the short recipe checks the model's bpc itself
         short_number=lambda r: r["valid-mem128"]["bpc"]),
    Rung("gpt2", "a bigger language model is a better one on the same text (GPT-2 §3, Fig. 1)",
         "test ppl, tiny − 4×128 model",
         "Two GPT-2 decoders on PTB words, the same 800 steps of 16 × 64 tokens: the `tiny` preset "
         "(2 layers of 48) and 4 layers of 128; test perplexity over the whole test split.",
         gpt2_steps, gap("ppl", "test-tiny", "test-bigger"),
         lambda r: (f"Test perplexity: tiny **{r['test-tiny']['ppl']:.1f}**, 4 × 128 "
                    f"**{r['test-bigger']['ppl']:.1f}**."),
         Expect(57.8, 5.0), Expect(732.4, 70.0), digits=1),
    Rung("char-transformer", "the auxiliary losses make a deep character transformer train "
         "(Al-Rfou et al. §2.1, Table 5)", "valid bpc, no aux losses − all three",
         "The 12-layer, 64-wide character transformer on text8-style KJV text, 150 steps of 16 × 64 "
         "characters, with all three auxiliary losses and with none; bits per character on the first 100k "
         "validation characters (non-overlapping windows).",
         char_steps, gap("bpc", "valid-none", "valid-aux"),
         lambda r: (f"Validation bits per character: all auxiliary losses **{r['valid-aux']['bpc']:.4f}**, "
                    f"none **{r['valid-none']['bpc']:.4f}**."),
         Expect(0.351, 0.05), Expect(0.292, 0.05)),
    Rung("music", "relative attention models music better than absolute positions (Music Transformer, "
         "Table 1)", "test NLL/event, absolute − relative",
         "The music model (3 layers of 128, 256-event windows) on Bach chorales, 400 steps of 16 windows "
         "with transposition ±3 and stretch ±5%, with relative attention and without; NLL per event on "
         "the 17 test chorales.",
         music_steps, gap("nll_per_event", "test-rel-false", "test-rel-true"),
         lambda r: (f"Test NLL per event: relative **{r['test-rel-true']['nll_per_event']:.4f}**, absolute "
                    f"**{r['test-rel-false']['nll_per_event']:.4f}**."),
         Expect(0.303, 0.03), Expect(0.0107, 0.01)),
]}
