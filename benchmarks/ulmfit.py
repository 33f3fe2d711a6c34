"""AWD-LSTM language-model training speed: lmlab's `ulmfit` vs fastai's AWD_LSTM, same weights, same shapes.

fastai replaces torch when installed plainly, so this runs in the fastai environment (docs/ulmfit.md:
`.venv-fastai`, torch 2.13 from the local wheel, fastai --no-deps), with lmlab from src/:

    PYTHONPATH=src .venv-fastai/bin/python benchmarks/ulmfit.py [--quick] [--threads N] [--repeats R]

One timed call is one training step of ULMFiT's language model as each library runs it, on a batch
of B contiguous rows of T tokens, the recurrent state carried from the step before (detached), every
dropout of fastai's `awd_lstm_lm_config` on (embedding 0.02, input 0.25, weight 0.2, hidden 0.15,
output 0.1), loss = mean cross-entropy + 2·AR + 1·TAR, then backward and the optimizer step. Each
side uses the optimizer its own trainer makes (as benchmarks/train.py does for HF):

* lmlab: `model(x, state=state, targets=y)` (per-token loss without the (B, T, V) logits, sparse
  embedding gradient on CPU), `lmlab.objectives.awd.ar_tar`, `lmlab.train.optim.make_optimizer`
  (fused AdamW, decay on matrices only);
* fastai: `get_language_model(AWD_LSTM, V, config)`, `model(x)` -> (logits, raw, dropped) with the
  state in `model[0].hidden`, `F.cross_entropy` on the flattened logits, RNNRegularizer's AR/TAR,
  `fastai.optimizer.Adam` (what `Learner`'s default `opt_func` builds; weight decay 0.01 decoupled).
A third run, "fastai + fused AdamW", gives fastai lmlab's optimizer, so the model and loss alone are
compared too.

Both start from the same tensors (lmlab's weights written in fastai's layout by
`lmlab.checkpoints.convert.fastai_awd.fastai_state`); in eval mode their losses on the first batch
must agree within 1e-4. tok/s = B·T / median wall time over interleaved repeats (CPU time too, as
in benchmarks/common.py). A last row times one LSTM layer alone: lmlab.nn.lstm.LSTMP (ELMo's
per-step Python loop) vs lmlab.nn.fused_lstm.DropConnectLSTM (torch's fused kernel), forward +
backward, to show why AWD-LSTM uses the latter.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import lmlab  # noqa: E402
from lmlab.checkpoints.convert.fastai_awd import fastai_state  # noqa: E402
from lmlab.nn.fused_lstm import DropConnectLSTM  # noqa: E402
from lmlab.nn.lstm import LSTMP  # noqa: E402
from lmlab.objectives.awd import ar_tar  # noqa: E402
from lmlab.train.optim import make_optimizer  # noqa: E402

FASTAI_LM = dict(output_p=0.1, hidden_p=0.15, input_p=0.25, embed_p=0.02, weight_p=0.2)
# name -> (vocab, d_model, d_hidden, n_layers, batch, bptt)
CASES = {
    "awd-small": (10000, 200, 600, 3, 32, 70),  # a PTB-sized vocabulary
    "awd-wt103": (60000, 400, 1152, 3, 8, 70),  # the released WT-103 model's shapes (fastai's vocab cap)
}


def build_pair(vocab, d, h, n):
    from fastai.text.all import AWD_LSTM, get_language_model

    torch.manual_seed(0)
    ours = lmlab.build("ulmfit", "small", vocab_size=vocab, d_model=d, d_hidden=h, n_layers=n, dropout=1.0,
                       **FASTAI_LM)
    with torch.no_grad():
        ours.decoder_bias.normal_(0, 0.1)
    config = dict(emb_sz=d, n_hid=h, n_layers=n, pad_token=1, bidir=False, tie_weights=True, out_bias=True,
                  **FASTAI_LM)
    theirs = get_language_model(AWD_LSTM, vocab, config=config)
    theirs.load_state_dict(fastai_state(ours))
    return ours, theirs


def steps(ours, theirs, x, y, fastai_opt: bool = True):
    """One training step per side (closures), each carrying its own state."""
    from fastai.optimizer import Adam

    opt_ours = make_optimizer(ours, 1e-4, 0.01, (0.9, 0.99), "cpu")
    opt_theirs = Adam(list(theirs.parameters()), lr=1e-4, wd=0.01) if fastai_opt else \
        make_optimizer(theirs, 1e-4, 0.01, (0.9, 0.99), "cpu")
    carried = {"state": None}
    theirs.reset()

    def lmlab_step():
        opt_ours.zero_grad(set_to_none=True)
        out = ours(x, state=carried["state"], targets=y)
        carried["state"] = [[t.detach() for t in s] for s in out.state]
        loss = out.nll.mean() + ar_tar(out, 2.0, 1.0)
        loss.backward()
        opt_ours.step()

    def fastai_step():
        opt_theirs.zero_grad()
        logits, raw, dropped = theirs(x)  # fastai keeps (and detaches) the state in model[0].hidden
        loss = F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1))
        tar = (raw[:, 1:] - raw[:, :-1]).float().pow(2).mean()
        loss = loss + 2.0 * dropped.float().pow(2).mean() + 1.0 * tar
        loss.backward()
        opt_theirs.step()

    return {"lmlab": lmlab_step, "hf": fastai_step}  # common.add_speed's names; "hf" is fastai here


def agreement(ours, theirs, x, y) -> dict:
    ours.eval(), theirs.eval()
    theirs.reset()
    with torch.no_grad():
        a = float(ours(x, targets=y).nll.mean())
        logits = theirs(x)[0]
        b = float(F.cross_entropy(logits.view(-1, logits.shape[-1]), y.view(-1)))
    ours.train(), theirs.train()
    return {"lmlab_eval_loss": a, "fastai_eval_loss": b, "losses_equal": abs(a - b) < 1e-4}


def run_case(name: str, repeats: int) -> dict:
    vocab, d, h, n, B, T = CASES[name]
    ours, theirs = build_pair(vocab, d, h, n)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (B, T + 1), generator=g)
    x, y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    row = {"case": name, "vocab": vocab, "d_model": d, "d_hidden": h, "layers": n, "batch": B, "bptt": T,
           **agreement(ours, theirs, x, y)}
    row = _rename(common.add_speed(row, steps(ours, theirs, x, y), repeats, B * T, warmup=1))
    runs = steps(ours, theirs, x, y, fastai_opt=False)
    same = _rename(common.add_speed({}, runs, repeats, B * T, warmup=1))
    row.update({f"{k}_fused_fastai": same[k] for k in ("ratio", "cpu_ratio", "fastai_tok_s")})
    return row


def _rename(row: dict) -> dict:
    """common.add_speed names the peer side "hf": here it is fastai."""
    return {k.replace("hf_", "fastai_"): v for k, v in row.items()}


def layer_case(repeats: int) -> dict:
    torch.manual_seed(0)
    B, T, d, h = 16, 70, 400, 1152
    x = torch.randn(B, T, d, requires_grad=True)
    loop, fused = LSTMP(d, h), DropConnectLSTM(d, h, weight_p=0.2).train()

    def run(layer):
        def step():
            out = layer(x)[0]
            out.pow(2).mean().backward()
        return step

    times = common.interleaved({"lmlab": run(fused), "hf": run(loop)}, repeats, warmup=1, cpu=(cpu := {}))
    fields = _rename(common.speed_fields(times, cpu, B * T))
    return {"case": "one LSTM layer 400->1152, fused (DropConnectLSTM) vs per-step loop (LSTMP)", **fields}


def env() -> dict:
    import fastai

    load = os.getloadavg()
    return {"python": platform.python_version(), "torch": torch.__version__, "fastai": fastai.__version__,
            "lmlab": lmlab.__version__, "cpu": common.cpu_model(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "loadavg_at_start": [round(v, 2) for v in load],
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the small case only, 3 repeats")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--case", choices=list(CASES), help="one case only (no results file)")
    args = parser.parse_args()
    common.set_threads(args.threads)
    info = env()
    repeats = 3 if args.quick else args.repeats
    rows = []
    for name in ([args.case] if args.case else ["awd-small"] if args.quick else list(CASES)):
        common.log(f"ulmfit: {name}")
        rows.append(run_case(name, repeats))
    full = not (args.quick or args.case)
    if full:
        rows.append(layer_case(repeats))
    columns = [("case", "case"), ("lmlab_tok_s", "lmlab tok/s"), ("fastai_tok_s", "fastai tok/s"),
               ("ratio", "ratio"), ("cpu_ratio", "cpu ratio"), ("ratio_fused_fastai", "ratio (fastai fused)"),
               ("cpu_ratio_fused_fastai", "cpu ratio (fastai fused)"), ("losses_equal", "losses equal")]
    print(common.table(rows, columns))
    print(f"torch {info['torch']}, fastai {info['fastai']}, {info['cpu']}, {info['torch_threads']} threads, "
          f"load average at start {info['loadavg_at_start']}")
    if full:
        path = common.RESULTS / "ulmfit.json"
        path.write_text(json.dumps({"env": info, "rows": rows}, indent=2) + "\n")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
