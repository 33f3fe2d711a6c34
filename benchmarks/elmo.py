"""ELMo feature extraction: tokens/s of lmlab's biLM against torch.nn.LSTM's fused kernel.

    python benchmarks/elmo.py [--quick] [--threads N] [--repeats R] [--batch B] [--words W] [--device D]

Model: the `small` preset (the shapes of the released elmo_2x1024_128_2048cnn_1xhighway: char CNN
with 2048 filters and one highway layer, 2 layers per direction of 1024 cells projected to 128,
cell and projection clips 3, residual on layer 2), without a softmax (features only), random
weights (seed 0), eval mode, no gradient. Input: a batch of B sentences of W words (random
lower-case words of 2-12 letters) framed <S> ... </S>, as character ids prepared once.

Two sides, same weights, one process (timing as benchmarks/common.py: warm-up, then repeats
alternating the sides in flipping order, median):
- lmlab: `model(chars, output_hidden_states=True, with_logits=False)`, what `lmlab.embed` runs per
  batch: the token encoder, both directions' LSTMP stacks (`lmlab.nn.lstm`: a per-step Python loop
  with clipping and per-row padding masks), every layer's features.
- reference: the same token encoder, then per direction two `torch.nn.LSTM(128, 1024, proj_size=128)`
  layers (the fused kernel: no clipping, no per-row masks; the forget bias folded into its bias),
  the residual added between them, the backward direction on the flipped batch (all rows have the
  same length), every layer's features concatenated the same way.
The two give the same features unless a clip binds (checked: max |diff| is reported).
Rows "lstm only" time the same two sides without the token encoder (given the token vectors).

"tok/s" counts every position read (B x (W + 2)) per second. Threads default to 1 (a busy shared
two-core machine). Writes benchmarks/results/elmo.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

import lmlab  # noqa: E402
from lmlab.models.config import config_to_dict  # noqa: E402
from lmlab.nn.lstm import run_reversed  # noqa: E402
from lmlab.tokenizers.word_chars import WordCharTokenizer  # noqa: E402


def build(device: str):
    torch.manual_seed(0)
    return lmlab.build("elmo", "small", vocab_size=0, dropout=0.0).to(device).eval()


def reference_stacks(model) -> list[list[torch.nn.LSTM]]:
    """Per direction, one torch.nn.LSTM(proj_size) per lmlab layer with the same weights."""
    stacks = []
    for stack in (model.forward_lm, model.backward_lm):
        layers = []
        for layer in stack.layers:
            ref = torch.nn.LSTM(layer.input_size, layer.hidden_size, proj_size=layer.proj_size or 0,
                                batch_first=True).to(layer.bias.device)
            H = layer.hidden_size
            with torch.no_grad():
                ref.weight_ih_l0.copy_(layer.weight_ih)
                ref.weight_hh_l0.copy_(layer.weight_hh)
                ref.weight_hr_l0.copy_(layer.weight_hr)
                bias = layer.bias.clone()
                bias[H:2 * H] += layer.forget_bias  # TF's run-time forget bias, folded in
                ref.bias_ih_l0.copy_(bias)
                ref.bias_hh_l0.zero_()
            layers.append(ref.eval())
        stacks.append(layers)
    return stacks


def reference_lstms(stacks, x: torch.Tensor, residual: bool) -> list[torch.Tensor]:
    """Every layer's [forward; backward] features of token vectors x (B, T, D), no padding."""
    per_direction = []
    for d, layers in enumerate(stacks):
        h = x.flip(1) if d else x
        outs = []
        for k, lstm in enumerate(layers):
            y = lstm(h)[0]
            if residual and k > 0:
                y = y + h
            outs.append(y.flip(1) if d else y)
            h = y
        per_direction.append(outs)
    return [torch.cat([x, x], -1)] + [torch.cat(pair, -1) for pair in zip(*per_direction, strict=True)]


