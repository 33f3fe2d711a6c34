"""SQuAD QA: the reader and its offset check, windows and the max-context rule, the answer round
trip through WordPiece offsets, post-processing by hand, and fine-tuning a tiny BERT end to end."""

from __future__ import annotations

import json
import random

import pytest
import torch

import lmlab
from lmlab.errors import ConfigError, DataError
from lmlab.models.heads import QAHead, TaskOutput, TaskSpec
from lmlab.tasks import qa
from lmlab.tokenizers.chars import CharTokenizer
from lmlab.tokenizers.wordpiece import WordPieceTokenizer

FILLER = "the cat sat on a mat and ran to big red house with small blue car".split()
TITLES, NAMES = ["doctor", "professor", "captain"], ["alpha", "beta", "gamma", "delta", "omega"]


def squad(paragraphs, version="v1.1") -> dict:
    return {"version": version, "data": [{"title": "t", "paragraphs": paragraphs}]}


def test_reader_v11_v20_and_offsets(tmp_path):
    data = squad([{"context": "Paris is in France.", "qas": [
        {"id": "a", "question": "Where?", "answers": [{"text": "France", "answer_start": 12}]},
        {"id": "b", "question": "What?", "answers": [], "is_impossible": True}]}])
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data))
    examples, raw, version = qa.read_squad(path)
    assert version == "v2.0" and raw == data  # is_impossible makes it v2.0 whatever "version" says
    assert [(e.qid, e.answers, e.impossible) for e in examples] == [("a", [("France", 12)], False),
                                                                     ("b", [], True)]
    v11 = squad([{"context": "abc", "qas": [{"id": "x", "question": "?", "answers": [
        {"text": "b", "answer_start": 1}]}]}])
    assert qa.read_squad(v11)[2] == "v1.1" and qa.read(str(path), "train", {})[0].qid == "a"


def test_answer_not_at_its_offset_names_the_question(tmp_path):
    data = squad([{"context": "Paris is in France.", "qas": [
        {"id": "good", "question": "?", "answers": [{"text": "Paris", "answer_start": 0}]},
        {"id": "q-bad-7", "question": "?", "answers": [{"text": "France", "answer_start": 11}]}]}])
    with pytest.raises(DataError, match=r"question q-bad-7: answer 'France' is not at answer_start 11"):
        qa.read_squad(data)
    context = "Paris is in France."
    for answer, message in [({"text": "France.", "answer_start": -7}, "is not at answer_start -7"),
                            ({"text": "", "answer_start": 0}, "an answer's text is empty"),
                            ({"text": "P", "answer_start": True}, "an int 'answer_start'")]:
        question = {"id": "q", "question": "?", "answers": [answer]}
        with pytest.raises(DataError, match=message):
            qa.read_squad(squad([{"context": context, "qas": [question]}]))
    path = tmp_path / "broken.json"
    path.write_text("{")
    with pytest.raises(DataError, match="broken.json"):
        qa.read_squad(path)
    with pytest.raises(DataError, match="question q1: expected a str field 'question'"):
        qa.parse_squad(squad([{"context": "c", "qas": [{"id": "q1", "answers": []}]}]))
    with pytest.raises(DataError, match="no built-in QA data"):
        qa.read("builtin:squad", "train", {})


# ---------------------------------------------------------------- windows


def test_doc_windows_and_max_context_by_hand():
    spans = qa.doc_windows(20, 10, 4)
    assert spans == [(0, 10), (4, 10), (8, 10), (12, 8)]  # the last window reaches the end
    best = qa.best_windows(spans, 20)
    # token 9: min(left, right) + 0.01·length is 0.1 / 4.1 / 1.1 in windows 0 / 1 / 2
    assert best[9] == 1 and best[2] == 0 and best[8] == 1 and best[12] == 2 and best[19] == 3
    assert qa.best_windows([(0, 5), (0, 5)], 5) == [0] * 5  # a tie goes to the first window
    assert qa.doc_windows(0, 10, 4) == [(0, 0)] and qa.doc_windows(5, 10, 4) == [(0, 5)]


def _wordpiece(texts, size=120):
    return WordPieceTokenizer.train(texts, vocab_size=size)


def _spec(max_len=24, **extra):
    return TaskSpec(name="qa", reader="pooled_cls", max_len=max_len, pad_id=0, extra={**qa.DEFAULTS, **extra})


