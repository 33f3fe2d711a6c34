"""GPT-2 zero-shot tasks against values computed by hand from a model whose probabilities are known.

BigramLM is a stand-in causal LM: the next-token log-probabilities depend only on the current
token (a fixed V x V table), so every score below is a sum of table entries. It has the small
surface `lmlab.generate` needs (config, parameters, init_state, logits_to_keep). A real tiny GPT-2
with a short context checks windowing (texts longer than the context) and batching.
"""

from __future__ import annotations

import json
import math
import re
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lmlab
from fakes import lm_output
from lmlab.cli import main
from lmlab.errors import ConfigError, DataError
from lmlab.eval.scoring import check_causal_lm, score_targets, split_target
from lmlab.eval.text_metrics import bleu, lcs_length, rouge_l, rouge_n, rouge_scores
from lmlab.eval.zeroshot import zeroshot_command
from lmlab.eval.zeroshot_data import (
    Cloze,
    Pair,
    Passage,
    Summary,
    read_cloze,
    read_lambada,
    read_pairs,
    read_summaries,
)
from lmlab.eval.zeroshot_lambada import evaluate_cloze, evaluate_lambada, stop_word_mask
from lmlab.eval.zeroshot_text import evaluate_summarize, evaluate_translate, first_sentences
from lmlab.tokenizers.chars import CharTokenizer
from lmlab.tokenizers.words import WordTokenizer

WORDS = ["<unk>", "<eos>", "the", "cat", "dog", "sat", "ran", "mat", "on", "a", "sat.", "ran.", "=",
         "le", "chat", "chien", "XXXXX"]


class BigramLM(nn.Module):
    """logits[b, t] = table[input_ids[b, t]]: p(next | everything before) = p(next | current)."""

    family = "bigram-test"  # declared by the autouse fixture below

    def __init__(self, table: torch.Tensor, context: int = 64):
        super().__init__()
        self.table = nn.Parameter(table.double(), requires_grad=False)
        self.config = SimpleNamespace(max_seq_len=context, vocab_size=table.shape[0])

    def init_state(self, batch, max_len=None, device=None):
        return SimpleNamespace(length=0)  # a bigram needs no past

    def forward(self, input_ids, attention_mask=None, state=None, logits_to_keep: int = 0, targets=None):
        if state is not None:
            state.length += input_ids.shape[1]
        return lm_output(self.table[input_ids], logits_to_keep, targets, state)


@pytest.fixture(autouse=True)
def bigram_family(register_family):
    register_family(BigramLM.family, BigramLM, state="kv_cache")


