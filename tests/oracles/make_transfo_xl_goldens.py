"""Golden Transformer-XL outputs from Hugging Face's TransfoXLLMHeadModel (transformers 4.44.2).

Runs ONLY in the separate oracle environment (Transformer-XL left transformers in v5):

    make oracle      # .venv-oracle: the same torch + transformers==4.44.2
    .venv-oracle/bin/python tests/oracles/make_transfo_xl_goldens.py            # writes the goldens
    .venv-oracle/bin/python tests/oracles/make_transfo_xl_goldens.py run HF_DIR IN OUT [...]

(transfo_xl_compat.py lets 4.44's code run on current torch; see there.)

For each tiny config below, tests/oracles/transfo_xl/<name>/ holds the HF dir (config.json +
weights from save_pretrained: model.safetensors, or pytorch_model.bin where u/v are shared by the
layers, which HF cannot write as safetensors) and goldens.safetensors: `input_ids` (B, 3·T), and per
segment s = 0, 1, 2 (each continuing the memory of the one before, starting from an *empty* memory
as the paper's code does) `logprobs.s` (B, T, V) and `mems.s.l` (M, B, D) for every layer l; plus
`logprobs_zero_mems.0`: the first segment with HF's own default start (mems=None: mem_len zeros).

Weights are N(0, 0.2) everywhere (LayerNorm gains 1 + N(0, 0.2)), seeded, so a mis-mapped tensor
cannot hide behind the tiny default init. `run` mode loads any HF dir (e.g. lmlab.to_hf output),
runs IN's input_ids the same way and writes the per-segment log-probabilities to OUT (for each
triple given, in one process).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402
from safetensors.torch import load_file, save_file  # noqa: E402
from transfo_xl_compat import accept_type_as_dtype  # noqa: E402  (this folder is sys.path[0])
from transformers import TransfoXLConfig, TransfoXLLMHeadModel  # noqa: E402

accept_type_as_dtype()

OUT = Path(__file__).resolve().parent / "transfo_xl"
B, T, SEGMENTS = 2, 5, 3
BASE = dict(d_model=16, d_embed=16, n_head=2, d_head=8, d_inner=32, n_layer=2, mem_len=6, clamp_len=0,
            same_length=False, untie_r=True, pre_lnorm=False, div_val=1, dropout=0.0, dropatt=0.0)
CONFIGS = {
    # plain softmax, per-layer u/v, post-LN; memory (6) shorter than the stream (15)
    "plain": dict(vocab_size=64, cutoffs=[]),
    # adaptive input/softmax, div_val 2, shared u/v, same_length, tied weights and tail projections
    "adaptive": dict(vocab_size=120, cutoffs=[20, 50], div_val=2, untie_r=False, same_length=True),
    # div_val 1 with d_embed != d_model (projections), pre-LN, clamp_len
    "proj": dict(vocab_size=90, cutoffs=[30], d_embed=12, pre_lnorm=True, clamp_len=3, mem_len=4),
    # nothing tied, shared u/v, pre-LN, same_length and clamp_len together
    "untied": dict(vocab_size=80, cutoffs=[10, 40], div_val=2, tie_word_embeddings=False,
                   proj_share_all_but_first=False, untie_r=False, pre_lnorm=True, same_length=True,
                   clamp_len=4, mem_len=7),
}


def build(fields: dict) -> TransfoXLLMHeadModel:
    torch.manual_seed(0)
    model = TransfoXLLMHeadModel(TransfoXLConfig(**{**BASE, **fields}))
    with torch.no_grad():
        for name, p in model.named_parameters():  # shared/tied tensors are listed once
            if "layer_norm.weight" in name:
                p.copy_(1 + 0.2 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    return model.eval()


@torch.no_grad()
def run_segments(model, ids: torch.Tensor) -> dict[str, torch.Tensor]:
    c = model.config
    mems = [torch.zeros(0, ids.shape[0], c.d_model) for _ in range(c.n_layer)]  # empty: the paper's start
    out = {}
    for s in range(SEGMENTS):
        o = model(ids[:, s * T:(s + 1) * T], mems=mems)
        out[f"logprobs.{s}"] = o.prediction_scores.contiguous()
        mems = o.mems
        for layer, m in enumerate(mems):
            out[f"mems.{s}.{layer}"] = m.contiguous()
    return out


def make() -> None:
    OUT.mkdir(exist_ok=True)
    for name, fields in CONFIGS.items():
        model = build(fields)
        directory = OUT / name
        # HF refuses to write u/v shared across layers as safetensors: those dirs get a .bin.
        model.save_pretrained(directory, safe_serialization=model.config.untie_r)
        ids = torch.randint(0, model.config.vocab_size, (B, SEGMENTS * T),
                            generator=torch.Generator().manual_seed(1))
        goldens = {"input_ids": ids, **run_segments(model, ids)}
        with torch.no_grad():
            goldens["logprobs_zero_mems.0"] = model(ids[:, :T]).prediction_scores.contiguous()
        save_file(goldens, str(directory / "goldens.safetensors"))
        # The saved dir must reproduce the model it came from.
        again = TransfoXLLMHeadModel.from_pretrained(directory).eval()
        for key, value in run_segments(again, ids).items():
            torch.testing.assert_close(value, goldens[key], rtol=0, atol=0)
        print(f"{directory}: {sorted(p.name for p in directory.iterdir())}")


def run(hf_dir: str, inputs: str, out: str) -> None:
    model = TransfoXLLMHeadModel.from_pretrained(hf_dir).eval()
    ids = load_file(inputs)["input_ids"]
    result = run_segments(model, ids)
    save_file({k: v for k, v in result.items() if k.startswith("logprobs")}, out)


if __name__ == "__main__":
    if len(sys.argv) >= 5 and sys.argv[1] == "run" and len(sys.argv) % 3 == 2:
        for k in range(2, len(sys.argv), 3):
            run(*sys.argv[k:k + 3])
    elif len(sys.argv) == 1:
        make()
    else:
        sys.exit(__doc__)
