"""Fixed-shape decoding steps: `lmlab.generate(..., compile=True)` for models with a KV cache.

The step below is written for the GPT block layout (token and position tables `wte`/`wpe`, `blocks`,
`ln_f`, `lm_head`): `supports(model)` says whether a model has it (gpt, gpt2). Other `kv_cache` models
(the character transformer, with a position table in every layer) decode with the eager steps.

Eager decoding (`loop.state_steps`) launches every kernel of every layer from Python for each new
token; at batch 1 a 124M model spends most of a step launching ~200 small kernels. Here a decoding
step has the same shapes every time:
- the KV cache holds L slots for the whole generation (prompt + new tokens, rounded up to a multiple
  of 64, so nearby lengths share one shape); the new token writes its keys and values at slot
  `index`, a tensor, with `index_copy_`;
- attention reads all L slots under a mask of the valid ones: real prompt tokens (not left pads)
  and generated slots <= index; the position id is index - (left pads of the row);
- the layers are the model's own `Block`s, given a cache object with the same `append` method.
Nothing in a step depends on a Python value that changes, so on CUDA the step is compiled once by
`torch.compile` (layer norm, GELU and residual adds fused) and captured as one CUDA graph; a token
then costs one graph replay. The buffers, the graph and the compiled code are kept for the next call
with the same model, batch size and L (so two concurrent calls on one model must not both use
compile=True). If compiling fails, a warning says so and the uncompiled step is captured instead;
if capturing fails too, the step runs uncaptured. On CPU the same step runs eagerly without graphs:
it gives the tokens of the eager path (tests compare them), not more speed. Compiling it there
(inductor's C++ kernels, no graph) was measured and left out: gpt2-124m, 128 new tokens on 2 Xeon
cores, 1.03x the eager path at batch 1 and 1.00x at batch 8, for 9-23 s of compiling; the weight
matmuls, which compiling does not change, are most of a CPU step.

The prompt goes through the model's normal forward once, then its keys and values are copied in.
"""

from __future__ import annotations

import warnings
import weakref

import torch

from lmlab.models.gpt import GPT

SLOT_MULTIPLE = 64
WARMUP_STEPS = 3  # before capture: compile, autotune and create cuBLAS handles outside the graph


def supports(model) -> bool:
    """Whether `model` has the GPT layout the fixed-shape step is written for."""
    return isinstance(model, GPT)


