"""Greedy and beam search for sequence-to-sequence models (lmlab.generate.beam): beam size 1 is greedy;
a beam as wide as every hypothesis finds the best length-normalised sequence of an exhaustive
search; a batch decodes each sentence as it would alone; the length normalisation is Wu et al.'s.
A tiny CoVe and a toy seq2seq model (a random bigram table per source: peaked enough that the best
sequence is often not greedy's) are decoded."""

import pytest
import torch

import lmlab
from lmlab.errors import GenerationError
from lmlab.generate.beam import beam_search, greedy, length_norm
from lmlab.models.output import Seq2SeqOutput

BOS, EOS, V = 2, 3, 6


def tiny():
    torch.manual_seed(0)
    model = lmlab.build("cove", "tiny", vocab_size=V, dropout=0.0).eval()
    with torch.no_grad():  # sharper next-word distributions: the best path differs from greedy's
        model.decoder.out.weight.mul_(8)
    return model


def source(lengths=(4, 2, 3), seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    S = max(lengths)
    mask = (torch.arange(S)[None, :] < torch.tensor(lengths)[:, None]).long()
    return torch.randint(1, 64, (len(lengths), S), generator=g) * mask, mask


class Bigram(torch.nn.Module):
    """Next-word logits table[k, previous word], k = the source's first id mod 4; state [k (B,)]."""

    def __init__(self, config=None):
        super().__init__()
        self.table = torch.randn(4, V, V, generator=torch.Generator().manual_seed(4)) * 1.5

    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, state=None):
        if state is None:
            state = [input_ids[:, 0] % 4]
        out = Seq2SeqOutput(state=state)
        if input_ids is not None:
            out.hidden = torch.zeros(*input_ids.shape, 1)
        if decoder_input_ids is not None:
            out.logits = self.table[state[0][:, None], decoder_input_ids]  # (B, T, V)
        return out


@pytest.fixture
def bigram(register_family):
    model = Bigram()
    model.family = register_family("bigram-seq2seq", Bigram, kind="seq2seq", state="rnn")
    return model


@torch.no_grad()
def exhaustive(model, src, mask, max_len: int, alpha: float) -> list[int]:
    """The best of: y <eos> with |y| < max_len words, and y of max_len words (cut at the limit),
    each scored by its summed log-probability / lp(number of scored words); a depth-first walk over
    every prefix, the decoder stepped through its state."""
    best = [float("-inf"), None]

    def walk(state, prefix: list[int], last: int, score: float):
        out = model(decoder_input_ids=torch.tensor([[last]]), state=state)
        logp = out.logits[0, -1].log_softmax(-1)
        if len(prefix) < max_len:  # y <eos>
            s = (score + float(logp[EOS])) / length_norm(len(prefix) + 1, alpha)
            if s > best[0]:
                best[:] = [s, list(prefix)]
        for w in range(V):
            if w == EOS:
                continue
            total = score + float(logp[w])
            if len(prefix) + 1 == max_len:  # cut at the limit
                s = total / length_norm(max_len, alpha)
                if s > best[0]:
                    best[:] = [s, prefix + [w]]
            else:
                walk(out.state, prefix + [w], w, total)

    walk(model(src, attention_mask=mask).state, [], BOS, 0.0)
    return best[1]


@pytest.mark.parametrize("which", ["cove", "bigram"])
def test_beam_size_1_is_greedy(request, which):
    model = tiny() if which == "cove" else request.getfixturevalue("bigram")
    src, mask = source()
    assert beam_search(model, src, mask, beam_size=1, bos=BOS, eos=EOS, max_len=8) == \
        greedy(model, src, mask, bos=BOS, eos=EOS, max_len=8)


