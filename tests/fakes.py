"""Small stand-ins for lmlab models in tests: what a causal LM returns under the forward contract.

(tests/ is on sys.path: pytest puts the folder of the top conftest.py there.)
"""

import torch


def lm_output(logits, logits_to_keep: int = 0, targets=None, state=None):
    """What an lmlab causal LM returns for `logits` (B, T, V) under the forward contract: the kept
    positions' logits, or with `targets` their per-token NLL (B, T) instead (-100: 0)."""
    from lmlab.models.output import CausalLMOutput

    kept = logits[:, -logits_to_keep:] if logits_to_keep else logits
    if targets is None:
        return CausalLMOutput(logits=kept, state=state)
    nll = torch.nn.functional.cross_entropy(kept.flatten(0, 1).double(), targets.flatten(), reduction="none")
    return CausalLMOutput(nll=nll.view(targets.shape), state=state)
