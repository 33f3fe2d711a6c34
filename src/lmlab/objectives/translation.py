"""The translation objective of CoVe's MT-LSTM (McCann et al. 2017, §3): maximise the log likelihood of
the target sentence given the source, p(w^z | w^x) = Π_t p(w_t^z | w_<t^z, H(w^x)) (eq. 5), with the
decoder teacher-forced on `<bos> y` and scored on `y <eos>`.

Batches are (source ids, source mask, decoder input, targets) from `lmlab.data.parallel`; the loss is
the mean NLL over the scored target words (padding is -100), per-token `nll` from the model.
"""

from __future__ import annotations

import torch

from lmlab.objectives.clm_state import mean_nll


def translation_loss(model, batch) -> torch.Tensor:
    source, mask, decoder_input, targets = batch
    out = model(source, attention_mask=mask, decoder_input_ids=decoder_input, targets=targets)
    return mean_nll(out.nll, targets)
