"""Goldens from fastai itself (v2, `fastai.text`): an AWD-LSTM language model and the text rules.

Runs ONLY in the separate fastai environment (a plain `pip install fastai` would replace torch with
another build; docs/ulmfit.md says how .venv-fastai is made):

    PYTHONPATH=src .venv-fastai/bin/python tests/oracles/make_ulmfit_goldens.py

Writes tests/oracles/ulmfit/:
- `lm.pth`: the state dict of a small fastai `get_language_model(AWD_LSTM, ...)` (the layout of the
  published WT-103 model: `0.encoder.weight`, `0.encoder_dp.emb.weight`, `0.rnns.{i}.weight_hh_l0_raw`,
  `0.rnns.{i}.module.{weight_ih_l0,bias_ih_l0,bias_hh_l0}`, `1.decoder.{weight,bias}`), saved by
  torch.save as fastai's `learn.save` does, with seeded N(0, 0.3) weights everywhere (biases too:
  a mis-mapped tensor cannot hide behind the default zero decoder bias);
- `itos.pkl`: its vocabulary, pickled as fastai pickles `vocab` (a list of strings);
- `goldens.safetensors`: `ids.0`, `ids.1` (B, T0) and (B, T1) and, in eval mode, after `model.reset()`,
  `logits.s`, `raw.s` (the last layer's output) for call s = 0, 1: the second call continues the
  hidden state fastai keeps in `self.hidden` after the first;
- `rules.json`: fastai's default rules (`defaults.text_proc_rules`) then a split on spaces
  (`TokenizeWithRules(BaseTokenizer())`), on hand-written texts that exercise every rule (tokens in
  full) and on the first 2,000 train snippets of builtin:rotten-tomatoes (sha256 of the tokens joined
  by spaces, so no corpus text is committed).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import sys
from pathlib import Path

import torch
from fastai.text.all import AWD_LSTM, get_language_model
from fastai.text.core import BaseTokenizer, TokenizeWithRules, defaults
from safetensors.torch import save_file

OUT = Path(__file__).resolve().parent / "ulmfit"
CONFIG = dict(emb_sz=16, n_hid=24, n_layers=3, pad_token=1, bidir=False, output_p=0.1, hidden_p=0.15,
              input_p=0.25, embed_p=0.02, weight_p=0.2, tie_weights=True, out_bias=True)
WORDS = "the a film movie is not good bad funny , . ' s and of to it this that with".split()
TEXTS = [
    "This movie is GREAT!!! I loved it so so so much.",
    "The Film... was   ok   &amp; funny #39;s  <br />second line",
    "WOW. Such a BIG surprise : coooool / amazing #1 hit",
    "Mixed CASE words: McDonald iPhone NASA-approved U.S.A. e-mail",
    "<unk> token and 123 numbers @-@ hyphen @.@ dot quot;quoted quot;",
    "no no no no repeated words and !!!! marks",
]


def build_model(vocab_size: int):
    torch.manual_seed(0)
    model = get_language_model(AWD_LSTM, vocab_size, config=dict(CONFIG))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def write_lm() -> None:
    vocab = list(defaults.text_spec_tok) + WORDS + [f"xxfake{i}" for i in range(40 - 9 - len(WORDS))]
    model = build_model(len(vocab))
    torch.save(model.state_dict(), OUT / "lm.pth")
    with open(OUT / "itos.pkl", "wb") as f:
        pickle.dump(vocab, f)
    g = torch.Generator().manual_seed(1)
    ids = [torch.randint(0, len(vocab), (2, n), generator=g) for n in (7, 5)]
    out = {}
    model.reset()
    with torch.no_grad():
        for s, x in enumerate(ids):
            logits, raw, _ = model(x)
            out.update({f"ids.{s}": x, f"logits.{s}": logits.contiguous(), f"raw.{s}": raw.contiguous()})
    save_file(out, str(OUT / "goldens.safetensors"))


def fastai_tokens(texts: list[str]) -> list[list[str]]:
    return [list(t) for t in TokenizeWithRules(BaseTokenizer())(texts)]


def write_rules() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))
    from lmlab.data.corpora import read_task_data

    snippets = [r["text"] for r in read_task_data("builtin:rotten-tomatoes", "train")[:2000]]
    hashes = [hashlib.sha256(" ".join(toks).encode()).hexdigest()[:16] for toks in fastai_tokens(snippets)]
    golden = {"rules": [f.__name__ for f in defaults.text_proc_rules],
              "texts": [{"text": t, "tokens": toks}
                        for t, toks in zip(TEXTS, fastai_tokens(TEXTS), strict=True)],
              "rotten_tomatoes_train_first": len(snippets), "rotten_tomatoes_sha256_16": hashes}
    (OUT / "rules.json").write_text(json.dumps(golden, indent=0, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    OUT.mkdir(exist_ok=True)
    write_lm()
    write_rules()
    print(f"wrote {', '.join(sorted(p.name for p in OUT.iterdir()))} into {OUT}")
