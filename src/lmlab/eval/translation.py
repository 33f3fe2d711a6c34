"""Translation quality of a sequence-to-sequence model (CoVe's MT-LSTM, McCann et al. 2017 §3/§5.1):
teacher-forced loss and perplexity of the reference translations, and corpus BLEU of the model's own
translations (greedy or beam search, lmlab.generate.beam) against them, computed as sacrebleu does
(lmlab.eval.bleu); `bleu_replace_unk` scores the same translations with each `<unk>` written as the
source word the attention weighted most (Luong et al. 2015; OpenNMT's -replace_unk).

Hypotheses are the decoded target words joined by spaces (`<unk>` where the vocabulary lacks a word),
references the target sentences as written; BLEU's 13a tokenization treats both alike. The
copy-the-source baseline scores the source sentences themselves as translations: what a model gets
for names, numbers and menu labels that stay the same in both languages.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from lmlab.errors import ConfigError
from lmlab.eval.bleu import corpus_bleu
from lmlab.generate.beam import check_seq2seq, translations
from lmlab.nn.lm_loss import IGNORE_INDEX


@torch.no_grad()
def reference_loss(model, tokenizer, pairs, batch_size: int = 32) -> dict:
    """{"loss", "ppl", "words"}: mean NLL of the target words and `<eos>` given the source."""
    from lmlab.data.parallel import collate

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        encoded = [(tokenizer.encode_source(p.source), tokenizer.encode(p.target)) for p in pairs]
        encoded = [e for e in encoded if e[0]]
        for start in range(0, len(encoded), batch_size):
            src, mask, tgt_in, tgt_out = (t.to(device) for t in
                                          collate(encoded[start:start + batch_size], tokenizer.bos_token_id,
                                                  tokenizer.eos_token_id))
            nll = model(src, attention_mask=mask, decoder_input_ids=tgt_in, targets=tgt_out).nll
            total += float(nll.double().sum())
            count += int((tgt_out != IGNORE_INDEX).sum())
    finally:
        model.train(was_training)
    loss = total / max(count, 1)
    return {"loss": loss, "ppl": math.exp(min(loss, 50)), "words": count}


def translation_metrics(model, tokenizer, pairs, batch_size: int = 32, beam_size: int = 1,
                        length_penalty: float = 1.0, bleu_sentences: int | None = None,
                        max_len: int | None = None) -> dict:
    """{"loss", "ppl", "words", "bleu", "bleu_replace_unk", "sentences"} over `pairs` (BLEU over the
    first `bleu_sentences` of them, all by default; 0 leaves BLEU out). `bleu_replace_unk`: the same
    translations with each `<unk>` written as the source word attended most (lmlab.generate.beam)."""
    check_seq2seq(model)
    out = reference_loss(model, tokenizer, pairs, batch_size)
    scored = pairs if bleu_sentences is None else pairs[:bleu_sentences]
    if scored:
        both = translations(model, tokenizer, [p.source for p in scored], beam_size=beam_size,
                            max_len=max_len, length_penalty=length_penalty, batch_size=batch_size)
        refs = [p.target for p in scored]
        out.update(bleu=corpus_bleu([b[0] for b in both], refs),
                   bleu_replace_unk=corpus_bleu([b[1] for b in both], refs), sentences=len(scored))
    return out


def copy_bleu(pairs) -> float:
    """BLEU of the source sentences taken as their own translations."""
    return corpus_bleu([p.source for p in pairs], [p.target for p in pairs])


def evaluate_translation(model, tokenizer, model_dir: str, data: str, split: str = "test",
                         batch_size: int = 32, beam_size: int = 1, length_penalty: float = 1.0,
                         max_examples: int | None = None) -> dict:
    """`lmlab evaluate SEQ2SEQ_DIR --data PARALLEL --split test`: loss, perplexity, BLEU and the
    copy-the-source BLEU on the split's sentence pairs."""
    from lmlab.data.parallel import read_parallel

    if tokenizer is None:
        raise ConfigError(f"{model_dir}: no tokenizer.json; translation needs the model's vocabularies")
    if split not in ("train", "valid", "test"):
        raise ConfigError(f"translation is scored on a train, valid or test split, not {split!r}")
    pairs = read_parallel(data, split)
    if max_examples is not None:
        pairs = pairs[:max_examples]
    metrics = translation_metrics(model, tokenizer, pairs, batch_size, beam_size, length_penalty)
    return {"model_dir": str(Path(model_dir)), "data": str(data), "split": split, "beam_size": beam_size,
            "length_penalty": length_penalty, **metrics, "copy_bleu": copy_bleu(pairs)}
