"""The report of `lmlab zoo --run`: a markdown table (results.md) and PNG charts of what results.json
holds: language-model quality per metric, the downstream score, parameters and training speed."""

from __future__ import annotations

from pathlib import Path

from lmlab.checkpoints.atomic import write_bytes_atomic

TABLE = "results.md"
CHARTS = ("lm_quality.png", "transfer.png", "speed.png")
HIGHER_IS_BETTER = {"BLEU"}  # the other LM measures are perplexities, bits or nats


def _score(row: dict) -> tuple[str, float] | None:
    """The downstream headline: accuracy when the task reports it, else its first metric."""
    transfer = row.get("transfer")
    if not transfer:
        return None
    metrics = {k: v for k, v in transfer["dev_metrics"].items() if isinstance(v, (int, float))}
    for key in ("accuracy", "val_accuracy"):
        if key in metrics:
            return key.removeprefix("val_"), metrics[key]
    return next(iter(metrics.items()), None)


def markdown(results: dict) -> str:
    s = results["settings"]
    lines = [f"`lmlab zoo --run --budget-minutes {s['budget_minutes']:g}`: each family's `tiny` preset, "
             f"pretrained with its own recipe for an equal share of the budget, then measured.", "",
             "| family | paper | corpus | parameters | pretrain steps | train tokens/s | LM quality | "
             "downstream (dev) | wall s |", "|---|---|---|---|---|---|---|---|---|"]
    for name, row in results["families"].items():
        lm = row["lm"]
        score = _score(row)
        downstream = "-" if score is None else (f"{score[0]} {score[1]:.3f} ({row['transfer']['task']}, "
                                                f"{row['transfer']['steps']} steps)")
        quality = "-" if lm is None else f"{lm['metric']} {lm['value']:.3f} ({lm['split']})"
        speed = "-" if row["train_tokens_per_s"] is None else f"{row['train_tokens_per_s']:,.0f}"
        lines.append(f"| {name} | {row['paper']} | {row['corpus'] or '-'} | {row['parameters']:,} | "
                     f"{row['steps']} | {speed} | {quality} | "
                     f"{downstream} | {row['wall_s']:.0f} |")
    return "\n".join(lines) + "\n"


def _bars(ax, names: list[str], values: list[float], title: str, fmt: str = "{:.3g}") -> None:
    bars = ax.bar(range(len(names)), values, color="#4c72b0")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_title(title, fontsize=10)
    for bar, value in zip(bars, values, strict=True):
        ax.annotate(fmt.format(value), (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center", va="bottom", fontsize=8)


def _charts(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["families"]
    by_metric: dict[str, list[tuple[str, float]]] = {}
    for name, row in rows.items():
        if row["lm"] is not None:
            by_metric.setdefault(row["lm"]["metric"], []).append((name, row["lm"]["value"]))
    panels = max(1, len(by_metric))
    fig, axes = plt.subplots(1, panels, figsize=(4 * panels, 3.6), squeeze=False)
    for ax, (metric, pairs) in zip(axes[0], by_metric.items(), strict=False):
        better = "higher" if metric in HIGHER_IS_BETTER else "lower"
        _bars(ax, [n for n, _ in pairs], [v for _, v in pairs], f"{metric} ({better} is better)")
    fig.tight_layout()
    fig.savefig(out / CHARTS[0], dpi=110)
    plt.close(fig)

    scored = [(name, _score(row)) for name, row in rows.items() if _score(row) is not None]
    fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(scored) + 2), 3.6))
    _bars(ax, [n for n, _ in scored], [s[1] for _, s in scored], "downstream dev score", "{:.3f}")
    fig.tight_layout()
    fig.savefig(out / CHARTS[1], dpi=110)
    plt.close(fig)

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    names = list(rows)
    _bars(axes[0], names, [rows[n]["parameters"] for n in names], "parameters")
    timed = [n for n in names if rows[n]["train_tokens_per_s"] is not None]
    _bars(axes[1], timed, [rows[n]["train_tokens_per_s"] for n in timed], "pretraining tokens/s")
    fig.tight_layout()
    fig.savefig(out / CHARTS[2], dpi=110)
    plt.close(fig)


def write_report(results: dict, out: Path) -> None:
    write_bytes_atomic(out / TABLE, markdown(results).encode())
    if results["families"]:
        _charts(results, out)
