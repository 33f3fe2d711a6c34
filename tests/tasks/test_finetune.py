"""`finetune` end to end on a synthetic task (the label is a token of the text), exact resume,
the checks that stop a run before step 0, the CLI, and the BERT (encoder) path."""

import json

import pytest
import torch

import lmlab
import lmlab.train.state
from lmlab.cli import main
from lmlab.errors import ConfigError, DataError
from lmlab.tasks.finetune import _backbone, evaluate_task, finetune, summary

FAST = dict(lr=3e-3, batch_size=16, device="cpu", progress=False, log_every=1)


def losses(run_dir) -> dict[int, float]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_finetune_gpt2_reaches_high_dev_accuracy(tmp_path, tiny_gpt_dir, task_files):
    out = tmp_path / "ft"
    report = finetune(tiny_gpt_dir, "classify", task_files["train"], task_files["dev"], out, epochs=3, **FAST)
    assert report["dev_metrics"]["accuracy"] > 0.9 and report["steps"] == 3 * (256 // 16)
    assert json.loads((out / "report.json").read_text())["dev_metrics"] == report["dev_metrics"]
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert sum("val_accuracy" in r for r in rows) == 3  # one dev evaluation per epoch
    loss = losses(out)  # L_cls + 0.5·L_LM: the LM part cannot fall far on random filler words
    assert loss[max(loss)] < loss[1] - 0.5 and report["dev_metrics"]["loss"] < 0.2
    model, tok = lmlab.load(out)
    assert type(model).__name__ == "TaskModel" and tok.token_to_id("<start>") is not None
    again = evaluate_task(out, "classify", task_files["dev"])
    assert again["accuracy"] == pytest.approx(report["dev_metrics"]["accuracy"])


def test_lm_coef_zero_also_trains(tmp_path, tiny_gpt_dir, task_files):
    out = tmp_path / "ft0"
    report = finetune(tiny_gpt_dir, "classify", task_files["train"], task_files["dev"], out, epochs=2,
                      lm_coef=0.0, **FAST)
    loss = losses(out)
    first, last = sum(loss[s] for s in (1, 2, 3)) / 3, sum(loss[s] for s in sorted(loss)[-3:]) / 3
    assert last < 0.5 * first and report["lm_coef"] == 0.0


def test_resume_is_exact(tmp_path, tiny_gpt_dir, task_files, monkeypatch):
    args = dict(epochs=1, save_every=4, eval_every=0, **FAST)
    finetune(tiny_gpt_dir, "classify", task_files["train"], task_files["dev"], tmp_path / "a", **args)
    calls = {"n": 0}

    def crash_after_second_commit(stage, step=None):
        if stage == "committed":
            calls["n"] += 1
            if calls["n"] == 2:
                raise KeyboardInterrupt  # "killed" right after step-8 was committed

    monkeypatch.setattr(lmlab.train.state, "_fault", crash_after_second_commit)
    with pytest.raises(KeyboardInterrupt):
        finetune(tiny_gpt_dir, "classify", task_files["train"], task_files["dev"], tmp_path / "b", **args)
    assert max(losses(tmp_path / "b")) == 8
    monkeypatch.undo()
    report = finetune(tiny_gpt_dir, "classify", task_files["train"], task_files["dev"], tmp_path / "b",
                      resume=True, **args)
    assert losses(tmp_path / "b") == losses(tmp_path / "a")  # bitwise, every step
    assert report["dev_metrics"] == json.loads((tmp_path / "a" / "report.json").read_text())["dev_metrics"]


def test_a_new_run_into_a_finished_run_dir_is_refused(tmp_path, tiny_gpt_dir, task_files):
    out = tmp_path / "ft"
    finetune(tiny_gpt_dir, "classify", task_files["train"], task_files["dev"], out, steps=2, **FAST)
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    with pytest.raises(ConfigError, match=r"already holds a run \(checkpoints\); pass --resume"):
        finetune(tiny_gpt_dir, "classify", task_files["train"], task_files["dev"], out, steps=4, **FAST)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before  # nothing touched


def test_zero_steps_are_refused_not_replaced_by_the_epochs(tmp_path, tiny_gpt_dir, task_files):
    """--steps 0 used to run epochs x batches steps."""
    out = tmp_path / "ft"
    with pytest.raises(ConfigError, match="--steps must be a positive integer, got 0"):
        finetune(tiny_gpt_dir, "classify", task_files["train"], task_files["dev"], out, steps=0, **FAST)
    assert not out.exists()


@pytest.mark.parametrize("resume", [False, True])
def test_an_out_that_is_a_file_is_refused(tmp_path, tiny_gpt_dir, task_files, resume):
    out = tmp_path / "afile.txt"
    out.write_text("x")
    with pytest.raises(ConfigError, match="afile.txt exists and is not a directory; --out must be a run dir"):
        finetune(tiny_gpt_dir, "classify", task_files["train"], task_files["dev"], out, steps=2,
                 resume=resume, **FAST)


def test_too_long_text_stops_before_training_unless_truncate(tmp_path, tiny_gpt_dir, task_files):
    out = tmp_path / "long"
    with pytest.raises(DataError, match=r"train\.jsonl:\d+: the input is \d+ tokens.*limit of 6.*--truncate"):
        finetune(tiny_gpt_dir, "classify", task_files["train"], task_files["dev"], out, max_len=6, **FAST)
    assert not (out / "checkpoints").exists()
    report = finetune(tiny_gpt_dir, "classify", task_files["train"], task_files["dev"], out, max_len=6,
                      truncate=True, steps=2, **FAST)
    assert report["steps"] == 2


def test_unseen_dev_label_stops_before_training(tmp_path, tiny_gpt_dir, task_files, jsonl, make_records):
    dev = jsonl(tmp_path / "dev.jsonl", make_records(3, 5) + [{"text": "the cat", "label": "meh"}])
    with pytest.raises(DataError, match=r"dev\.jsonl:4: label 'meh' does not occur in the training data"):
        finetune(tiny_gpt_dir, "classify", task_files["train"], dev, tmp_path / "x", **FAST)


def test_from_scratch_has_random_weights(tiny_gpt_dir):
    pretrained, _, _ = _backbone(tiny_gpt_dir, from_scratch=False, seed=1)
    scratch, _, family = _backbone(tiny_gpt_dir, from_scratch=True, seed=1)  # the fixture used seed 0
    assert family == "gpt2" and scratch.config == pretrained.config
    assert not torch.equal(scratch.blocks[0].attn.c_attn.weight, pretrained.blocks[0].attn.c_attn.weight)


def test_cli_finetune_and_evaluate(tmp_path, tiny_gpt_dir, task_files, capsys, jsonl, make_records):
    d = task_files["dir"]
    pair_train = jsonl(d / "pair_train.jsonl", make_records(64, 2, pair=True))
    pair_dev = jsonl(d / "pair_dev.jsonl", make_records(16, 3, pair=True))
    out = tmp_path / "cli"
    code = main(["finetune", str(tiny_gpt_dir), "--task", "pair", "--train", pair_train, "--dev", pair_dev,
                 "--out", str(out), "--steps", "3", "--batch-size", "8", "--pair-mode", "similarity",
                 "--device", "cpu", "--no-progress"])
    assert code == 0 and "fine-tuned pair for 3 steps" in capsys.readouterr().out
    assert main(["evaluate", str(out), "--task", "pair", "--data", pair_dev]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 16 and {"accuracy", "f1", "mcc"} <= set(result)
    assert main(["evaluate", str(out), "--task", "classify", "--data", pair_dev]) == 2
    assert "fine-tuned for task 'pair'" in capsys.readouterr().err
    assert main(["finetune", str(tiny_gpt_dir), "--task", "classify", "--train", str(d / "missing.jsonl"),
                 "--dev", pair_dev, "--out", str(tmp_path / "y")]) == 2
    assert "missing.jsonl: cannot read" in capsys.readouterr().err


def test_choice_finetune_runs(tmp_path, tiny_gpt_dir, jsonl, make_records):
    rows = []
    for i, r in enumerate(make_records(48, 7)):
        options = ["good red car", "bad blue car"] if i % 2 else ["bad blue car", "good red car", "bad mat"]
        rows.append({"context": r["text"], "choices": options, "label": options.index(r["label"] + (
            " red car" if r["label"] == "good" else " blue car"))})
    data = jsonl(tmp_path / "choice.jsonl", rows)
    report = finetune(tiny_gpt_dir, "choice", data, data, tmp_path / "ch", steps=4, **FAST)
    assert set(report["dev_metrics"]) == {"accuracy", "loss", "n"} and report["n_dev"] == 48


def test_bert_encoder_classify(tmp_path, task_files, make_records):
    wordpiece = pytest.importorskip("lmlab.tokenizers.wordpiece")
    texts = [r["text"] for r in make_records(64, 0)]
    tok = wordpiece.WordPieceTokenizer.train(texts, vocab_size=80)
    torch.manual_seed(0)
    lmlab.save(lmlab.build("bert", "tiny", vocab_size=tok.vocab_size), tok, tmp_path / "bert")
    report = finetune(tmp_path / "bert", "classify", task_files["train"], task_files["dev"], tmp_path / "ft",
                      epochs=3, **FAST)
    assert report["family"] == "bert" and report["dev_metrics"]["accuracy"] > 0.9
    model, _ = lmlab.load(tmp_path / "ft")
    assert model.spec.reader == "pooled_cls" and model.spec.start_id is None


def test_summary_names_the_lm_coef_for_decoders_only():
    report = {"task": "classify", "steps": 10, "n_train": 64, "lm_coef": 0.5, "from_scratch": False,
              "dev_metrics": {"accuracy": 0.75, "loss": 0.5}, "wall_s": 1.0}
    assert "lm_coef 0.5" in summary({**report, "family": "gpt2", "reader": "extract_token"})
    line = summary({**report, "family": "bert", "reader": "pooled_cls", "from_scratch": True})
    assert "lm_coef" not in line and "(64 examples, from scratch): dev accuracy 0.7500" in line
