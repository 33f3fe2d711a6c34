"""`lmlab inspect`: per-token loss, predictive entropy and rank of a causal LM on one text.

For tokens x_0 .. x_{N-1} and p_t = p(. | x_<t) (t >= 1):

    loss_t    = -ln p_t(x_t)                          (nats; bits: / ln 2)
    entropy_t = -sum_v p_t(v) ln p_t(v)                (same unit)
    rank_t    = 1 + #{v : p_t(v) > p_t(x_t)}          (1 = the true token was the top prediction)

x_0 has no prediction: its three values are null in the JSON and a blank (white) cell in the
picture. With a seed text (`--seed-text`, the figure's seed of up to 512 characters), the model
reads the seed first, x_0 is predicted from it too, and the seed's own tokens are not shown; only
the seed's last `window` tokens are read (no window reaches further back). Texts longer than the
model's context are scored with sliding windows of the context (stride half a window unless
given), as lmlab.eval.perplexity does: each token is scored in the window where it has the most
context, so the numbers equal `token_losses(..., stride=...)` over seed + text.

The picture follows Al-Rfou et al. 2018, Fig. 6: three heat strips (loss, entropy, rank on a log
colour scale) over the tokens, each with its own colour bar, the token texts under them (spaces
shown as ␣, line breaks as ⏎, tabs as ⇥; a byte-level token that is part of a multi-byte character
shows its bytes as \\xNN). Long texts wrap into several strips of `per_strip` tokens.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from lmlab.checkpoints.atomic import finite_json
from lmlab.errors import ConfigError, DataError, TokenizerError
from lmlab.eval.perplexity import model_device, windows
from lmlab.eval.scoring import check_causal_lm, context_length
from lmlab.options import option
from lmlab.paths import output_file

UNITS = ("nats", "bits")
ESCAPES = {" ": "␣", "\n": "⏎", "\t": "⇥", "\r": "␍"}
MAX_LABEL = 16  # characters of a token label drawn under the strip (the JSON keeps them whole)
ROWS = (("loss", "Reds"), ("entropy", "Blues"), ("rank", "Purples"))


@torch.no_grad()
def token_statistics(model, ids, window: int | None = None, stride: int | None = None) -> dict:
    """{"loss", "entropy", "rank"}: tensors of shape (N - 1,), entry t-1 for token t (nats).

    window defaults to the model's context, stride to window // 2 (sliding windows)."""
    ids = torch.as_tensor(ids).long().reshape(-1)
    if ids.numel() < 2:
        raise DataError(f"need at least 2 tokens to predict one, got {ids.numel()}")
    window = context_length(model) if window is None else window
    if not isinstance(window, int) or not 1 <= window <= context_length(model):
        raise ConfigError(f"window must be in [1, {context_length(model)}], got {window!r}")
    stride = max(1, window // 2) if stride is None else stride
    if not isinstance(stride, int) or not 1 <= stride <= window:
        raise ConfigError(f"stride must be in [1, window={window}], got {stride!r}")
    device = model_device(model)
    ids = ids.to(device)
    out = {"loss": [], "entropy": [], "rank": []}
    was_training = model.training
    model.eval()
    try:
        for start, length, n in windows(ids.numel() - 1, window, stride):
            inputs = ids[None, start:start + length]
            logits = model(inputs, logits_to_keep=n).logits
            logp = logits[0].float().log_softmax(-1)  # (n, V)
            target = ids[start + length - n + 1:start + length + 1]
            true = logp.gather(1, target[:, None])  # (n, 1)
            p = logp.exp()
            out["loss"].append(-true[:, 0])
            out["entropy"].append(-torch.where(p > 0, p * logp, torch.zeros_like(p)).sum(-1))
            out["rank"].append(1 + (logp > true).sum(-1))
    finally:
        model.train(was_training)
    return {k: torch.cat(v).cpu() for k, v in out.items()}


def token_label(tokenizer, token_id: int) -> str:
    """Readable text of one token: decoded alone, whitespace made visible."""
    if tokenizer.kind == "byte_bpe":  # byte-level: a token may hold part of a character
        text = tokenizer.decode_bytes([token_id]).decode("utf-8", errors="backslashreplace")
    else:
        text = tokenizer.decode([token_id])
    return "".join(ESCAPES.get(c, c) for c in text) or "∅"


def inspect_text(model, tokenizer, text: str, unit: str = "nats", window: int | None = None,
                 stride: int | None = None, seed_text: str | None = None) -> dict:
    """JSON-able {"text", "unit", "tokens", "ids", "loss", "entropy", "rank", "mean_loss",
    "window", "stride", "seed_tokens"}; the per-token lists start with null for the first token
    unless a `seed_text` came before it (encoded apart from the text; its last `window` tokens are
    read, `seed_tokens` of them)."""
    if unit not in UNITS:
        raise ConfigError(f"unknown unit {unit!r}; expected nats or bits")
    ids = tokenizer.encode(text)
    window = context_length(model) if window is None else window
    seed = tokenizer.encode(seed_text)[-window:] if seed_text else []
    if len(seed) + len(ids) < 2 or not ids:
        raise DataError(f"the text gives {len(ids)} token(s); at least 2 are needed (the first one "
                        f"has no prediction) or 1 after a seed text")
    stride = max(1, window // 2) if stride is None else stride
    stats = token_statistics(model, seed + ids, window, stride)
    shown = slice(len(seed) - 1, None) if seed else slice(None)  # statistics of the text's tokens
    scale = 1.0 / math.log(2.0) if unit == "bits" else 1.0
    loss = (stats["loss"][shown].double() * scale).tolist()
    first = [] if seed else [None]
    return {"text": text, "unit": unit, "tokens": [token_label(tokenizer, i) for i in ids], "ids": ids,
            "loss": [*first, *loss],
            "entropy": [*first, *(stats["entropy"][shown].double() * scale).tolist()],
            "rank": [*first, *stats["rank"][shown].tolist()],
            "mean_loss": sum(loss) / len(loss), "window": window, "stride": stride,
            "seed_tokens": len(seed)}


def plot_inspection(result: dict, path: str | Path, per_strip: int = 40) -> None:
    """Write the three-row heat strip of `result` (from inspect_text) as a PNG."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.figure import Figure

    if per_strip < 1:
        raise ConfigError(f"per_strip must be >= 1, got {per_strip}")
    n = len(result["tokens"])
    values = {k: np.array([np.nan if v is None else float(v) for v in result[k]]) for k, _ in ROWS}
    norms = {"loss": Normalize(0.0, max(np.nanmax(values["loss"]), 1e-6)),
             "entropy": Normalize(0.0, max(np.nanmax(values["entropy"]), 1e-6)),
             "rank": LogNorm(1.0, max(np.nanmax(values["rank"]), 2.0))}
    labels = [t if len(t) <= MAX_LABEL else t[:MAX_LABEL - 1] + "…" for t in result["tokens"]]
    strips = math.ceil(n / per_strip)
    row_in = 0.32  # inches per heat row; the label row below is as tall as the longest label
    label_rows = (0.25 + 0.08 * max(len(t) for t in labels)) / row_in
    fig = Figure(figsize=(2.5 + 0.26 * min(n, per_strip), 0.8 + strips * (3 + label_rows) * row_in * 1.15))
    grid = fig.add_gridspec(4 * strips, 1, height_ratios=[1, 1, 1, label_rows] * strips, hspace=0.1)
    unit = result["unit"]
    titles = {"loss": f"loss ({unit})", "entropy": f"entropy ({unit})", "rank": "rank"}
    for s in range(strips):
        a, b = s * per_strip, min(n, (s + 1) * per_strip)
        for r, (name, cmap) in enumerate(ROWS):
            ax = fig.add_subplot(grid[4 * s + r, 0])
            image = ax.imshow(values[name][None, a:b], aspect="auto", interpolation="nearest",
                              cmap=colormaps[cmap].with_extremes(bad="white"), norm=norms[name],
                              extent=(a - 0.5, b - 0.5, 0.5, -0.5))
            ax.set_xlim(a - 0.5, a + min(n, per_strip) - 0.5)
            ax.set_yticks([0], [titles[name]], fontsize=8)
            fig.colorbar(image, ax=ax, fraction=0.03, pad=0.01).ax.tick_params(labelsize=6)
            if r < 2:
                ax.set_xticks([])
            else:
                ax.set_xticks(range(a, b), labels[a:b], rotation=90, fontsize=8)
    seeded = result.get("seed_tokens")
    note = f"after a seed of {seeded} tokens" if seeded else "first token: no prediction"
    fig.suptitle(f"per-token loss, entropy and rank; mean loss {result['mean_loss']:.3f} {unit} ({note})",
                 fontsize=10)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", dpi=100, bbox_inches="tight")


@dataclass(frozen=True)
class InspectOptions:
    """`lmlab inspect`: loss, predictive entropy and rank of every token of --text as three heat strips
    (Al-Rfou et al. 2018, Fig. 6); the numbers go to --json."""

    model_dir: str = option(help="an lmlab causal LM dir with its tokenizer", positional=True)
    text: str = option(help="the text to inspect")
    out: str = option(help="PNG file to write")
    json: str | None = option(None, "JSON file for the numbers (default: --out with the suffix .json)")
    bits: bool = option(False, "loss and entropy in bits (default nats)")
    stride: int | None = option(None, "sliding-window stride for texts longer than the context (default: "
                                      "half the context)")
    per_strip: int = option(40, "tokens per heat strip")
    seed_text: str | None = option(None, "text the model reads before --text, not shown (its last context "
                                         "tokens; Al-Rfou et al. seed with 512 characters)")
    device: str = option("auto", "auto, cpu, cuda, cuda:N or mps")


def inspect_command(model_dir: str | Path, text: str, out: str | Path, json_path: str | Path | None = None,
                    unit: str = "nats", stride: int | None = None, per_strip: int = 40,
                    device: str = "auto", seed_text: str | None = None) -> dict:
    """Inspect `text` with the LM in `model_dir`: write the PNG to `out` and the numbers as JSON to
    `json_path` (default: `out` with the suffix .json); returns the JSON dict."""
    from lmlab.checkpoints.io import load

    png = output_file(out, "--out")  # first: a refused --out leaves nothing beside it
    json_path = output_file(Path(out).with_suffix(".json") if json_path is None else json_path, "--json")
    out = png
    model, tokenizer = load(model_dir, device=device)
    check_causal_lm(model, str(model_dir), "inspect")
    if tokenizer is None:
        raise TokenizerError(f"{model_dir} has no tokenizer.json; inspect needs to read the text")
    result = inspect_text(model, tokenizer, text, unit=unit, stride=stride, seed_text=seed_text)
    plot_inspection(result, out, per_strip=per_strip)
    json_path.write_text(finite_json(result, ensure_ascii=False, indent=1), encoding="utf-8")
    return result