@pytest.mark.parametrize("alpha", [0.0, 1.0])
@pytest.mark.parametrize("which", ["cove", "bigram"])
def test_a_beam_over_every_hypothesis_finds_the_exhaustive_best(request, which, alpha):
    model = tiny() if which == "cove" else request.getfixturevalue("bigram")
    src, mask = (torch.arange(4)[:, None].repeat(1, 2), torch.ones(4, 2, dtype=torch.long)) \
        if which == "bigram" else source()
    L = 4
    found = beam_search(model, src, mask, beam_size=V ** L, bos=BOS, eos=EOS, max_len=L, length_penalty=alpha)
    best = [exhaustive(model, src[r:r + 1, :int(mask[r].sum())], mask[r:r + 1, :int(mask[r].sum())], L, alpha)
            for r in range(src.shape[0])]
    assert found == best
    if which == "bigram":  # the search matters here: greedy misses the best sequence somewhere
        assert greedy(model, src, mask, bos=BOS, eos=EOS, max_len=L) != best


@pytest.mark.parametrize("k", [1, 3])
def test_a_batch_decodes_each_sentence_as_alone(k):
    model = tiny()
    src, mask = source()
    batch = beam_search(model, src, mask, beam_size=k, bos=BOS, eos=EOS, max_len=6)
    for r in range(src.shape[0]):
        n = int(mask[r].sum())
        alone = beam_search(model, src[r:r + 1, :n], None, beam_size=k, bos=BOS, eos=EOS, max_len=6)
        assert batch[r] == alone[0]


def test_greedy_takes_the_argmax_word_by_word():
    model = tiny()
    src, mask = source((3,))
    out = greedy(model, src, mask, bos=BOS, eos=EOS, max_len=5)[0]
    words = [BOS]
    with torch.no_grad():
        for _ in range(5):
            logits = model(src, attention_mask=mask, decoder_input_ids=torch.tensor([words])).logits
            w = int(logits[0, -1].argmax())
            if w == EOS:
                break
            words.append(w)
    assert out == words[1:]


def test_length_norm_and_bad_settings():
    assert length_norm(1, 1.0) == 1.0 and length_norm(7, 0.5) == pytest.approx(2 ** 0.5)
    assert length_norm(9, 0.0) == 1.0
    model = tiny()
    src, mask = source((2,))
    with pytest.raises(GenerationError, match="beam size"):
        beam_search(model, src, mask, beam_size=0)
    with pytest.raises(GenerationError, match="length_penalty"):
        beam_search(model, src, mask, length_penalty=-1.0)


@pytest.mark.parametrize("k", [1, 3])
def test_positions_are_the_attention_argmax_and_unk_becomes_that_source_word(k):
    """The position given with each word is where the teacher-forced attention peaks when that word is
    read out; `replace_unk` writes each <unk> as the source word there."""
    from lmlab.generate.beam import translations
    from lmlab.tokenizers.parallel_words import SOURCE_SPECIALS, TARGET_SPECIALS, ParallelWordTokenizer

    torch.manual_seed(0)
    model = lmlab.build("cove", "tiny", dropout=0.0).eval()  # 64 target words
    with torch.no_grad():
        model.decoder.out.bias[1] = 4.0  # <unk> often
    words = [f"w{i}" for i in range(20)]
    tok = ParallelWordTokenizer([*SOURCE_SPECIALS, *words], [*TARGET_SPECIALS, *(f"t{i}" for i in range(60))])
    sentence = "w3 w7 Unseen w1 w12"
    src = torch.tensor([tok.encode_source(sentence)])
    ids, at = (greedy(model, src, None, bos=BOS, eos=EOS, max_len=8, positions=True) if k == 1 else
               beam_search(model, src, None, beam_size=k, bos=BOS, eos=EOS, max_len=8, positions=True))
    assert 1 in ids[0], "the test wants an <unk> in the translation"
    with torch.no_grad():
        attention = model(src, decoder_input_ids=torch.tensor([[BOS, *ids[0][:-1]]])).attention[0]
    assert at[0] == attention.argmax(-1).tolist()
    plain, replaced = translations(model, tok, [sentence], beam_size=k, max_len=8)[0]
    source_words = sentence.split()
    expect = [source_words[p] if i == 1 else tok.id_to_token(i) for i, p in zip(ids[0], at[0], strict=True)]
    assert replaced == " ".join(expect) and plain == " ".join(tok.id_to_token(i) for i in ids[0])