def random_table(v: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(v, v, generator=g, dtype=torch.float64).log_softmax(-1)


def chain_table(v: int, nxt: dict[int, int], low: float = -1e9) -> torch.Tensor:
    """A chain: token a is followed by nxt[a] (others by <unk>), with probability 1 for low=-1e9."""
    t = torch.full((v, v), low, dtype=torch.float64)
    for a in range(v):
        t[a, nxt.get(a, 0)] = 0.0
    return t.log_softmax(-1)


@pytest.fixture(scope="module")
def words():
    return WordTokenizer(WORDS)


def w(tok, word):
    return tok.token_to_id(word)


# ---------------------------------------------------------------- lambada


def test_lambada_single_token_accuracy_and_ppl_by_hand(words):
    table = random_table(len(WORDS))
    model = BigramLM(table)
    passages = [Passage("the cat sat on the mat", "f:1"), Passage("a dog ran", "f:2"),
                Passage("the dog sat", "f:3")]
    got = evaluate_lambada(model, words, passages, batch_size=2)
    logps, hits = [], []
    for text in ("the cat sat on the mat", "a dog ran", "the dog sat"):
        prev, last = text.split()[-2:]
        logps.append(float(table[w(words, prev), w(words, last)]))
        hits.append(int(table[w(words, prev)].argmax()) == w(words, last))
    assert got["examples"] == 3 and got["target_tokens"] == 3
    assert got["accuracy"] == pytest.approx(sum(hits) / 3)
    assert got["ppl"] == pytest.approx(math.exp(-sum(logps) / 3), rel=1e-12)
    assert got["word_ppl"] == pytest.approx(got["ppl"], rel=1e-12)


def test_lambada_multi_token_word_needs_every_token(words):
    """Characters: the word 'cat' is three tokens; greedy must reproduce all three."""
    chars = CharTokenizer.train(["the cat sat on a mat dog"])
    c = chars.token_to_id
    nxt = {c(" "): c("c"), c("c"): c("a"), c("a"): c("t")}
    model = BigramLM(chain_table(chars.vocab_size, nxt, low=-3.0))
    # 'cat' is reproduced; 'cas' is not: greedy writes t after a.
    got = evaluate_lambada(model, chars, [Passage("the cat", "f:1"), Passage("the cas", "f:2")])
    assert got["accuracy"] == 0.5
    assert got["target_tokens"] == 6
    table = model.table
    want = sum(float(table[a, b]) for a, b in [(c(" "), c("c")), (c("c"), c("a")), (c("a"), c("t")),
                                                (c(" "), c("c")), (c("c"), c("a")), (c("a"), c("s"))])
    assert got["ppl"] == pytest.approx(math.exp(-want / 6), rel=1e-9)
    assert got["word_ppl"] == pytest.approx(math.exp(-want / 2), rel=1e-9)


def test_stop_word_filter_skips_function_words(words):
    table = random_table(len(WORDS), seed=3)
    table[w(words, "on")] = -20.0
    table[w(words, "on"), w(words, "the")] = -0.1  # the top prediction after "on" is a stop word
    table[w(words, "on"), w(words, "mat")] = -1.0  # ... and the best non-stop word is the target
    model = BigramLM(table.log_softmax(-1))
    table = model.table
    passages = [Passage("the cat sat on mat", "f:1")]
    assert evaluate_lambada(model, words, passages)["accuracy"] == 0.0
    filtered = evaluate_lambada(model, words, passages, stop_word_filter=True)
    assert filtered["accuracy"] == 1.0 and filtered["stop_word_filter"] is True
    # log-probabilities (so ppl) are not filtered
    assert filtered["ppl"] == pytest.approx(math.exp(-float(table[w(words, "on"), w(words, "mat")])))
    mask = stop_word_mask(words, len(WORDS))
    assert mask[w(words, "the")] and mask[w(words, "a")] and mask[w(words, "on")]
    assert not mask[w(words, "cat")] and not mask[w(words, "mat")]
    with pytest.raises(ConfigError, match="character"):
        evaluate_lambada(model, CharTokenizer.train(["ab"]), [Passage("a b", "f:1")], stop_word_filter=True)


def test_split_target_spells_the_word_as_in_context(words):
    from lmlab.tokenizers.byte_bpe import ByteBPETokenizer

    bpe = ByteBPETokenizer.train(["the cat sat on the mat " * 20], vocab_size=300)
    text = "the cat sat on the mat"
    ctx, tgt = split_target(bpe, text, text.rindex("mat"))
    assert ctx + tgt == bpe.encode(text) and bpe.decode(tgt) == " mat"
    ctx, tgt = split_target(words, text, text.rindex("mat"))
    assert tgt == [w(words, "mat")] and ctx == words.encode("the cat sat on the")
    chars = CharTokenizer.train([text])
    ctx, tgt = split_target(chars, text, text.rindex("mat"))
    assert chars.decode(tgt) == "mat" and chars.decode(ctx) == "the cat sat on the "


@pytest.fixture(scope="module")
def short_gpt(words):
    torch.manual_seed(0)
    return lmlab.build("gpt2", "tiny", vocab_size=len(WORDS), max_seq_len=8).eval()


def test_context_longer_than_the_model_keeps_the_tail(words, short_gpt):
    text = "the cat sat on the mat the dog ran on a mat the cat sat on the dog"  # 18 words, context 8
    got = evaluate_lambada(short_gpt, words, [Passage(text, "f:1")])
    ids = words.encode(text)
    with torch.no_grad():
        logits = short_gpt(torch.tensor([ids[:-1][-8:]])).logits[0, -1]
    want = -F.cross_entropy(logits[None].double(), torch.tensor([ids[-1]]))
    assert got["ppl"] == pytest.approx(math.exp(-float(want)), rel=1e-5)
    assert got["accuracy"] == float(int(logits.argmax()) == ids[-1])


def test_target_longer_than_the_context_is_scored_in_chunks(short_gpt):
    """A 13-token target with an 8-token context: chunks of 4 targets, each row holding the 8
    tokens before its chunk's last target."""
    ctx = [2, 3, 4, 5, 6]
    tgt = [7, 8, 9, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]
    full = ctx + tgt
    got = score_targets(short_gpt, [(ctx, tgt), (ctx[:2], tgt[:3])], batch_size=3)[0].logprobs
    want = []
    with torch.no_grad():
        for j in range(len(ctx), len(full)):
            k = (j - len(ctx)) // 4
            b = min(len(ctx) + (k + 1) * 4, len(full))
            lo = max(0, b - 1 - 8)
            logits = short_gpt(torch.tensor([full[lo:b - 1]])).logits[0, j - 1 - lo]
            want.append(float(logits.double().log_softmax(-1)[full[j]]))
    assert torch.allclose(got, torch.tensor(want, dtype=torch.float64), atol=1e-5)


def test_batching_does_not_change_scores(short_gpt):
    pairs = [([2, 3], [4]), ([2, 3, 4, 5, 6, 7], [8, 9]), ([5], [6, 7, 8]), ([3] * 12, [4])]
    one = score_targets(short_gpt, pairs, batch_size=1)
    many = score_targets(short_gpt, pairs, batch_size=4)
    for a, b in zip(one, many, strict=True):
        assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5) and a.greedy == b.greedy


