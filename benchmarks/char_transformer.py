"""Training speed of the deep character transformer: its auxiliary losses on vs off, and against lmlab's
GPT-2 of the same shape.

    python benchmarks/char_transformer.py [--quick] [--threads N] [--repeats R] [--seq S] [--batch B]

One step = zero_grad, the objective's loss, backward, AdamW step (`lmlab.train.optim.make_optimizer`,
the objective's own classifiers as extra groups, as `lmlab pretrain` does). The model is t12-shaped
(12 layers, width 512, feed-forward 2,048, 8 heads; Al-Rfou et al. 2018's T12) over text8's 29
symbols, with the window shrunk from 512 to --seq (default 128) characters for a CPU; dropout 0.
Cases, timed interleaved (benchmarks/common.py), median of the repeats:

- `aux off`: `CharAuxLoss` with intermediate layers and multiple targets off (every position
  predicts its next character: exactly `clm_loss`);
- `aux on, start`: all three losses at step 0, where every intermediate layer still counts
  (11 extra next-character classifiers and 12 character-after-next ones: the most expensive step);
- `aux on, second half`: all three on after half the training, when only the top layer's
  character-after-next classifier is left;
- `gpt2`: lmlab's GPT-2 with the same shape (one position table at the input, tied output
  layer, GELU) and `clm_loss`.

"The aux losses may cost no more than their extra output layers": `heads only` times the
classifiers' own work alone: the forward and backward of `CharAuxLoss`'s extra terms on stored
hidden states of the same shape (stacking the hidden states, the LayerNorms and matmuls of 23
classifiers, their cross-entropies) and the AdamW step of their parameters. The JSON's
`extra_cost` = (aux on, start) - (aux off), in wall and in CPU seconds, is compared with it
(`extra_over_heads`). On a shared machine compare the CPU seconds (benchmarks/README.md, "Busy
machines"). Threads default to 1. Writes benchmarks/results/char_transformer.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

import lmlab  # noqa: E402
from lmlab.objectives.char_aux import CharAuxLoss  # noqa: E402
from lmlab.objectives.clm import clm_loss  # noqa: E402
from lmlab.train.optim import make_optimizer  # noqa: E402

VOCAB = 29  # text8: a-z, space, <unk>, <eos>
SHAPE = dict(d_model=512, n_layers=12, n_heads=8, d_ff=2048, dropout=0.0)
STEPS = 1000  # the objective's schedule length; the cases pick steps 0 and STEPS // 2


def batch_of(batch: int, seq: int) -> tuple[torch.Tensor, ...]:
    w = torch.randint(0, VOCAB, (batch, seq + 2), generator=torch.Generator().manual_seed(seq))
    return w[:, :seq], w[:, 1:seq + 1], w[:, 2:]


def char_step(seq: int, batch_tensors, step: int | None):
    """One training step of the char transformer; step None = aux off."""
    torch.manual_seed(0)
    model = lmlab.build("char-transformer", "t12", vocab_size=VOCAB, max_seq_len=seq, dropout=0.0).train()
    on = step is not None
    objective = CharAuxLoss.for_model(model.config, STEPS, intermediate=on, multiple_targets=on)
    objective.set_step(step or 0)
    heads = list(objective.module.parameters())
    optimizer = make_optimizer(model, 3e-4, 0.1, (0.9, 0.95), "cpu", extra=heads)

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss = objective(model, batch_tensors)
        loss.backward()
        optimizer.step()
        return loss.item()

    return run


def gpt2_step(seq: int, batch_tensors):
    torch.manual_seed(0)
    model = lmlab.build("gpt2", "tiny", vocab_size=VOCAB, max_seq_len=seq, **SHAPE).train()
    optimizer = make_optimizer(model, 3e-4, 0.1, (0.9, 0.95), "cpu")

    def run():
        optimizer.zero_grad(set_to_none=True)
        loss = clm_loss(model, batch_tensors[:2])
        loss.backward()
        optimizer.step()
        return loss.item()

    return run


def heads_only(seq: int, batch_tensors):
    """The extra terms of the aux loss at step 0 on fixed hidden states: the classifiers' own cost."""
    torch.manual_seed(0)
    model = lmlab.build("char-transformer", "t12", vocab_size=VOCAB, max_seq_len=seq, dropout=0.0)
    objective = CharAuxLoss.for_model(model.config, STEPS)
    optimizer = make_optimizer(torch.nn.Linear(1, 1), 3e-4, 0.1, (0.9, 0.95), "cpu",
                               extra=list(objective.module.parameters()))
    with torch.no_grad():
        states = model(batch_tensors[0], output_hidden_states=True).hidden_states
    leaves = [h.clone().requires_grad_() for h in states]

    class Stored(torch.nn.Module):  # returns the stored states: the network's work is left out
        def forward(self, x, targets, output_hidden_states):
            zero = (leaves[-1][..., 0] * 0).float()
            return type("Out", (), {"nll": zero, "hidden_states": leaves})()

    stored = Stored()

    def run():
        for h in leaves:
            h.grad = None
        optimizer.zero_grad(set_to_none=True)
        parts = objective.parts(stored, batch_tensors)
        sum(v for k, v in parts.items() if k != "next").backward()
        optimizer.step()

    return run


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 repeats")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per case (default 5)")
    parser.add_argument("--seq", type=int, default=128, help="window length (default 128; the paper's 512)")
    parser.add_argument("--batch", type=int, default=4, help="windows per step (default 4)")
    args = parser.parse_args(argv)
    threads = common.set_threads(args.threads)
    repeats = args.repeats or (3 if args.quick else common.REPEATS)
    tensors = batch_of(args.batch, args.seq)
    runs = {"aux off": char_step(args.seq, tensors, None), "aux on, start": char_step(args.seq, tensors, 0),
            "aux on, second half": char_step(args.seq, tensors, STEPS // 2),
            "gpt2": gpt2_step(args.seq, tensors), "heads only": heads_only(args.seq, tensors)}
    cpu: dict[str, list[float]] = {}
    times = common.interleaved(runs, repeats, warmup=2, cpu=cpu)
    tokens = args.batch * args.seq
    rows = []
    for name in runs:
        wall = common.median(times[name])
        rows.append({"case": name, "step_s": wall, "cpu_s": common.median(cpu[name]),
                     "tok_s": tokens / wall if name != "heads only" else None,
                     "times": times[name], "cpu_times": cpu[name]})
    by = {r["case"]: r for r in rows}
    extra = {k: by["aux on, start"][k] - by["aux off"][k] for k in ("step_s", "cpu_s")}
    payload = {"env": common.env_info(), "threads": threads, "repeats": repeats, "batch": args.batch,
               "seq": args.seq, "shape": {**SHAPE, "vocab_size": VOCAB}, "rows": rows,
               "extra_cost": extra, "heads_only": {k: by["heads only"][k] for k in ("step_s", "cpu_s")},
               "extra_over_heads": {k: extra[k] / by["heads only"][k] for k in extra},
               "aux_on_over_off": {k: by["aux on, start"][k] / by["aux off"][k] for k in extra},
               "gpt2_over_aux_off": {k: by["gpt2"][k] / by["aux off"][k] for k in extra}}
    shown = [{"case": r["case"], "step_ms": 1000 * r["step_s"], "cpu_ms": 1000 * r["cpu_s"],
              "tok_s": f"{r['tok_s']:,.0f}" if r["tok_s"] else "-"} for r in rows]
    print(common.table(shown, [("case", "case"), ("step_ms", "ms / step"), ("cpu_ms", "CPU ms"),
                              ("tok_s", "tok/s")]))
    heads = payload["heads_only"]
    print(f"aux on at the start costs {1000 * extra['step_s']:.0f} ms ({1000 * extra['cpu_s']:.0f} CPU ms) "
          f"more than aux off; the classifiers alone {1000 * heads['step_s']:.0f} ms "
          f"({1000 * heads['cpu_s']:.0f} CPU ms)")
    common.write_results("char_transformer", payload)
    return payload


if __name__ == "__main__":
    main()