def test_features_mark_exactly_one_max_context_window():
    context = " ".join(FILLER * 2)
    tok = _wordpiece([context])
    ex = qa.QAExample("q", "what?", context, [])
    feats = qa.featurize([ex], tok, _spec(max_len=16, doc_stride=3, max_query_len=4))
    n_doc = len(tok.encode(context))
    spans = [f.doc_span for f in feats]
    assert len(feats) > 3 and spans == qa.doc_windows(n_doc, spans[0][1], 3)
    best = qa.best_windows(spans, n_doc)
    owners = {}
    for k, f in enumerate(feats):
        head = len(f.input_ids) - f.doc_span[1] - 1  # [CLS] question [SEP]
        assert f.input_ids[0] == tok.cls_token_id
        assert f.input_ids[head - 1] == f.input_ids[-1] == tok.sep_token_id
        assert f.token_type_ids == [0] * head + [1] * (f.doc_span[1] + 1) and len(f.input_ids) <= 16
        for i, flag in enumerate(f.max_context[head:-1]):
            if flag:
                owners.setdefault(f.doc_span[0] + i, []).append(k)
    assert owners == {p: [best[p]] for p in range(n_doc)}  # each token: one window, the best one


def test_answers_round_trip_through_offsets():
    """Every answer inside a window maps back exactly to its text (accents, case, punctuation)."""
    rng = random.Random(0)
    words = FILLER + ["Café", "naïve", "U.S.", "e-mail", "(x)", "2,000", "Zoë's"]
    contexts = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 30))) for _ in range(40)]
    tok = _wordpiece(contexts, size=150)
    examples = []
    for i, context in enumerate(contexts):
        ids, offsets = tok.encode_with_offsets(context)
        a = rng.randrange(len(ids))
        b = min(len(ids) - 1, a + rng.randint(0, 4))
        text = context[offsets[a][0]:offsets[b][1]]
        examples.append(qa.QAExample(f"q{i}", "which words?", context, [(text, offsets[a][0])]))
    feats = qa.featurize(examples, tok, _spec(max_len=20, doc_stride=4, max_query_len=5))
    inside = {}
    for f in feats:
        text, _ = f.example.answers[0]
        if f.start_position:
            got = f.example.context[f.offsets[f.start_position][0]:f.offsets[f.end_position][1]]
            assert got == text and f.start_position <= f.end_position
            inside[f.example.qid] = True
        else:
            assert f.end_position == 0
    # answers of at most 5 tokens always fit one 12-token window
    assert len(inside) == len(examples)
    batch = qa.collate(feats[:3], _spec(max_len=20))
    assert batch["labels"].tolist() == [[f.start_position, f.end_position] for f in feats[:3]]


def test_qa_needs_a_wordpiece_tokenizer_and_room():
    ex = qa.QAExample("q", "what?", "a cat", [])
    with pytest.raises(ConfigError, match="WordPiece"):
        qa.featurize([ex], CharTokenizer.train(["a cat what?"]), _spec())
    with pytest.raises(ConfigError, match="max_len=6 leaves no room"):
        qa.featurize([ex], _wordpiece(["a cat what?"]), _spec(max_len=6))
    with pytest.raises(ConfigError, match="--doc-stride"):
        qa.spec_extra([ex], {"doc_stride": 0})


# ---------------------------------------------------------------- post-processing


def _hand_features():
    ex = qa.QAExample("q1", "?", "aa bb cc dd", [("cc dd", 6)], version="v2.0")
    # window A holds aa bb cc, but cc has more context in window B (cc dd)
    a = qa.QAFeature(ex, [0] * 5, [0] * 5, [None, (0, 2), (3, 5), (6, 8), None],
                     [False, True, True, False, False])
    b = qa.QAFeature(ex, [0] * 4, [0] * 4, [None, (6, 8), (9, 11), None], [False, True, True, False])
    return [a, b]


def test_postprocess_scores_only_max_context_starts():
    feats = _hand_features()
    starts = [[8.0, 0.0, 0.0, 10.0, 0.0], [7.0, 6.0, 0.0, 0.0]]
    ends = [[8.0, 0.0, 0.0, 10.0, 0.0], [7.0, 0.0, 6.0, 0.0]]
    pred, details = qa.postprocess(feats, starts, ends)
    # "cc" in window A would score 20, but A is not where cc has its maximal context
    assert pred == {"q1": "cc dd"} and details["q1"]["nbest"][0] == ("cc dd", 12.0)
    assert all(text != "cc" or score < 20 for text, score in details["q1"]["nbest"])
    # the span limit drops the two-token answer: the best one-token answer is left
    pred, _ = qa.postprocess(feats, starts, ends, max_answer_len=1)
    assert pred == {"q1": "cc"}
    # v2.0: null score = min over windows of start[0] + end[0] = 14; best span 12; diff 2
    pred, details = qa.postprocess(feats, starts, ends, version_2=True, null_threshold=0.0)
    assert pred == {"q1": ""} and details["q1"]["null_score_diff"] == pytest.approx(2.0)
    pred, _ = qa.postprocess(feats, starts, ends, version_2=True, null_threshold=2.5)
    assert pred == {"q1": "cc dd"}