def sentences(batch: int, words: int, seed: int = 0) -> list[list[str]]:
    g = torch.Generator().manual_seed(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"

    def word():
        n = int(torch.randint(2, 13, (1,), generator=g))
        return "".join(letters[int(i)] for i in torch.randint(0, 26, (n,), generator=g))

    return [[word() for _ in range(words)] for _ in range(batch)]


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per side (default 5)")
    parser.add_argument("--batch", type=int, default=32, help="sentences per batch (default 32)")
    parser.add_argument("--words", type=int, default=20, help="words per sentence (default 20)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    args = parser.parse_args(argv)
    common.set_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else 5)
    load_average = os.getloadavg()[0]
    start = time.perf_counter()
    device = args.device
    model = build(device)
    stacks = reference_stacks(model)
    tok = WordCharTokenizer([])
    chars = torch.stack([torch.from_numpy(tok.char_ids(s)) for s in sentences(args.batch, args.words)])
    chars = chars.to(device)
    positions = chars.shape[0] * chars.shape[1]
    with torch.no_grad():
        x = model.token_encoder(chars)
        ours = model(chars, output_hidden_states=True, with_logits=False).hidden_states
        theirs = reference_lstms(stacks, x, model.config.residual)
    max_diff = max(float((a - b).abs().max()) for a, b in zip(ours, theirs, strict=True))

    @torch.no_grad()
    def lmlab_embed():
        model(chars, output_hidden_states=True, with_logits=False)
        sync(device)

    @torch.no_grad()
    def reference_embed():
        reference_lstms(stacks, model.token_encoder(chars), model.config.residual)
        sync(device)

    @torch.no_grad()
    def lmlab_lstm():
        lengths = torch.full((x.shape[0],), x.shape[1], device=x.device)
        model.forward_lm(x)
        run_reversed(model.backward_lm, x, lengths)
        sync(device)

    @torch.no_grad()
    def reference_lstm():
        reference_lstms(stacks, x, model.config.residual)
        sync(device)

    common.log(f"elmo small: batch {args.batch} x {args.words} words on {device}, {repeats} repeats")
    rows = []
    for what, runs in (("embed (char CNN + biLSTM)", {"lmlab": lmlab_embed, "reference": reference_embed}),
                       ("lstm only", {"lmlab": lmlab_lstm, "reference": reference_lstm})):
        cpu: dict = {}
        times = common.interleaved(runs, repeats=repeats, warmup=1, cpu=cpu)
        tok_s = {side: positions / common.median(t) for side, t in times.items()}
        rows.append({"case": what, "lmlab_tok_s": tok_s["lmlab"], "reference_tok_s": tok_s["reference"],
                     "ratio": tok_s["lmlab"] / tok_s["reference"],
                     "cpu_time_ratio": common.median(cpu["reference"]) / common.median(cpu["lmlab"]),
                     "lmlab_s": times["lmlab"], "reference_s": times["reference"]})
    env = {"torch": torch.__version__, "cpu": common.cpu_model(), "torch_threads": torch.get_num_threads(),
           "device": torch.cuda.get_device_name(device) if device.startswith("cuda") else "cpu",
           "load_average_at_start": load_average}
    payload = {"env": env, "preset": "small", "config": config_to_dict(model.config),
               "batch": args.batch, "words": args.words, "positions": positions, "repeats": repeats,
               "max_abs_diff": max_diff, "rows": rows, "seconds": round(time.perf_counter() - start, 1)}
    print(f"elmo small (2 x 1024 cells, projection 128), batch {args.batch} x {args.words} words + <S> </S>;"
          f" {env['device']}, {env['torch_threads']} thread(s); features max |diff| {max_diff:.2e}")
    print(common.table(rows, [("case", "case"), ("lmlab_tok_s", "lmlab tok/s"),
                              ("reference_tok_s", "nn.LSTM tok/s"), ("ratio", "lmlab/nn.LSTM"),
                              ("cpu_time_ratio", "CPU-time ratio")]))
    path = common.write_results("elmo", payload)
    print(f"wrote {path} ({payload['seconds']} s)")
    return payload


if __name__ == "__main__":
    main()