def slots_for(tokens: int, max_len: int) -> int:
    return min(-(-tokens // SLOT_MULTIPLE) * SLOT_MULTIPLE, max_len)


class SlotCache:
    """The cache interface `SelfAttention` calls, over fixed buffers: `append` writes k, v
    (B, H, 1, hd) at slot `index` (1,) and returns all L slots, (B, H, L, hd)."""

    def __init__(self, keys: list[torch.Tensor], values: list[torch.Tensor], index: torch.Tensor):
        self.keys, self.values, self.index = keys, values, index

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.keys[layer].index_copy_(2, self.index, k)
        self.values[layer].index_copy_(2, self.index, v)
        return self.keys[layer], self.values[layer]


class StaticDecoder:
    """Preallocated state of fixed-shape decoding for `batch` rows and `length` slots."""

    def __init__(self, model: GPT, batch: int, length: int):
        c, w = model.config, model.wte.weight
        shape = (batch, c.n_heads, length, c.d_model // c.n_heads)
        # Zeros, not empty: a masked slot gets weight 0, and 0 * NaN from garbage memory is NaN.
        self.keys = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in range(c.n_layers)]
        self.values = [torch.zeros(shape, dtype=w.dtype, device=w.device) for _ in range(c.n_layers)]
        self.index = torch.zeros(1, dtype=torch.long, device=w.device)  # the slot the next token writes
        self.token = torch.zeros(batch, dtype=torch.long, device=w.device)
        self.pads = torch.zeros(batch, dtype=torch.long, device=w.device)  # left pads per row
        self.valid = torch.ones(batch, length, dtype=torch.bool, device=w.device)  # False at pads
        self.slot_ids = torch.arange(length, device=w.device)
        self.cache = SlotCache(self.keys, self.values, self.index)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: torch.Tensor | None = None  # the graph's output buffer
        self.compiled = False

    def forward(self, model: GPT) -> torch.Tensor:
        """One token per row at slot `index`: next-token logits (B, V); index advances by one."""
        x = model.wte(self.token[:, None]) + model.wpe((self.index - self.pads)[:, None])  # (B, 1, D)
        mask = (self.valid & (self.slot_ids <= self.index))[:, None, None, :]  # (B, 1, 1, L)
        for i, block in enumerate(model.blocks):
            x = block(x, mask, self.cache, i)
        logits = model.lm_head(model.ln_f(x))[:, -1]  # (B, V)
        self.index.add_(1)
        return logits

    def capture(self, model: GPT, compile: bool) -> None:
        """Record one step as a CUDA graph (compiled by torch.compile first when `compile`)."""
        step = self.forward
        if compile:
            step = torch.compile(self.forward, fullgraph=True, dynamic=False)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            try:
                for _ in range(WARMUP_STEPS):
                    step(model)
                self.compiled = compile
            except Exception as e:  # noqa: BLE001 - any compiler failure: keep the graph, lose the fusion
                _warn("torch.compile of the decoding step failed", e, "capturing the uncompiled step")
                step = self.forward
                for _ in range(WARMUP_STEPS):
                    step(model)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self.logits = step(model)
        except Exception as e:  # noqa: BLE001 - still correct without the graph, only slower
            _warn("capturing the decoding step as a CUDA graph failed", e, "running it uncaptured")
            self.logits, self.compiled = None, False
            return
        self.graph = graph

    def prefill(self, model: GPT, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """Run the prompt (B, T) through the normal forward, copy its keys/values into slots [0, T)."""
        B, T = ids.shape
        cache = model.init_state(B, T)
        logits = model(ids, attention_mask=mask, state=cache, logits_to_keep=1).logits[:, -1]
        for layer, (keys, values) in enumerate(zip(self.keys, self.values, strict=True)):
            keys[:, :, :T].copy_(cache.k[layer])
            values[:, :, :T].copy_(cache.v[layer])
            keys[:, :, T:].zero_()  # slots of an earlier call; masked, but must stay finite
            values[:, :, T:].zero_()
        self.valid.fill_(True)
        self.pads.zero_()
        if mask is not None:
            self.valid[:, :T] = mask.bool()
            self.pads.copy_(T - mask.long().sum(1))
        self.index.fill_(T)
        return logits

    def step(self, model: GPT, token: torch.Tensor) -> torch.Tensor:
        self.token.copy_(token)
        if self.graph is None:
            return self.forward(model)
        self.graph.replay()
        return self.logits.clone()  # the next replay overwrites the graph's buffer


def _warn(what: str, error: Exception, instead: str) -> None:
    first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
    warnings.warn(f"lmlab.generate compile=True: {what} ({type(error).__name__}: {first}); {instead}",
                  stacklevel=3)


# model -> (key, StaticDecoder): kept for the next call with the same shapes; dies with the model.
_DECODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def decoder_for(model: GPT, batch: int, length: int, compile: bool) -> StaticDecoder:
    """A StaticDecoder for these shapes: the cached one, or a new one (captured on CUDA)."""
    graphed = model.wte.weight.device.type == "cuda"
    # The graph reads the parameters at fixed addresses: moving or casting the model makes new ones.
    key = (batch, length, graphed and compile, tuple(p.data_ptr() for p in model.parameters()))
    found = _DECODERS.get(model)
    if found is not None and found[0] == key:
        return found[1]
    _DECODERS.pop(model, None)  # free the old buffers and graph before allocating new ones
    decoder = StaticDecoder(model, batch, length)
    if graphed:
        decoder.capture(model, compile)
    _DECODERS[model] = (key, decoder)
    return decoder


def static_cache_steps(model: GPT, ids: torch.Tensor, mask: torch.Tensor | None, max_new_tokens: int,
                       compile: bool = True):
    """`loop.state_steps` with fixed-shape steps: (last logits (B, V), step: token (B,) -> logits)."""
    B, T = ids.shape
    with torch.inference_mode():  # every use of the decoder's tensors is inside inference mode
        decoder = decoder_for(model, B, slots_for(T + max_new_tokens, model.config.max_seq_len), compile)
        logits = decoder.prefill(model, ids, mask)

    def step(token: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return decoder.step(model, token)

    return logits, step