# ---------------------------------------------------------------- cloze


def test_cloze_scores_choice_and_rest_of_sentence(words):
    table = random_table(len(WORDS), seed=5)
    model = BigramLM(table)
    items = [Cloze("the cat sat on a mat", "the XXXXX ran on the mat", ("dog", "cat", "mat"), "dog", "f:1"),
             Cloze("a dog ran", "XXXXX sat on a mat", ("the", "a"), "a", "f:2")]
    got = evaluate_cloze(model, words, items, batch_size=2)

    def score(context, question, cand):
        seq = (context + " " + question.replace("XXXXX", cand)).split()
        start = len(context.split()) + question.split().index("XXXXX")
        return sum(float(table[w(words, seq[i - 1]), w(words, seq[i])]) for i in range(start, len(seq)))

    hits = 0
    for item in items:
        scores = [score(item.context, item.question, c) for c in item.candidates]
        hits += item.candidates[scores.index(max(scores))] == item.answer
    assert got["accuracy"] == hits / 2 and got["candidates"] == 2.5


def test_cbt_plain_format_matches_jsonl(tmp_path, words):
    context = [f"the cat sat on a mat {i}" for i in range(1, 21)]
    cbt = "".join(f"{i} {s}\n" for i, s in enumerate(context, 1))
    cbt += "21 the XXXXX ran\tdog\t\tcat|dog|mat\n\n"
    cbt += "".join(f"{i} {s}\n" for i, s in enumerate(context, 1)) + "21 XXXXX sat\tcat\t\tcat|dog\n"
    (tmp_path / "cbt.txt").write_text(cbt)
    items = read_cloze(tmp_path / "cbt.txt")
    assert [i.answer for i in items] == ["dog", "cat"] and items[0].candidates == ("cat", "dog", "mat")
    assert items[0].context == " ".join(context) and items[1].where == f"{tmp_path / 'cbt.txt'}:43"
    rows = [{"context": context, "question": "the XXXXX ran", "candidates": ["cat", "dog", "mat"],
             "answer": "dog"}, {"context": " ".join(context), "question": "XXXXX sat",
                                "candidates": ["cat", "dog"], "answer": "cat"}]
    (tmp_path / "cbt.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    model = BigramLM(random_table(len(WORDS), seed=2))
    from_jsonl = read_cloze(tmp_path / "cbt.jsonl")
    assert evaluate_cloze(model, words, items) == evaluate_cloze(model, words, from_jsonl)


# ---------------------------------------------------------------- summarize and translate


def test_summarize_takes_three_sentences_and_scores_rouge(words):
    from rouge_score import rouge_scorer

    i = words.token_to_id
    # prompt "... \nTL;DR:" ends in <eos> <unk>; then the chain writes four sentences.
    chain = {i("<unk>"): i("the"), i("the"): i("cat"), i("cat"): i("sat."), i("sat."): i("a"),
             i("a"): i("dog"), i("dog"): i("ran."), i("ran."): i("the")}
    model = BigramLM(chain_table(len(WORDS), chain), context=64)
    items = [Summary("the mat on the mat", "the cat sat on the mat.", "f:1"),
             Summary("a dog", "a dog ran.", "f:2")]
    got = evaluate_summarize(model, words, items, max_new_tokens=20, top_k=2)
    pred = "the cat sat. a dog ran. the cat sat."
    assert got["samples"][0]["prediction"] == pred
    oracle = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    for key in ("rouge1", "rouge2", "rougeL"):
        want = sum(oracle.score(it.summary, pred)[key].fmeasure for it in items) / 2
        assert got[key] == pytest.approx(want, rel=1e-12)


def test_first_sentences():
    assert first_sentences(" One. Two!  Three? Four.", 3) == "One. Two! Three?"
    assert first_sentences("a\nb c.\n\nd", 2) == "a b c."
    assert first_sentences("", 3) == ""


def test_translate_greedy_until_newline_and_bleu(words):
    import sacrebleu

    i = words.token_to_id
    chain = {i("="): i("le"), i("le"): i("chat"), i("chat"): i("<eos>"), i("<eos>"): i("le")}
    model = BigramLM(chain_table(len(WORDS), chain))
    pairs = [Pair("the cat", "le chat", "f:1"), Pair("the dog", "le chien", "f:2")]
    got = evaluate_translate(model, words, pairs, [Pair("a cat", "le chat", "c:1")], max_new_tokens=10)
    assert [s["prediction"] for s in got["samples"]] == ["le chat", "le chat"]
    want = sacrebleu.corpus_bleu(["le chat"] * 2, [["le chat", "le chien"]]).score
    assert got["bleu"] == pytest.approx(want)
    assert got["shots"] == 1


# ---------------------------------------------------------------- metrics against the oracles


ROUGE_CASES = [("the cat sat", "the cat ran"), ("The cat, the cat!", "the CAT sat on the cat"),
               ("", "a b"), ("a b", ""), ("x y z", "a b c"), ("a b a b a", "b a b"),
               ("police killed the gunman", "the gunman police killed"),
               ("It's 3 o'clock: time-to-go (now).", "its 3 oclock time to go now"),
               ("one two three four five six", "six five four three two one two")]


@pytest.mark.parametrize("pred,ref", ROUGE_CASES)
def test_rouge_equals_rouge_score(pred, ref):
    from rouge_score import rouge_scorer

    oracle = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False).score(ref, pred)
    for mine, key in ((rouge_n(pred, ref, 1), "rouge1"), (rouge_n(pred, ref, 2), "rouge2"),
                      (rouge_l(pred, ref), "rougeL")):
        o = oracle[key]
        assert (mine["precision"], mine["recall"], mine["fmeasure"]) == pytest.approx(
            (o.precision, o.recall, o.fmeasure), abs=1e-12)