def test_head_masks_padding_and_loss_targets():
    head = QAHead(4)
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    out = head(TaskOutput(hidden=hidden), {"attention_mask": mask})
    assert out.start_logits.shape == (2, 5) and bool((out.end_logits[1, 3:] < -1e30).all())
    labels = torch.tensor([[1, 2], [0, 0]])
    expected = (torch.nn.functional.cross_entropy(out.start_logits, labels[:, 0])
                + torch.nn.functional.cross_entropy(out.end_logits, labels[:, 1])) / 2
    assert qa.loss(out, {"labels": labels}).item() == pytest.approx(expected.item())


# ---------------------------------------------------------------- end to end


def synthetic_squad(n: int, seed: int, v2: bool) -> dict:
    """Contexts of filler words; the answer is the marked "( title name )" span, or none (v2)."""
    rng = random.Random(seed)
    paragraphs = []
    for i in range(n):
        words = [rng.choice(FILLER) for _ in range(rng.randint(5, 40))]
        if v2 and rng.random() < 0.3:
            qas = [{"id": f"q{i}", "question": "who is marked?", "answers": [], "is_impossible": True}]
            paragraphs.append({"context": " ".join(words), "qas": qas})
            continue
        answer = f"{rng.choice(TITLES)} {rng.choice(NAMES)}"
        at = rng.randrange(len(words) + 1)
        before, after = " ".join(words[:at]), " ".join(words[at:])
        context = f"{before} ( {answer} ) {after}".strip()
        start = context.index("( ") + 2
        qas = [{"id": f"q{i}", "question": "who is marked?", "is_impossible": False,
                "answers": [{"text": answer, "answer_start": start}]}]
        paragraphs.append({"context": context, "qas": qas})
    return squad(paragraphs, "v2.0" if v2 else "v1.1")


@pytest.fixture(scope="module")
def qa_setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("qa")
    train, dev = synthetic_squad(400, 0, v2=True), synthetic_squad(80, 1, v2=True)
    (d / "train.json").write_text(json.dumps(train))
    (d / "dev.json").write_text(json.dumps(dev))
    texts = [p["context"] for p in train["data"][0]["paragraphs"]] + ["who is marked?"]
    tok = _wordpiece(texts)
    torch.manual_seed(0)
    lmlab.save(lmlab.build("bert", "tiny", vocab_size=tok.vocab_size), tok, d / "bert")
    return {"train": str(d / "train.json"), "dev": str(d / "dev.json"), "bert": d / "bert"}


QA_FAST = dict(max_len=32, doc_stride=8, max_query_len=8, lr=5e-3, batch_size=32, device="cpu",
               progress=False, log_every=10, eval_every=0, save_every=0)


def test_finetune_tiny_bert_squad_v2(tmp_path, qa_setup):
    from lmlab.tasks.finetune import evaluate_task, finetune

    out = tmp_path / "ft"
    report = finetune(qa_setup["bert"], "qa", qa_setup["train"], qa_setup["dev"], out, steps=150, **QA_FAST)
    m = report["dev_metrics"]
    assert report["n_train"] > 400  # several windows per long context
    assert m["exact_match"] > 90 and m["f1"] > 90 and m["HasAns_total"] + m["NoAns_total"] == m["n"] == 80
    assert m["HasAns_exact_match"] > 85 and m["NoAns_exact_match"] > 85
    model, _ = lmlab.load(out)
    assert model.spec.extra["version_2"] is True and model.spec.extra["doc_stride"] == 8
    again = evaluate_task(out, "qa", qa_setup["dev"])
    assert again["exact_match"] == pytest.approx(m["exact_match"])
    never = evaluate_task(out, "qa", qa_setup["dev"], null_threshold=1e30)  # never answer ""
    assert never["NoAns_exact_match"] == 0.0
    always = evaluate_task(out, "qa", qa_setup["dev"], null_threshold=-1e30)  # always answer ""
    assert always["HasAns_exact_match"] == 0.0 and always["NoAns_exact_match"] == 100.0


def test_cli_finetune_and_evaluate_qa(tmp_path, qa_setup, capsys):
    from lmlab.cli import main

    out = tmp_path / "cli"
    code = main(["finetune", str(qa_setup["bert"]), "--task", "qa", "--train", qa_setup["train"],
                 "--dev", qa_setup["dev"], "--out", str(out), "--steps", "2", "--batch-size", "8",
                 "--max-len", "32", "--doc-stride", "6", "--max-query-len", "4", "--null-threshold", "1.5",
                 "--device", "cpu", "--no-progress"])
    assert code == 0
    model, _ = lmlab.load(out)
    assert model.spec.extra == {"doc_stride": 6, "max_query_len": 4, "null_threshold": 1.5,
                                "version_2": True, "n_best": 20, "max_answer_len": 30}
    capsys.readouterr()
    code = main(["evaluate", str(out), "--task", "qa", "--data", qa_setup["dev"], "--null-threshold", "0"])
    assert code == 0
    assert {"exact_match", "f1", "HasAns_f1", "NoAns_f1", "loss"} <= set(json.loads(capsys.readouterr().out))
