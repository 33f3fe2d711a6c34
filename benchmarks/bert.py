"""BERT encoder forward + backward: lmlab vs Hugging Face BertModel (SDPA), same weights, CPU fp32.

One step = zero_grad, forward of the encoder and pooler (lmlab family "bert", heads="none"; HF
`BertModel` with attn_implementation="sdpa"), loss = mean(hidden**2) + mean(pooled**2), backward.
No optimizer: this measures the encoder itself. The batch is B random token ids of length T with an
all-ones attention mask and all-zero token types, passed to both sides. Dropout is 0 on both.
Before timing, the last hidden states, pooled outputs and losses of one step must agree to 1e-4.
tok/s = B * T / median step time over interleaved repeats (benchmarks/common.py).

The issue's case is batch 16 x 128 on bert-base (12 x 768, 12 heads, d_ff 3072, vocab 30522): one
step is ~1 TFLOP of work, 5-10 s on one core of the machine this was written on; 5 repeats after
the checked step, which is the warm-up (no optimizer state to allocate, unlike train.py).
`--quick` runs a small config (4 x 256) only.

    python benchmarks/bert.py [--quick] [--threads N] [--repeats R]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

import lmlab  # noqa: E402

# name -> transformers.BertConfig fields (names differ from common.CONFIGS' GPT-2 ones on purpose:
# run_all.py shares one model folder between benchmarks).
CONFIGS = {
    "bert-small": dict(num_hidden_layers=4, hidden_size=256, num_attention_heads=4, intermediate_size=1024),
    "bert-base": dict(num_hidden_layers=12, hidden_size=768, num_attention_heads=12, intermediate_size=3072),
}
COMMON = dict(vocab_size=30522, max_position_embeddings=512, type_vocab_size=2,
              hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
CASES = [("bert-small", 16, 128), ("bert-base", 16, 128)]  # (config, batch, seq)
TOLERANCE = 1e-4


def make_bert_dir(name: str, directory: Path) -> Path:
    """A randomly initialised HF BertModel of CONFIGS[name] (with pooler), saved with save_pretrained."""
    return common.save_random_model(directory / name, "BertConfig", "BertModel", {**COMMON, **CONFIGS[name]})


def load_side(side: str, hf_dir: Path):
    if side == "lmlab":
        model, _ = lmlab.from_hf(hf_dir)
        assert model.config.heads == "none" and model.config.pooler, model.config
        return model
    import transformers

    return transformers.BertModel.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="sdpa")


def batch_of(batch: int, seq: int, vocab: int = 30522) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seq + batch)
    ids = torch.randint(1, vocab, (batch, seq), generator=g)  # 1..: no pad id (0) in the batch
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}


def outputs(side: str, model, inputs: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(last hidden state (B, T, D), pooled (B, D)) of either side."""
    out = model(**inputs)
    if side == "lmlab":
        return out.hidden, out.pooled
    return out.last_hidden_state, out.pooler_output


def make_step(side: str, model, inputs: dict):
    """A zero-argument call: one forward + backward; returns (loss, hidden, pooled), detached."""
    model.train()  # dropout is 0, so train mode computes what eval does, plus autograd

    def step():
        model.zero_grad(set_to_none=True)
        hidden, pooled = outputs(side, model, inputs)
        loss = hidden.float().pow(2).mean() + pooled.float().pow(2).mean()
        loss.backward()
        return loss.detach(), hidden.detach(), pooled.detach()
    return step


def memory_setup(side: str, hf_dir: Path, batch: int, seq: int):
    """Run in the memory child: the first step, so the gradients' allocation is included."""
    return make_step(side, load_side(side, hf_dir), batch_of(batch, seq))


def check(first: dict) -> dict:
    (loss_a, hid_a, pool_a), (loss_b, hid_b, pool_b) = first["lmlab"], first["hf"]
    diff = {"hidden_diff": (hid_a - hid_b).abs().max().item(),
            "pooled_diff": (pool_a - pool_b).abs().max().item(),
            "loss_diff": abs(loss_a.item() - loss_b.item())}
    return {**diff, "outputs_equal": max(diff.values()) < TOLERANCE}


def run_case(name: str, batch: int, seq: int, hf_dir: Path, repeats: int, threads: int) -> dict:
    inputs = batch_of(batch, seq)
    models = {side: load_side(side, hf_dir) for side in common.SIDES}
    steps = {side: make_step(side, models[side], inputs) for side in common.SIDES}
    first = {side: steps[side]() for side in common.SIDES}  # same weights, so the same outputs
    row = {"case": f"bert fwd+bwd {name} b{batch}x{seq}", "config": name, "batch": batch, "seq": seq,
           "hf_attention": common.hf_attention(models["hf"]), **check(first)}
    if not row["outputs_equal"]:
        common.log(f"  outputs differ: {row}")
    del first
    tokens = batch * seq
    common.add_speed(row, steps, repeats, tokens)  # the checked step was the warm-up
    del steps, models
    common.add_peak_memory(row, memory_setup, hf_dir, batch, seq, threads=threads)
    return row


COLUMNS = [*common.SPEED_COLUMNS, ("outputs_equal", "same output")]


def main(argv=None, workdir: Path | None = None) -> dict:
    return common.run_side_by_side("bert", __doc__, argv, workdir, CASES, "bert-small", run_case,
                                   make_bert_dir, COLUMNS,
                                   extra={"tolerance": TOLERANCE,
                                          "loss": "mean(hidden**2) + mean(pooled**2)"})


if __name__ == "__main__":
    main()