def test_rouge_by_hand():
    assert rouge_n("the cat sat", "the cat ran", 1)["fmeasure"] == pytest.approx(2 / 3)
    assert rouge_n("the cat sat", "the cat ran", 2)["fmeasure"] == pytest.approx(1 / 2)
    assert rouge_l("the cat sat", "the cat ran")["fmeasure"] == pytest.approx(2 / 3)
    assert lcs_length("abcbdab", "bdcaba") == 4
    mean = rouge_scores(["the cat sat", "x"], ["the cat ran", "x"])
    assert mean["rouge1"] == pytest.approx((2 / 3 + 1) / 2) and mean["rouge2"] == pytest.approx(0.25)


def test_bleu_equals_sacrebleu():
    import sacrebleu

    hyps = ["the cat sat on the mat", "a dog ran", "hello there general kenobi"]
    refs = ["the cat sat on a mat", "the dog ran away", "hello there general kenobi"]
    assert bleu(hyps, refs) == sacrebleu.corpus_bleu(hyps, [refs]).score
    with pytest.raises(ConfigError):
        bleu(["a"], [])


# ---------------------------------------------------------------- bad input


def bad(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("name,text,reader,line,what", [
    ("l.jsonl", '{"text": "a b"}\n{"txt": "a b"}\n', read_lambada, 2, "missing field 'text'"),
    ("l.jsonl", '{"text": "a b"}\n{"text": "   "}\n', read_lambada, 2, "blank"),
    ("l.txt", "the cat sat\n\nthe dog ran\n", read_lambada, 2, "blank passage"),
    ("l.txt", "the cat sat\nword\n", read_lambada, 2, "context before its final word"),
    ("l.jsonl", '{"text": "a b"}\nnot json\n', read_lambada, 2, "not valid JSON"),
    ("c.jsonl", '{"context": "a", "question": "XXXXX b", "candidates": [], "answer": "a"}\n',
     read_cloze, 1, "empty candidate list"),
    ("c.jsonl", '{"question": "XXXXX b", "candidates": ["a"], "answer": "a"}\n', read_cloze, 1,
     "missing field 'context'"),
    ("c.jsonl", '{"context": "a", "question": "b", "candidates": ["a"], "answer": "a"}\n', read_cloze, 1,
     "no XXXXX"),
    ("c.jsonl", '{"context": "a", "question": "XXXXX", "candidates": ["b"], "answer": "a"}\n', read_cloze,
     1, "not among the candidates"),
    ("c.txt", "1 a b\n2 c d\n3 XXXXX e\tb\t\t\n", read_cloze, 3, "empty candidate list"),
    ("c.txt", "1 a b\nnot numbered\n", read_cloze, 2, "numbered line"),
    ("s.jsonl", '{"article": "a b", "summary": "a"}\n\n{"article": "a b"}\n', read_summaries, 3,
     "missing field 'summary'"),
    ("t.tsv", "a\tb\nno tab here\n", read_pairs, 2, "source<TAB>target"),
    ("t.tsv", "a\tb\n \tb\n", read_pairs, 2, "blank source"),
])
def test_bad_input_names_file_and_line(tmp_path, name, text, reader, line, what):
    path = bad(tmp_path, name, text)
    with pytest.raises(DataError, match=re.escape(f"{path}:{line}") + ".*" + re.escape(what)):
        reader(path)


def test_missing_and_misaligned_files(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_lambada(tmp_path / "nope.txt")
    src, ref = bad(tmp_path, "en.txt", "a\nb\n"), bad(tmp_path, "fr.txt", "a\n")
    with pytest.raises(DataError, match="aligned"):
        read_pairs(src, ref)
    assert [p.target for p in read_pairs(src, bad(tmp_path, "fr2.txt", "x\ny\n"))] == ["x", "y"]


def test_task_models_and_encoders_are_refused():
    from lmlab.models.heads import TaskSpec, build_task_model

    spec = TaskSpec("classify", labels=("a", "b"), reader="pooled_cls")
    task = build_task_model(lmlab.build("bert", "tiny"), spec)
    with pytest.raises(ConfigError, match="fine-tuned"):
        check_causal_lm(task, "d")
    with pytest.raises(ConfigError, match="bert model"):
        check_causal_lm(lmlab.build("bert", "tiny"), "d")


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def gpt_dir(tiny_model_dir, words):
    return tiny_model_dir("gpt2", words, vocab_size=len(WORDS), max_seq_len=16)


def test_cli_runs_every_task(tmp_path, gpt_dir, capsys):
    long = " ".join(["the cat sat on the mat"] * 6)  # 36 words > context 16
    lam = bad(tmp_path, "lambada.txt", f"{long}\nthe dog ran on a mat\n")
    cloze = bad(tmp_path, "cloze.jsonl", json.dumps({"context": long, "question": "the XXXXX sat",
                                                     "candidates": ["cat", "dog"], "answer": "cat"}) + "\n")
    summ = bad(tmp_path, "summ.jsonl", json.dumps({"article": long, "summary": "the cat sat"}) + "\n")
    tsv = bad(tmp_path, "t.tsv", "the cat\tle chat\nthe dog\tle chien\na cat\tle chat\n")
    runs = [("lambada", lam, ["--stop-word-filter"]), ("cloze", cloze, []),
            ("summarize", summ, ["--max-new-tokens", "8"]), ("translate", tsv, ["--shots", "1"])]
    for task, data, extra in runs:
        assert main(["evaluate", str(gpt_dir), "--task", task, "--data", str(data), *extra]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["task"] == task
        assert result["examples"] == {"lambada": 2, "cloze": 1, "summarize": 1, "translate": 2}[task]
    assert 0 <= result["bleu"] <= 100


def test_cli_bad_file_is_one_line_error(tmp_path, gpt_dir, capsys):
    record = {"context": "a", "question": "XXXXX", "candidates": [], "answer": "a"}
    data = bad(tmp_path, "c.jsonl", json.dumps(record) + "\n")
    assert main(["evaluate", str(gpt_dir), "--task", "cloze", "--data", str(data)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and f"{data}:1" in err and "empty candidate list" in err


def test_command_translate_context_file_and_all_used_as_context(tmp_path, gpt_dir):
    tsv = bad(tmp_path, "t.tsv", "the cat\tle chat\n")
    with pytest.raises(DataError, match="none is left"):
        zeroshot_command(gpt_dir, "translate", str(tsv), shots=1, progress=False)
    ctx = bad(tmp_path, "ctx.tsv", "a dog\tle chien\n")
    got = zeroshot_command(gpt_dir, "translate", str(tsv), shots=3, context_file=str(ctx), progress=False)
    assert got["examples"] == 1 and got["shots"] == 1


def test_evaluate_task_routes_zero_shot_tasks(tmp_path, gpt_dir):
    from lmlab.tasks.finetune import evaluate_task

    data = bad(tmp_path, "l.jsonl", json.dumps({"text": "the cat sat on the mat"}) + "\n")
    got = evaluate_task(gpt_dir, "lambada", str(data))
    assert got["task"] == "lambada" and got["examples"] == 1
