"""NSP sentence pairs (Devlin et al. 2018, §3.1 and A.2): labels, provenance, lengths, batches, cache."""

import numpy as np
import pytest
import torch

from lmlab.data import pairs
from lmlab.data.masking import IGNORE, MaskingSpec
from lmlab.data.pairs import (
    PairData,
    PairSampler,
    fit_lengths,
    load_pairs,
    make_pair,
    nsp_documents,
    split_sentences,
)
from lmlab.errors import ConfigError, DataError

CLS, SEP, PAD, MASK = 2, 3, 0, 4
SPEC = MaskingSpec(mask_id=MASK, vocab_size=500, never_mask=(0, 2, 3, 4), special_ids=(0, 1, 2, 3, 4))


@pytest.fixture(scope="module")
def data():
    """40 documents of 1-25 sentences of 1-30 tokens (ids 5..499)."""
    rng = np.random.default_rng(0)
    docs = [[rng.integers(5, 500, size=rng.integers(1, 31)).tolist() for _ in range(rng.integers(1, 26))]
            for _ in range(40)]
    return PairData.from_ids(docs)


def sampler(data, **kw):
    args = dict(seq_len=64, batch_size=8, spec=SPEC, cls_id=CLS, sep_id=SEP, pad_id=PAD, seed=0)
    return PairSampler(data, **{**args, **kw})


def gen(i):
    return np.random.default_rng(i)


# --- sentences and documents ----------------------------------------------------------------------
def test_split_sentences_on_lines_and_sentence_ends():
    doc = "First line here.\nIt said hi. Then it left! ok? no.\n\n  last one  "
    assert split_sentences(doc) == ["First line here.", "It said hi.", "Then it left! ok? no.", "last one"]


def test_single_sentence_documents_become_pseudo_documents():
    docs = [f"sentence number {i}" for i in range(200)]  # builtin:ptb: one sentence per document
    grouped = nsp_documents(docs, block=64)
    assert [len(d) for d in grouped] == [64, 64, 64, 8]
    assert [s for d in grouped for s in d] == docs
    assert [len(d) for d in nsp_documents(["a\nb\nc\nd\ne"])] == [2, 2, 1]  # one document: cut in two+
    real = ["a.\nb.", "c.\nd.\ne."]
    assert nsp_documents(real) == [["a.", "b."], ["c.", "d.", "e."]]


def test_nsp_needs_two_documents_and_a_sentence_pair():
    with pytest.raises(DataError, match="two documents"):
        PairData.from_ids([[[5, 6], [7]]])
    with pytest.raises(DataError, match="two documents"):
        PairData.from_ids([[[5]], [[6]], [[7]]])


# --- pairs ------------------------------------------------------------------------------------------
def test_fit_lengths_matches_removing_one_token_at_a_time():
    for la in range(0, 30):
        for lb in range(0, 30):
            for m in (2, 7, 20, 40):
                a, b = la, lb
                while a + b > m:
                    if a > b:
                        a -= 1
                    else:
                        b -= 1
                assert fit_lengths(la, lb, m) == (a, b), (la, lb, m)


def test_nsp_labels_are_half_random_and_pairs_come_from_where_they_say(data):
    n, max_tokens = 4000, 61
    is_random, short = [], []
    for i in range(n):
        p = make_pair(data, max_tokens, gen(i))
        is_random.append(p.is_random_next)
        short.append(p.short)
        assert 1 <= len(p.tokens_a) and 1 <= len(p.tokens_b)
        assert len(p.tokens_a) + len(p.tokens_b) <= max_tokens
        a0, a1 = p.a_span
        b0, b1 = p.b_span
        full_a = data.tokens[data.sent_start[a0] : data.sent_start[a1]]
        full_b = data.tokens[data.sent_start[b0] : data.sent_start[b1]]
        assert _is_slice(p.tokens_a, full_a) and _is_slice(p.tokens_b, full_b)
        doc_a, doc_b = data.sent_doc[a0], data.sent_doc[b0]
        assert data.sent_doc[a1 - 1] == doc_a and data.sent_doc[b1 - 1] == doc_b  # spans stay in a document
        if p.is_random_next:
            assert doc_b != doc_a  # NotNext: from another document
        else:
            assert doc_b == doc_a and b0 == a1  # IsNext: B's first sentence follows A's last
    assert abs(np.mean(is_random) - 0.5) < 0.03
    assert abs(np.mean(short) - 0.1) < 0.02


def _is_slice(part, whole) -> bool:
    part, whole = np.asarray(part), np.asarray(whole)
    return any(np.array_equal(whole[s : s + len(part)], part) for s in range(len(whole) - len(part) + 1))


def test_short_targets_and_truncation_from_both_ends(data):
    fronts = backs = 0
    lengths = []
    for i in range(3000):
        p = make_pair(data, 61, gen(i))
        if p.short:
            assert 2 <= p.target <= 61
        lengths.append(len(p.tokens_a) + len(p.tokens_b))
        a0, a1 = p.a_span
        full = data.tokens[data.sent_start[a0] : data.sent_start[a1]]
        if len(p.tokens_a) < len(full):
            fronts += not np.array_equal(full[: len(p.tokens_a)], p.tokens_a)
            backs += not np.array_equal(full[-len(p.tokens_a) :], p.tokens_a)
    assert fronts > 50 and backs > 50  # truncation takes from the front and from the back
    assert max(lengths) == 61 and np.mean(np.array(lengths) < 40) > 0.05


