"""Next-token cross-entropy straight from the last hidden states, without the (N, V) logits tensor.

The usual path, `F.cross_entropy(hidden @ W.T, targets)`, writes the full logits (N x V: 412 MB
for 2,048 tokens of GPT-2's 50,257-word vocabulary in fp32), a log-softmax of the same size, and
in backward a third one for their gradient. Here the rows go through in chunks: for each chunk the
logits are formed, reduced to a log-sum-exp and the target's logit, and - when a gradient is
wanted - turned at once into the chunk's share of both gradients (softmax - one-hot, times W for
the hidden states, transposed times the hidden states for W), for the weights a mean over the
scored rows gives them. The forward pass therefore does the backward's two matmuls too, and
backward only scales the stored gradients when the loss weighed the rows otherwise. Same three
matmuls as the usual path, one chunk of logits alive at a time. The result is the per-token loss
(N,): objectives reduce it.

`output_nll` and `tied_lookup` hold the device-specific choices a language model's output layer
makes (padding the matrix on CUDA, the compiled path, sparse lookups on CPU), so that the model
files read as the papers. Targets equal to IGNORE_INDEX (-100, as in torch) are skipped (nll 0).
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


class _TokenNLL(torch.autograd.Function):
    """Per-row NLL (N,) whose forward also forms both gradients, for the rows' weights in the loss
    that a mean over the scored rows gives (1 / n_valid each): the usual reduction of an objective."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, vocab):
        dtype = _compute_dtype(hidden)
        h_all, w = hidden.to(dtype), weight.to(dtype)  # autocast would cast per matmul; once here
        n_valid = (targets != IGNORE_INDEX).sum().clamp(min=1)
        share = 1.0 / n_valid.float()  # what d(nll.sum() / n_valid)/d(nll) gives every scored row
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_h = torch.empty_like(h_all) if want_h else None
        acc = torch.promote_types(dtype, torch.float32)  # sums and the weight gradient: >= fp32
        grad_w = None  # the first chunk's product starts it (no zero fill of a (V, D) tensor)
        nll_all = torch.empty(hidden.shape[0], dtype=acc, device=hidden.device)
        step = chunk_rows(*weight.shape, hidden.device)
        for s in range(0, hidden.shape[0], step):
            h = h_all[s:s + step]
            probs, nll, safe, valid = _softmax_nll(h, w, targets[s:s + step], vocab)
            nll_all[s:s + step] = nll
            if not (want_h or want_w):
                continue
            g = _row_gradients(probs, safe, valid, share, acc).to(dtype)  # (c, V')
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
        ctx.save_for_backward(hidden, weight, targets, share)
        ctx.grads = (grad_h, grad_w)  # results, not inputs: kept on ctx, scaled in place in backward
        ctx.vocab = vocab
        return nll_all

    @staticmethod
    def backward(ctx, grad_nll):
        if ctx.grads is None:
            raise RuntimeError("token_nll: a second backward through the same loss (retain_graph): the "
                               "first used its stored gradients; compute the loss again")
        hidden, weight, targets, share = ctx.saved_tensors
        (grad_h, grad_w), ctx.grads = ctx.grads, None
        valid = targets != IGNORE_INDEX
        scored = grad_nll[valid]
        # One host read (on CUDA a sync): is every scored row weighted alike, and how?
        uniform = scored.numel() == 0 or bool((scored == scored[0]).all())
        if uniform:
            ratio = scored[0] / share if scored.numel() else None
            if ratio is not None and bool(ratio != 1):  # a mean over the scored rows sends exactly `share`
                # Scaled in place: a fresh (V, D) buffer costs more in page faults than the multiply.
                grad_h = grad_h.mul_(ratio) if grad_h is not None else None
                grad_w = grad_w.mul_(ratio) if grad_w is not None else None
        else:  # rows weighted differently (rare): their share of the weight gradient is recomputed
            grad_h = grad_h.mul_((grad_nll / share)[:, None]) if grad_h is not None else None
            if grad_w is not None:
                grad_w = _weighted_weight_grad(hidden, weight, targets, grad_nll, ctx.vocab, grad_w.dtype)
        grad_h = grad_h.to(hidden.dtype) if grad_h is not None else None
        grad_w = grad_w.to(weight.dtype) if grad_w is not None else None
        return grad_h, grad_w, None, None


def _row_gradients(probs, safe, valid, weight_per_row, acc) -> torch.Tensor:
    """d(Σ w_r·nll_r)/d(logits) = w_r·(softmax - one_hot(target)) per row, zero on ignored rows."""
    probs[torch.arange(len(safe), device=probs.device), safe] -= 1.0
    return probs.mul_(valid[:, None].to(acc) * weight_per_row)


def _weighted_weight_grad(hidden, weight, targets, row_weights, vocab, acc) -> torch.Tensor:
    dtype = _compute_dtype(hidden)
    h_all, w = hidden.detach().to(dtype), weight.detach().to(dtype)
    grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device)
    step = chunk_rows(*weight.shape, hidden.device)
    for s in range(0, hidden.shape[0], step):
        h = h_all[s:s + step]
        probs, _, safe, valid = _softmax_nll(h, w, targets[s:s + step], vocab)
        g = _row_gradients(probs, safe, valid, row_weights[s:s + step, None].to(acc), acc)
        grad_w += (g.to(dtype).T @ h).to(acc)
    return grad_w


