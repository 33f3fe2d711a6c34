"""CoVe's translation pretraining end to end, tiny and on CPU: `lmlab pretrain --model cove` on a TSV of
sentence pairs with a GloVe text file as the fixed source vectors learns (falling loss, validation
BLEU above copying the source), a stopped and resumed run logs bitwise the same numbers, and the
model dir evaluates (BLEU, copy baseline), translates (`lmlab generate`, greedy and beam) and gives
features (`lmlab embed`). Bad vectors files are one line naming the row."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import lmlab
from lmlab.cli import main
from lmlab.eval.bleu import corpus_bleu

EN = {"the": "die", "cat": "katze", "dog": "hund", "sees": "sieht", "eats": "frisst", "a": "eine",
      "mouse": "maus", "big": "grosse", "small": "kleine", "red": "rote"}
DIM = 6


def sentence_pairs(n: int, seed: int) -> list[tuple[str, str]]:
    """Word-for-word 'translations' of random sentences: a task the tiny model learns in ~200 steps."""
    rng = np.random.default_rng(seed)
    words = sorted(EN)
    out = []
    for _ in range(n):
        s = [words[i] for i in rng.integers(0, len(words), rng.integers(2, 6))]
        out.append((" ".join(s), " ".join(EN[w] for w in s)))
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cove-data")
    (d / "train.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in sentence_pairs(400, 0)))
    (d / "valid.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in sentence_pairs(24, 1)))
    rng = np.random.default_rng(2)
    rows = [f"{w} " + " ".join(f"{x:.4f}" for x in rng.normal(0, 1, DIM)) for w in sorted(EN)[:-1]]
    (d / "vectors.txt").write_text("\n".join(rows) + "\n")  # "the" has no vector: zeros
    return d


def args(data, out, steps: int, **flags) -> list[str]:
    values = {"model": "cove", "preset": "tiny", "data": data / "train.tsv", "valid": data / "valid.tsv",
              "word_vectors": data / "vectors.txt", "out": out, "steps": steps, "batch_size": 16,
              "seq_len": 12, "lr": 1e-2, "warmup": 5, "log_every": 10, "eval_every": 10, "eval_batches": 2,
              "save_every": 10,
              "bleu_sentences": 24, "set": [f"d_input={DIM}", "dropout=0.0"], **flags}
    out = ["pretrain", "--no-progress"]
    for name, value in values.items():
        for v in value if isinstance(value, list) else [value]:
            flag = "--" + name.replace("_", "-")
            out += [flag, str(v)] if v is not True else [flag]
    return out


def rows(run) -> list[dict]:
    return [{k: v for k, v in json.loads(x).items() if k != "tokens_per_s"}
            for x in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    run = tmp_path_factory.mktemp("cove-run") / "run"
    assert main(args(data, run, 250, eval_every=50, save_every=50)) == 0
    return run


def test_pretraining_learns_the_translation(trained):
    metrics = rows(trained)
    losses = [m["loss"] for m in metrics if "loss" in m]
    evals = [m for m in metrics if "val_loss" in m]
    assert losses[-1] < 0.1 * losses[0]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert evals[-1]["val_bleu"] > 50 and evals[-1]["val_sentences"] == 24
    model, tok = lmlab.load(trained)
    assert model.config.word_vectors == "vectors.txt"  # a file's name, never its path
    assert model.config.source_vocab_size == tok.source_vocab_size
    assert not model.source_vectors[tok.encode_source("the")[0]].any()  # no vector: zeros


def test_a_stopped_and_resumed_run_logs_the_same_numbers(data, tmp_path):
    """Dropout on (its RNG is in the checkpoint), the batch order's state too; a constant schedule, so
    that the first run can stop at step 10 of the same settings."""
    flags = dict(log_every=1, schedule="constant", set=[f"d_input={DIM}", "dropout=0.2"])
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(args(data, full, 20, **flags)) == 0
    assert main(args(data, part, 10, **flags)) == 0
    assert main(args(data, part, 20, **flags) + ["--resume"]) == 0
    assert rows(part) == rows(full)  # JSON floats: bitwise
    want, got = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_evaluate_scores_bleu_against_the_copy_baseline(trained, data, capsys):
    capsys.readouterr()
    assert main(["evaluate", str(trained), "--data", str(data / "train.tsv"), "--split", "valid",
                 "--beam-size", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["beam_size"] == 3 and result["sentences"] == 20  # the last 5% of 400 pairs
    assert result["bleu"] > 50 > result["copy_bleu"]


def test_generate_translates_and_beam_1_is_greedy(trained, data, capsys):
    source, target = sentence_pairs(1, 7)[0]
    outs = []
    for beam in ("1", "4"):
        capsys.readouterr()
        assert main(["generate", str(trained), "--prompt", source, "--beam-size", beam,
                     "--max-new-tokens", "12"]) == 0
        outs.append(capsys.readouterr().out.strip())
    model, tok = lmlab.load(trained)
    from lmlab.generate.beam import translate

    assert translate(model, tok, [source], beam_size=1) == [outs[0]]
    assert corpus_bleu(outs[1:], [target]) > 30


def test_embed_gives_each_encoder_layer(trained, data, tmp_path):
    (tmp_path / "in.txt").write_text("the cat sees a mouse\nbig dog\n")
    assert main(["embed", str(trained), "--input", str(tmp_path / "in.txt"), "--out", str(tmp_path / "e.st"),
                 "--layers", "0,1", "--word-vectors", str(data / "vectors.txt")]) == 0
    arrays = load_file(tmp_path / "e.st")
    model, tok = lmlab.load(trained)
    ids = torch.tensor([tok.encode_source("the cat sees a mouse")])
    with torch.no_grad():
        layers = model(ids, output_hidden_states=True).hidden_states
    for j in (0, 1):  # [GloVe(w); CoVe layer j + 1 (w)], (words, d_input + 2·d_model)
        torch.testing.assert_close(arrays[f"text.0.layer.{j}"][:, :DIM], model.source_vectors[ids[0]])
        torch.testing.assert_close(arrays[f"text.0.layer.{j}"][:, DIM:], layers[j][0], rtol=1e-5, atol=1e-6)
    assert arrays["text.1.layer.1"].shape == (2, DIM + 2 * model.config.d_model)


def test_vectors_rows_of_different_widths_are_named(data, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_text("cat 1 2 3\ndog 1 2\n")
    assert main(args(data, tmp_path / "run", 2, word_vectors=bad)) != 0
    err = capsys.readouterr().err.strip()
    assert err == (f"lmlab pretrain: error: {bad}:2: 2 values after the word, but the first line has 3; "
                   f"every row must have the same width")


def test_validation_bleu_is_not_cut_at_the_training_length(trained, data):
    """--seq-len filters the training pairs; the valid translations still run to their natural length
    (as `lmlab evaluate` decodes), so training on short pairs does not score long sentences truncated."""
    from lmlab.data.parallel import read_parallel
    from lmlab.eval.translation import translation_metrics
    from lmlab.train.config import TrainConfig
    from lmlab.train.distributed import Dist
    from lmlab.train.recipes import TranslationOptions, translation_batches

    model, tok = lmlab.load(trained)
    held = read_parallel(str(data / "train.tsv"), "valid", str(data / "valid.tsv"))[:24]
    assert max(len(p.target.split()) for p in held) > 3
    cfg = TrainConfig(seq_len=3, batch_size=16, eval_batches=2)
    options = TranslationOptions(word_vectors=str(data / "vectors.txt"), bleu_sentences=24)
    _, evaluate = translation_batches(str(data / "train.tsv"), tok, cfg, Dist(), str(data / "valid.tsv"),
                                      options)
    got = evaluate(model)
    full = translation_metrics(model, tok, held, batch_size=16, bleu_sentences=24)
    cut = translation_metrics(model, tok, held, batch_size=16, bleu_sentences=24, max_len=3)
    assert got["bleu"] == full["bleu"] > cut["bleu"] + 10
