"""ELMo's pretraining objective (Peters et al. 2018, §3.1): jointly maximise the log likelihood of the
forward and the backward language model,

    Σ_k log p(t_k | t_1 .. t_{k-1}; Θ_x, →Θ_LSTM, Θ_s) + log p(t_k | t_{k+1} .. t_N; Θ_x, ←Θ_LSTM, Θ_s)

reported as bilm-tf does, the mean of the two directions' mean NLL (so the loss reads like one LM's).

Batches are (x, y, xb, yb): the forward LM reads the corpus as contiguous streams (x, next tokens y),
the backward LM reads the reversed corpus as streams of its own (xb, its next tokens yb: the
previous words), as bilm-tf trains (`LMDataset(reverse=True)`, unroll_steps = 20, both LSTMs'
final states fed to the next batch). Each direction's state is carried from step to step exactly
as `CarriedStateCLM` carries one (per micro-batch rows, detached, reset when the streams start over,
saved in checkpoints): here the state is the model's [forward, backward] pair.

`sampled_softmax` = S > 0 trains with S sampled candidates instead of the full softmax (bilm-tf:
8,192 over 793k words; `lmlab.nn.sampled_softmax`); evaluation always uses the full softmax.
"""

from __future__ import annotations

import math

import torch

from lmlab.errors import ConfigError
from lmlab.nn.lm_loss import IGNORE_INDEX
from lmlab.objectives.clm_state import CarriedStateCLM, mean_nll


class BiLMObjective(CarriedStateCLM):
    """objective(model, (x, y, xb, yb), rows) -> ½ (forward mean NLL + backward mean NLL)."""

    def __init__(self, sampled_softmax: int = 0):
        super().__init__()
        if type(sampled_softmax) is not int or sampled_softmax < 0:
            raise ConfigError(f"--sampled-softmax must be an integer >= 0 (0 = full softmax), "
                              f"got {sampled_softmax!r}")
        self.sampled_softmax = sampled_softmax

    def __call__(self, model, batch, rows: slice) -> torch.Tensor:
        x, y, xb, yb = batch
        out = model(x, state=self.state_of(rows), targets=y, backward_ids=xb, backward_targets=yb,
                    sampled_softmax=self.sampled_softmax)
        self.keep(rows, out.state)
        return 0.5 * (mean_nll(out.nll, y) + mean_nll(out.nll_backward, yb))


@torch.no_grad()
def bilm_stream_loss(model, batches) -> dict[str, float]:
    """{"loss", "ppl", "forward_loss", "backward_loss", "forward_ppl", "backward_ppl"} over `batches` of
    (x, y, xb, yb) read in order with both states carried (from zeros), full softmax, eval mode."""
    model.eval()
    device = next(model.parameters()).device
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # fwd nll, fwd count, bwd nll, bwd count
    state = None
    for x, y, xb, yb in batches:
        x, y, xb, yb = (t.to(device) for t in (x, y, xb, yb))
        out = model(x, state=state, targets=y, backward_ids=xb, backward_targets=yb)
        state = out.state
        sums += torch.stack([out.nll.double().sum(), (y != IGNORE_INDEX).sum().double(),
                             out.nll_backward.double().sum(), (yb != IGNORE_INDEX).sum().double()])
    fwd, n_fwd, bwd, n_bwd = sums.tolist()
    fwd, bwd = fwd / max(n_fwd, 1.0), bwd / max(n_bwd, 1.0)
    loss = 0.5 * (fwd + bwd)
    ppl = lambda v: math.exp(min(v, 50))  # noqa: E731
    return {"loss": loss, "ppl": ppl(loss), "forward_loss": fwd, "backward_loss": bwd,
            "forward_ppl": ppl(fwd), "backward_ppl": ppl(bwd)}