def token_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
              vocab: int | None = None) -> torch.Tensor:
    """-log softmax(hidden @ weight.T)[target] per row, (N,) in fp32 or wider; 0 where ignored.

    hidden (N, D), weight (V, D). Differentiable in hidden and weight (a tied embedding gets its
    share as usual): the forward pass forms both gradients for the usual reduction, a mean over the
    scored rows (`nll.sum() / n_scored`); any other uniform scale costs one multiply, rows weighted
    differently a second pass over the chunks. `vocab` < V marks rows of weight past it as padding:
    they never get probability (nor gradient).
    """
    return _TokenNLL.apply(hidden, weight, targets, vocab or weight.shape[0])


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                         vocab: int | None = None) -> torch.Tensor:
    """Mean over non-ignored rows of `token_nll` (0 when every row is ignored)."""
    return token_nll(hidden, weight, targets, vocab).sum() / (targets != IGNORE_INDEX).sum().clamp(min=1)


@torch.no_grad()
def linear_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
               vocab: int | None = None) -> torch.Tensor:
    """Per-row NLL (N,) in fp32 (0 where the target is ignored), in chunks; no gradient."""
    dtype = _compute_dtype(hidden)
    hidden, weight = hidden.to(dtype), weight.to(dtype)
    step, vocab = chunk_rows(*weight.shape, hidden.device), vocab or weight.shape[0]
    return torch.cat([_softmax_nll(hidden[s:s + step], weight, targets[s:s + step], vocab, False)[1]
                      for s in range(0, hidden.shape[0], step)])


def labelled_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, P) indices of the labelled positions of each row, first in order, then filler positions
    whose label is IGNORE_INDEX. P is the largest count per row rounded up to 8 (fewer distinct shapes)."""
    labelled = labels != IGNORE_INDEX  # (B, T)
    width = int(labelled.sum(1).max()) if labels.numel() else 0
    width = min(labels.shape[1], max(8, -(-width // 8) * 8))
    order = torch.sort((~labelled).to(torch.int8), dim=1, stable=True).indices  # labelled first
    return order[:, :width]


# ---------------------------------------------------------------- a model's output layer, scored


VOCAB_MULTIPLE = 64  # the training loss pads the output matrix to a multiple of this many rows...
PAD_OUTPUT_ON = {"cuda"}  # ...on these devices (on CPU the extra rows would only cost time)


def output_nll(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-token NLL (B, T) of next-token `targets` (B, T) from the last hidden states (B, T, D) and
    the output matrix `weight` (V, D), the cheapest way for this device and mode:

    - compiled (torch.compile is tracing): logits and cross-entropy in one graph, which inductor fuses
      (H100, gpt2-124m 16x1024: 433k tokens/s against 414k for the chunks);
    - with a gradient: `token_nll`, chunk by chunk, never holding the (B, T, V) logits;
    - without: `linear_nll`, chunked as well.
    On CUDA the matrix gets zero rows up to a multiple of 64: 50,257 rows make misaligned matmul
    shapes (cuBLAS falls back to slower kernels); the extra rows are left out of the softmax. The
    pad fuses with autocast's bf16 copy of the weight (compiled) or is one cast-sized pass (eager).
    """
    flat, y = hidden.flatten(0, 1), targets.flatten()
    vocab = weight.shape[0]
    if weight.device.type in PAD_OUTPUT_ON and vocab % VOCAB_MULTIPLE:
        weight = torch.nn.functional.pad(weight, (0, 0, 0, -vocab % VOCAB_MULTIPLE))
    if torch.compiler.is_compiling():
        logits = torch.nn.functional.linear(flat, weight)[:, :vocab]
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # bf16: fp32 softmax
        nll = torch.nn.functional.cross_entropy(logits, y, reduction="none")
    elif torch.is_grad_enabled():
        nll = token_nll(flat, weight, y, vocab)
    else:
        nll = linear_nll(flat, weight, y, vocab)
    return nll.view(targets.shape)


def tied_lookup(ids: torch.Tensor, weight: torch.Tensor, scoring: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(embeddings of `ids`, the matrix to score the outputs with) for a table tied to the output layer.

    When a CPU model is trained on targets (`scoring`, with a gradient), the lookup hands back a
    sparse gradient for the looked-up rows, and the output layer reads the matrix through
    `_BackwardLast`: autograd adds a sparse gradient into a dense one in place only when the sparse
    one comes first. Otherwise the lookup's gradient is a zero-filled (V, D) tensor plus a (V, D)
    addition: ~100 ms of a 3.4 s gpt2-124m step on CPU, page faults included.
    """
    sparse = (scoring and torch.is_grad_enabled() and weight.requires_grad and weight.device.type == "cpu"
              and not torch.compiler.is_compiling())
    head = _BackwardLast.apply(weight) if sparse else weight  # made before the lookup: backward after it
    return torch.nn.functional.embedding(ids, weight, sparse=sparse), head


class _BackwardLast(torch.autograd.Function):
    """The identity. Autograd runs the backward of later-made operations first, so applied to a
    weight before its other uses, this hands the weight's gradient on after theirs."""

    @staticmethod
    def forward(ctx, weight):
        return weight.view_as(weight)

    @staticmethod
    def backward(ctx, grad):
        return grad
