"""Next-token cross-entropy straight from the last hidden states, without the (N, V) logits tensor.

The usual path, `F.cross_entropy(hidden @ W.T, targets)`, writes the full logits (N x V: 412 MB
for 2,048 tokens of GPT-2's 50,257-word vocabulary in fp32), a log-softmax of the same size, and
in backward a third one for their gradient. Here the rows go through in chunks: for each chunk the
logits are formed, reduced to a log-sum-exp and the target's logit, and - when a gradient is
wanted - turned at once into the chunk's share of both gradients (softmax - one-hot, times W for
the hidden states, transposed times the hidden states for W). The forward pass therefore does the
backward's two matmuls too, and backward only scales the stored gradients by the incoming scalar.
Same three matmuls as the usual path, one chunk of logits alive at a time.

Targets equal to IGNORE_INDEX (-100, as in torch) are skipped; the loss is their mean over the rest.
"""

from __future__ import annotations

import torch

IGNORE_INDEX = -100
# Logits per chunk. CPU: 32 MB of fp32, so one chunk's softmax passes stay close to the cache. GPU:
# few, large matmuls.
CHUNK_ELEMENTS = {"cpu": 1 << 23, "cuda": 1 << 26}


def chunk_rows(vocab: int, width: int, device: torch.device) -> int:
    """Rows per chunk. Every chunk also reads and writes the whole (V, D) weight gradient once, so
    wide models want more rows: at least D²/512 (measured at 1 thread with GPT-2's vocabulary: best
    chunks ~128 rows at D=256, ~1,024 at D=768 and D=1,024)."""
    return max(1, CHUNK_ELEMENTS.get(device.type, 1 << 26) // vocab, width * width // 512)


def _compute_dtype(t: torch.Tensor) -> torch.dtype:
    """The matmul dtype: autocast's when it is on for t's device (bf16 training), else t's own."""
    if torch.is_autocast_enabled(t.device.type):
        return torch.get_autocast_dtype(t.device.type)
    return t.dtype


def _softmax_nll(hidden, weight, targets, vocab, normalize=True):
    """(softmax (c, V') in fp32 or wider, nll (c,), safe targets (c,), valid (c,)) of one chunk of rows.

    normalize=False leaves exp(l - max) undivided (evaluation needs the nll only).
    Columns >= vocab (a weight padded for faster matmuls) get probability 0. One exp pass over
    the logits, in place: max, exp(l - max), sum, divide; the exp is most of the non-matmul time on
    CPU, so this beats logsumexp followed by a second exp for the gradient.
    """
    logits = hidden @ weight.T
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16 logits: fp32 softmax
    if vocab < logits.shape[1]:
        logits[:, vocab:] = float("-inf")
    valid = targets != IGNORE_INDEX
    safe = torch.where(valid, targets, 0)
    target_logit = logits.gather(1, safe[:, None]).squeeze(1)
    top = logits.amax(dim=-1, keepdim=True)
    probs = logits.sub_(top).exp_()
    total = probs.sum(dim=-1, keepdim=True)
    nll = (top.squeeze(1) + total.log().squeeze(1) - target_logit) * valid
    return (probs.div_(total) if normalize else probs), nll, safe, valid


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab):
        dtype = _compute_dtype(hidden)
        h_all, w = hidden.to(dtype), weight.to(dtype)  # autocast would cast per matmul; once here
        n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h_all) if want_h else None
        acc = torch.promote_types(dtype, torch.float32)  # sums and the weight gradient: >= fp32
        grad_w = None  # the first chunk's product starts it (no zero fill of a (V, D) tensor)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        step = chunk_rows(*weight.shape, hidden.device)
        for s in range(0, hidden.shape[0], step):
            h = h_all[s:s + step]
            probs, nll, safe, valid = _softmax_nll(h, w, targets[s:s + step], vocab)
            total += nll.sum()
            if not (want_h or want_w):
                continue
            # d(mean nll)/d(logits) = (softmax - one_hot(target)) / n_valid, zero on ignored rows.
            probs[torch.arange(len(safe), device=probs.device), safe] -= 1.0
            g = probs.mul_(valid[:, None].to(acc) / n_valid).to(dtype)
            if want_h:
                grad_h[s:s + step] = g @ w
            if want_w:
                if grad_w is None:
                    grad_w = (g.T @ h).to(acc)  # a low-precision product is summed in fp32
                elif dtype == acc:
                    grad_w.addmm_(g.T, h)
                else:
                    grad_w += g.T @ h
        if want_w and grad_w is None:  # no rows at all
            grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
        ctx.grads = (grad_h, grad_w)  # results, not inputs: kept on ctx, scaled in place in backward
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return total / n_valid

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.grads is None:
            raise RuntimeError("linear_cross_entropy: a second backward through the same loss "
                               "(retain_graph): the first used its stored gradients; compute the loss again")
        (grad_h, grad_w), (h_dtype, w_dtype) = ctx.grads, ctx.dtypes
        ctx.grads = None
        # Scaled in place: a fresh (V, D) buffer costs more in page faults than the multiply itself.
        # loss.backward() sends exactly 1; on CPU, where reading it costs nothing, that pass is skipped.
        if grad_loss.device.type != "cpu" or grad_loss.item() != 1.0:
            grad_h = grad_h.mul_(grad_loss) if grad_h is not None else None
            grad_w = grad_w.mul_(grad_loss) if grad_w is not None else None
        grad_h = grad_h.to(h_dtype) if grad_h is not None else None
        grad_w = grad_w.to(w_dtype) if grad_w is not None else None
        return grad_h, grad_w, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         vocab: int | None = None) -> torch.Tensor:
    """Mean over non-ignored rows of -log softmax(hidden @ weight.T)[target]; hidden (N, D), weight (V, D).

    Differentiable in hidden and weight (a tied embedding gets its share as usual). `vocab` < V
    marks rows of weight past it as padding: they never get probability (nor gradient).
    """
    return _LinearCrossEntropy.apply(hidden, weight, targets, vocab or weight.shape[0])


@torch.no_grad()
def linear_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
               vocab: int | None = None) -> torch.Tensor:
    """Per-row NLL (N,) in fp32 (0 where the target is ignored), in chunks; no gradient."""
    dtype = _compute_dtype(hidden)
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    step, vocab = chunk_rows(*weight.shape, hidden.device), vocab or weight.shape[0]
    return torch.cat([_softmax_nll(hidden[s:s + step], weight, targets[s:s + step], vocab, False)[1]
                      for s in range(0, hidden.shape[0], step)])
