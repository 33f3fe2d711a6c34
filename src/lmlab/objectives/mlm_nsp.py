"""BERT's pretraining objective (Devlin et al. 2018, §3.1): masked LM + next sentence prediction.

The batches come masked (lmlab.data.masking, lmlab.data.pairs). Loss (§3.1, A.2): the mean
cross-entropy over the masked positions plus the mean NSP cross-entropy over the pairs (label 0 =
IsNext, 1 = NotNext, HF's convention). The model scores its MLM targets itself (`nll` per token,
the V-wide output layer run only at the masked positions, as the paper's code does with
`masked_lm_positions`: it dominates the cost of a small model).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from lmlab.nn.lm_loss import IGNORE_INDEX, labelled_positions


def mlm_nsp_forward(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(MLM logits (B, P, V), MLM targets (B, P) with IGNORE_INDEX fill, NSP logits (B, 2), NSP labels
    (B,))."""
    labels = batch["mlm_labels"]
    positions = labelled_positions(labels)  # (B, P)
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"], mlm_positions=positions)
    return out.logits.float(), labels.gather(1, positions), out.nsp_logits.float(), batch["nsp_labels"]


def mlm_nsp_loss(model, batch: dict) -> torch.Tensor:
    """Mean MLM cross-entropy over the masked positions + mean NSP cross-entropy (§3.1)."""
    labels = batch["mlm_labels"]
    out = model(batch["input_ids"], attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"], targets=labels)
    mlm = out.nll.sum() / (labels != IGNORE_INDEX).sum().clamp(min=1)
    return mlm + F.cross_entropy(out.nsp_logits.float(), batch["nsp_labels"])


METRIC_SUMS = ("mlm_loss", "mlm_correct", "mlm_count", "nsp_loss", "nsp_correct", "nsp_count")


@torch.no_grad()
def mlm_nsp_sums(model, batch: dict) -> torch.Tensor:
    """float64 sums in METRIC_SUMS order, to add over batches (and ranks) before dividing."""
    logits, targets, nsp_logits, nsp_labels = mlm_nsp_forward(model, batch)
    flat, y = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    keep = y != IGNORE_INDEX
    mlm = F.cross_entropy(flat[keep], y[keep], reduction="sum")
    nsp = F.cross_entropy(nsp_logits, nsp_labels, reduction="sum")
    values = [mlm, (flat[keep].argmax(-1) == y[keep]).sum(), keep.sum(),
              nsp, (nsp_logits.argmax(-1) == nsp_labels).sum(), torch.tensor(nsp_labels.numel())]
    return torch.stack([torch.as_tensor(v, device=logits.device).double() for v in values])


def metrics_from_sums(sums: torch.Tensor) -> dict[str, float]:
    """{"loss", "mlm_loss", "nsp_loss", "mlm_acc", "nsp_acc"} from summed METRIC_SUMS."""
    s = dict(zip(METRIC_SUMS, sums.tolist(), strict=True))
    mlm_n, nsp_n = max(s["mlm_count"], 1.0), max(s["nsp_count"], 1.0)
    mlm, nsp = s["mlm_loss"] / mlm_n, s["nsp_loss"] / nsp_n
    return {"loss": mlm + nsp, "mlm_loss": mlm, "nsp_loss": nsp,
            "mlm_acc": s["mlm_correct"] / mlm_n, "nsp_acc": s["nsp_correct"] / nsp_n}
