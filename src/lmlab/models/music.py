"""MuseNet-style music model: the GPT-2 decoder over MIDI event tokens, with optional relative
attention (Payne 2019, "MuseNet"; Huang et al. 2018, "Music Transformer").

MuseNet (OpenAI blog, 2019) is a GPT-2-style transformer (pre-LN blocks, final LayerNorm, scaled
residual init) trained to predict the next token of MIDI event sequences that start with composer
and instrumentation tokens; `lmlab.tokenizers.midi` makes those sequences. The network here is
lmlab's GPT-2 (`models.gpt`: the same embeddings, blocks, cache, loss and tied output layer), with
one option from the Music Transformer:

- `relative_attention=True` (default): every block's attention adds learned relative position
  embeddings per head, S_rel[i, j] = q_i · E[i - j], computed with the memory-efficient "skewing"
  of §3.4.1 (`lmlab.nn.skewed_relative`): no (L, L, d_h) tensor, O(L·d_h) memory per head for E.
  The learned absolute positions of GPT-2 are kept as well (the Music Transformer also keeps its
  absolute timing signal); `max_relative_distance` caps the table (0 = the context, every distance
  its own vector, as in the paper).
- `relative_attention=False`: the plain GPT-2 decoder (the Music Transformer's baseline).

State: a KV cache (`init_state`), with relative attention too: a query sits after every cached
key, so the skew needs no position other than the number of keys. `lmlab.generate(...,
compile=True)` runs fixed-shape steps for the plain GPT block layout only (`lmlab.generate.compiled.
supports`); a model with relative attention is decoded by the eager KV-cache steps (the same tokens).

Known deviations: MuseNet's exact sizes (72 layers, 24 heads, 4096 tokens) and its sparse
attention are not reproduced; the presets are small. The Music Transformer's relative attention
is per layer and per head as in the paper, but sits on top of absolute positions here.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from lmlab.models.config import require
from lmlab.models.gpt import GPT, Block, GPTConfig
from lmlab.nn.skewed_relative import SkewedRelativeAttention


@dataclass(frozen=True)
class MusicConfig(GPTConfig):
    vocab_size: int = 625  # lmlab's MuseNet-style MIDI vocabulary (MidiTokenizer("musenet"))
    d_model: int = 256
    n_layers: int = 6
    n_heads: int = 8
    d_ff: int = 1024
    max_seq_len: int = 1024
    relative_attention: bool = True
    max_relative_distance: int = 0  # 0 = max_seq_len: every distance in the context has its vector

    def __post_init__(self):
        super().__post_init__()
        require(self.pre_ln, "config field pre_ln must be true: the music model is the GPT-2 (pre-LN) layout")
        require(isinstance(self.max_relative_distance, int) and self.max_relative_distance >= 0,
                f"config field max_relative_distance must be an integer >= 0, got "
                f"{self.max_relative_distance!r}")

    @property
    def relative_distances(self) -> int:
        return self.max_relative_distance or self.max_seq_len


class RelativeBlock(Block):
    """A GPT-2 block whose attention adds the skewed relative term (same call, same parameters plus
    `attn.rel`)."""

    def __init__(self, c: MusicConfig):
        super().__init__(c)
        self.attn = SkewedRelativeAttention(c.d_model, c.n_heads, c.relative_distances, c.dropout,
                                            init_std=c.init_std)


class MusicTransformer(GPT):
    """GPT-2 over MIDI events; `blocks` are RelativeBlocks when config.relative_attention."""

    def __init__(self, config: MusicConfig):
        super().__init__(config)
        if config.relative_attention:
            self.blocks = nn.ModuleList(RelativeBlock(config) for _ in range(config.n_layers))
            self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()  # N(0, init_std), GPT-2's scaled residual projections
        for block in self.blocks:
            if isinstance(block.attn, SkewedRelativeAttention):
                nn.init.normal_(block.attn.rel, std=self.config.init_std)


_TINY = dict(vocab_size=625, d_model=32, n_layers=2, n_heads=4, d_ff=128, max_seq_len=128, dropout=0.0)

PRESETS = {
    "tiny": _TINY,
    # A CPU-sized model for the chorales (docs/music.md); the Music Transformer's JSB model was of
    # this order, its piano model 6 layers of 512 with 2048-token windows.
    "small": dict(d_model=256, n_layers=6, n_heads=8, d_ff=1024, max_seq_len=1024, dropout=0.1),
}
