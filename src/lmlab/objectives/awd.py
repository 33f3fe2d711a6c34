"""AWD-LSTM's training objective (Merity et al. 2017, §4.6), as ULMFiT pretrains and fine-tunes its
language model: next-token loss over contiguous streams with the recurrent state carried from step
to step (lmlab.objectives.clm_state), plus activation regularisation (AR) and temporal activation
regularisation (TAR) of the last LSTM layer:

    loss = mean NLL + α · mean(m ⊙ h_t)² + β · mean(h_t - h_{t-1})²

where h is the last layer's output (`out.hidden`) and m ⊙ h the same after the output dropout
(`out.hidden_dropped`): AR keeps the activations small, TAR keeps them from jumping between steps.
α = 2, β = 1 are AWD-LSTM's and fastai's defaults. Means are over every element (fastai's
`RNNRegularizer`, Merity's code). Used in training only: evaluation scores the NLL alone.
"""

from __future__ import annotations

import torch

from lmlab.objectives.clm_state import CarriedStateCLM, mean_nll


def ar_tar(out, alpha: float, beta: float) -> torch.Tensor:
    """α·AR + β·TAR of a model output with `hidden` (B, T, D) and `hidden_dropped`."""
    loss = out.hidden.new_zeros((), dtype=torch.float32)
    if alpha:
        loss = loss + alpha * out.hidden_dropped.float().pow(2).mean()
    if beta and out.hidden.shape[1] > 1:
        h = out.hidden.float()
        loss = loss + beta * (h[:, 1:] - h[:, :-1]).pow(2).mean()
    return loss


class AWDObjective(CarriedStateCLM):
    """objective(model, (x, y), rows) -> mean NLL + α·AR + β·TAR, the state of those rows carried."""

    def __init__(self, ar_alpha: float = 2.0, tar_beta: float = 1.0):
        super().__init__()
        self.alpha, self.beta = float(ar_alpha), float(tar_beta)

    def __call__(self, model, batch, rows: slice) -> torch.Tensor:
        x, y = batch
        out = model(x, state=self.state_of(rows), targets=y)
        self.keep(rows, out.state)
        return mean_nll(out.nll, y) + ar_tar(out, self.alpha, self.beta)