# --- the sampler --------------------------------------------------------------------------------------
def test_batches_have_bert_layout(data):
    b = sampler(data).batch(0)
    assert set(b) == {"input_ids", "token_type_ids", "attention_mask", "mlm_labels", "nsp_labels"}
    for key in ("input_ids", "token_type_ids", "attention_mask", "mlm_labels"):
        assert b[key].shape == (8, 64) and b[key].dtype == torch.int64
    assert b["nsp_labels"].shape == (8,)
    for r in range(8):
        ids, types, mask = b["input_ids"][r], b["token_type_ids"][r], b["attention_mask"][r]
        n = int(mask.sum())
        assert bool(mask[:n].all()) and not bool(mask[n:].any()) and n <= 64
        assert ids[0] == CLS and ids[n - 1] == SEP and (ids[:n] == SEP).sum() == 2
        assert bool((ids[n:] == PAD).all())
        first_sep = int((ids == SEP).nonzero()[0])
        assert not bool(types[: first_sep + 1].any()) and bool(types[first_sep + 1 : n].all())
        assert not bool(types[n:].any())
        labelled = b["mlm_labels"][r] != IGNORE
        assert 1 <= int(labelled.sum()) and not bool(labelled[n:].any())


def test_batch_k_is_a_pure_function_and_resume_is_exact(data):
    a = sampler(data, seed=3)
    for _ in range(4):
        next(a)
    state = a.state_dict()
    assert all(isinstance(v, (int, str)) for v in state.values())
    expected = [next(a) for _ in range(3)]
    b = sampler(data, seed=99)
    b.load_state_dict(state)
    for x, y in zip(expected, [next(b) for _ in range(3)], strict=True):
        assert all(torch.equal(x[k], y[k]) for k in x)
    assert not torch.equal(a.batch(1)["input_ids"], a.batch(2)["input_ids"])
    with pytest.raises(DataError, match="masking"):
        sampler(data, masking="static").load_state_dict(state)


def test_ranks_slice_one_global_batch(data):
    one = sampler(data, batch_size=6, seed=5).batch(3)
    parts = [sampler(data, batch_size=6, seed=5, rank=r, world_size=3).batch(3) for r in range(3)]
    for key in one:
        assert torch.equal(one[key], torch.cat([p[key] for p in parts]))


def test_static_pool_is_reread_each_epoch_in_a_new_order(data):
    s = sampler(data, masking="static", num_instances=3, dupe_factor=4, batch_size=12)
    keys0 = [s.pair(0, g)[1] for g in range(12)]
    keys1 = [s.pair(1, g)[1] for g in range(12)]
    assert sorted(keys0) == sorted(keys1) == [("static", i, j) for i in range(3) for j in range(4)]
    assert keys0 != keys1
    b0, b1 = s.batch(0), s.batch(1)
    rows0 = {k: b0["input_ids"][g] for g, k in enumerate(keys0)}
    for g, k in enumerate(keys1):  # the same (instance, copy) is the same row at every epoch
        assert torch.equal(b1["input_ids"][g], rows0[k])


def test_bad_options_are_config_errors(data):
    with pytest.raises(ConfigError, match="masking"):
        sampler(data, masking="sometimes")
    with pytest.raises(ConfigError, match="seq_len"):
        sampler(data, seq_len=4)
    with pytest.raises(ConfigError):
        sampler(data, batch_size=6, world_size=4)


# --- the cache ----------------------------------------------------------------------------------------
def test_load_pairs_tokenizes_once_and_rebuilds_damage(tmp_path, monkeypatch):
    from lmlab.tokenizers.wordpiece import WordPieceTokenizer

    corpus = tmp_path / "docs"
    corpus.mkdir()
    for d in range(4):
        (corpus / f"{d}.txt").write_text("".join(f"doc {d} line {i} says hello.\n" for i in range(20)))
    tok = WordPieceTokenizer.train([p.read_text() for p in corpus.iterdir()], vocab_size=120)
    first = load_pairs(str(corpus), "train", tok, tmp_path / "cache")
    assert first.num_documents == 3 and first.num_sentences == 60  # the 4th document is validation

    calls = []
    monkeypatch.setattr(pairs, "read_corpus", lambda *a, **k: calls.append(a) or [])
    again = load_pairs(str(corpus), "train", tok, tmp_path / "cache")
    assert calls == [] and np.array_equal(np.asarray(again.tokens), first.tokens)
    assert np.array_equal(again.sent_start, first.sent_start)
    assert np.array_equal(again.doc_start, first.doc_start)

    index = next((tmp_path / "cache").glob("*.index.bin"))
    index.write_bytes(index.read_bytes()[:-2])  # truncated: rebuilt, not trusted
    monkeypatch.undo()
    rebuilt = load_pairs(str(corpus), "train", tok, tmp_path / "cache")
    assert np.array_equal(rebuilt.sent_start, first.sent_start)
