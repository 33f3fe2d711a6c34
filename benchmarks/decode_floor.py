"""How fast batch-1 greedy decoding of gpt2-124m can be on this CPU in fp32: the weight-reading floor.

At batch 1 every new token multiplies one vector by every weight matrix of the model: 85M
parameters in the blocks plus the 38.6M of the tied output layer, 494 MB of fp32 read from memory
per token, while the arithmetic is tiny. "floor" times exactly that and nothing else - one
vector-matrix product with each of lmlab's own weight matrices (no attention, layer norm, cache,
sampling or Python around it) - 128 times, the tokens of one generate call. No decoder that keeps
the fp32 weights can beat it; floor / HF is therefore the most any fp32 decoder can gain over HF
`generate()` here, and lmlab / floor how close lmlab comes.

Timed interleaved with lmlab.generate and HF generate (greedy, 32-token prompt, 128 new tokens,
the setup of benchmarks/generate.py, prefill included on both); the medians are reported, with the
memory bandwidth the floor reaches (bytes of the matrices / its time per token).

    python benchmarks/decode_floor.py [--threads N] [--repeats R]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import generate  # noqa: E402

CONFIG = "gpt2-124m"


def weight_reader(model, steps: int):
    """A call doing `steps` times one vector-matrix product per weight matrix of `model`; and the
    bytes those matrices hold. lmlab keeps block weights as (in, out) and the tied output layer as
    (vocab, d_model); the position table is read one row a token, so it is left out."""
    matrices = [p.detach() for name, p in model.named_parameters() if p.ndim == 2 and "wpe" not in name]
    out_layer = model.lm_head.weight.detach()
    blocks = [m for m in matrices if m.data_ptr() != out_layer.data_ptr()]
    inputs = {n: torch.randn(1, n) for n in {m.shape[0] for m in blocks} | {out_layer.shape[1]}}

    @torch.no_grad()
    def run():
        for _ in range(steps):
            for m in blocks:
                torch.mm(inputs[m.shape[0]], m)
            F.linear(inputs[out_layer.shape[1]], out_layer)

    nbytes = sum(m.numel() * m.element_size() for m in blocks) + out_layer.numel() * out_layer.element_size()
    return run, nbytes


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=common.REPEATS,
                        help=f"timed repeats per run (default {common.REPEATS})")
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads)
    env = common.env_info()
    common.log(f"decode_floor: {common.env_line(env)}; {args.repeats} repeats")
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = common.make_hf_dir(CONFIG, Path(tmp))
        models = {side: common.load_side(side, hf_dir).eval() for side in common.SIDES}
    ids = generate.prompt(1)
    runs = {side: generate.make_run(side, models[side], ids) for side in common.SIDES}
    runs["floor"], nbytes = weight_reader(models["lmlab"], generate.NEW_TOKENS)
    same = torch.equal(runs["lmlab"](), runs["hf"]())  # also the warm-up
    runs["floor"]()
    times = common.interleaved(runs, args.repeats, warmup=0)
    tok_s = {name: generate.NEW_TOKENS / common.median(t) for name, t in times.items()}
    row = {"case": f"decode {CONFIG} b1", "threads": threads, "tokens_equal": same,
           "floor_tok_s": tok_s["floor"], "lmlab_tok_s": tok_s["lmlab"], "hf_tok_s": tok_s["hf"],
           "ratio": tok_s["lmlab"] / tok_s["hf"], "floor_hf_ratio": tok_s["floor"] / tok_s["hf"],
           "lmlab_floor_ratio": tok_s["lmlab"] / tok_s["floor"], "weight_mb": nbytes / 1e6,
           "floor_gb_s": nbytes * tok_s["floor"] / 1e9,
           "seconds": {name: [round(x, 4) for x in t] for name, t in times.items()}}
    payload = {"benchmark": "decode_floor", "env": env, "repeats": args.repeats,
               "prompt_len": generate.PROMPT_LEN, "new_tokens": generate.NEW_TOKENS, "rows": [row]}
    path = common.write_results("decode_floor", payload)
    columns = [("case", "case"), ("floor_tok_s", "floor tok/s"), ("lmlab_tok_s", "lmlab tok/s"),
               ("hf_tok_s", "HF tok/s"), ("ratio", "lmlab/HF"), ("floor_hf_ratio", "floor/HF"),
               ("lmlab_floor_ratio", "lmlab/floor"), ("floor_gb_s", "floor GB/s"),
               ("tokens_equal", "same tokens")]
    print(common.table([row], columns))
    common.log(f"wrote {path}")
    return payload


if __name__ == "__main__":
    main()
