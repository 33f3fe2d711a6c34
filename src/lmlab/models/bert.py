"""BERT (Devlin et al. 2018): a bidirectional transformer encoder with MLM and NSP heads.

§3 and Figure 2: the input of each position is the sum of a WordPiece token embedding, a learned
position embedding and a segment (token type) embedding, followed by LayerNorm and dropout (as in
the released code). §3 "Model Architecture": the encoder is Vaswani et al.'s post-LN block
(`x = LN(x + Attn(x)); x = LN(x + FFN(x))`) with GELU, attending in both directions; padded keys
are masked out. §3.1 Task #1 (masked LM): the final hidden states at the masked positions go through
a dense + GELU + LayerNorm transform and an output layer tied to the token embedding, with its own
per-token bias. §3.1 Task #2 (NSP) and §4: the "pooler" is dense + tanh on the first ([CLS]) hidden
state, and NSP is a 2-way linear classifier on it. Appendix A.2: weights N(0, 0.02) truncated at
two standard deviations (TensorFlow's truncated_normal_initializer), LayerNorm eps 1e-12.

`heads` picks what is built on top of the encoder: "none" (encoder + pooler, the HF BertModel),
"mlm" (+ MLM head, HF BertForMaskedLM), "mlm_nsp" (+ NSP, HF BertForPreTraining). `pooler=False`
drops the pooler (HF layouts without one: BertForMaskedLM, token tagging, span QA).

Known deviations: one dropout rate for embeddings, attention probabilities and residuals (the
paper and released configs use 0.1 for all three). Outputs at padded positions are computed
(pad queries attend to the real tokens, as in the reference code) but carry no meaning.
Losses (MLM with the 80/10/10 corruption, NSP) live in `lmlab.objectives`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from lmlab.errors import LmlabError
from lmlab.models.config import check_positive, check_probability, require
from lmlab.models.output import MaskedLMOutput
from lmlab.nn.attention import SelfAttention, attention_mask_4d
from lmlab.nn.layers import ACTIVATIONS, FeedForward, Linear, parameter_groups
from lmlab.nn.lm_loss import labelled_positions

HEADS = ("none", "mlm", "mlm_nsp")


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    d_model: int = 768
    n_layers: int = 12
    n_heads: int = 12
    d_ff: int = 3072
    max_seq_len: int = 512
    dropout: float = 0.1
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    activation: str = "gelu"  # erf GELU, as BERT's released code
    init_std: float = 0.02
    pad_token_id: int | None = 0
    heads: str = "mlm_nsp"  # "none" | "mlm" | "mlm_nsp"
    pooler: bool = True

    def __post_init__(self):
        check_positive(self, "vocab_size", "d_model", "n_layers", "n_heads", "d_ff", "max_seq_len",
                       "type_vocab_size")
        check_probability(self, "dropout")
        require(self.d_model % self.n_heads == 0,
                f"config field d_model={self.d_model} must be divisible by n_heads={self.n_heads}")
        require(self.activation in ("gelu", "gelu_tanh", "relu"),
                f"config field activation must be gelu, gelu_tanh or relu, got {self.activation!r}")
        require(self.heads in HEADS,
                f"config field heads must be one of {', '.join(HEADS)}, got {self.heads!r}")
        require(isinstance(self.pooler, bool),
                f"config field pooler must be true or false, got {self.pooler!r}")
        require(self.pooler or self.heads != "mlm_nsp", "config field heads='mlm_nsp' needs pooler=true "
                "(NSP classifies the pooled [CLS] state)")
        require(isinstance(self.layer_norm_eps, (int, float)) and self.layer_norm_eps > 0,
                f"config field layer_norm_eps must be a positive number, got {self.layer_norm_eps!r}")
        require(isinstance(self.init_std, (int, float)) and self.init_std > 0,
                f"config field init_std must be a positive number, got {self.init_std!r}")
        pad = self.pad_token_id
        is_id = isinstance(pad, int) and not isinstance(pad, bool) and 0 <= pad < self.vocab_size
        require(pad is None or is_id,
                f"config field pad_token_id must be None or an id below vocab_size={self.vocab_size}, "
                f"got {pad!r}")


class Block(nn.Module):
    """Post-LN encoder block: x = LN(x + Attn(x)); x = LN(x + FFN(x)) (§3, Vaswani et al. 2017)."""

    def __init__(self, c: BertConfig):
        super().__init__()
        self.attn = SelfAttention(c.d_model, c.n_heads, c.dropout)
        self.ln_1 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.mlp = FeedForward(c.d_model, c.d_ff, c.activation, c.dropout)
        self.ln_2 = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        x = self.ln_1(x + self.attn(x, mask, causal=False))  # (B, T, D)
        return self.ln_2(x + self.mlp(x))


class MLMHead(nn.Module):
    """dense + activation + LayerNorm, then the decoder tied to the token embedding (§3.1 Task #1)."""

    def __init__(self, c: BertConfig, word_emb: nn.Embedding):
        super().__init__()
        self.dense = nn.Linear(c.d_model, c.d_model)
        self.act = ACTIVATIONS[c.activation]
        self.ln = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.decoder = nn.Linear(c.d_model, c.vocab_size)  # its bias is the per-token output bias
        self.decoder.weight = word_emb.weight  # tied

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.ln(self.act(self.dense(h))))  # (..., V)


class Bert(nn.Module):
    """Embeddings (token + position + segment, LN, dropout), n_layers post-LN blocks, pooler, heads."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.config = c = config
        self.word_emb = nn.Embedding(c.vocab_size, c.d_model)
        self.pos_emb = nn.Embedding(c.max_seq_len, c.d_model)
        self.type_emb = nn.Embedding(c.type_vocab_size, c.d_model)
        self.emb_ln = nn.LayerNorm(c.d_model, eps=c.layer_norm_eps)
        self.drop = nn.Dropout(c.dropout)
        self.blocks = nn.ModuleList(Block(c) for _ in range(c.n_layers))
        self.pooler = nn.Linear(c.d_model, c.d_model) if c.pooler else None
        self.mlm = MLMHead(c, self.word_emb) if c.heads in ("mlm", "mlm_nsp") else None
        self.nsp = nn.Linear(c.d_model, 2) if c.heads == "mlm_nsp" else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        for m in self.modules():
            if isinstance(m, (nn.Linear, Linear, nn.Embedding)):
                # Appendix A.2 / the released code: truncated normal, cut at two standard deviations.
                nn.init.trunc_normal_(m.weight, std=std, a=-2 * std, b=2 * std)
                if getattr(m, "bias", None) is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Embeddings, each block, then the pooler and pretraining heads: bottom to top."""
        embeddings = [self.word_emb, self.pos_emb, self.type_emb, self.emb_ln]
        heads = [m for m in (self.pooler, self.mlm, self.nsp) if m is not None]
        return parameter_groups(embeddings, *self.blocks, heads)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                output_hidden_states: bool = False, mlm_positions: torch.Tensor | None = None,
                targets: torch.Tensor | None = None) -> MaskedLMOutput:
        """input_ids (B, T); attention_mask (B, T), 1 = real token, 0 = pad; token_type_ids (B, T),
        0 for segment A and 1 for segment B (default all 0); position_ids default 0..T-1.

        mlm_positions (B, P) computes MLM logits only at those positions, (B, P, V) instead of
        (B, T, V): pretraining predicts ~15% of the tokens, and the V-wide output layer dominates
        the cost of a small model. `targets` (B, T) (the original ids at masked positions, -100
        elsewhere) gives `nll` (B, T) instead of logits, computed at the labelled positions only.
        """
        B, T = input_ids.shape
        if T > self.config.max_seq_len:
            raise LmlabError(f"sequence of {T} positions is longer than the model's context "
                             f"(max_seq_len={self.config.max_seq_len})")
        if position_ids is None:
            position_ids = torch.arange(T, device=input_ids.device)[None]  # (1, T)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        x = self.word_emb(input_ids) + self.pos_emb(position_ids) + self.type_emb(token_type_ids)
        x = self.drop(self.emb_ln(x))  # (B, T, D)

        mask = None
        if attention_mask is not None and not bool(attention_mask.all()):
            mask = attention_mask_4d(attention_mask, T, T, causal=False, device=x.device)  # (B, 1, T, T)
        states = [x] if output_hidden_states else []
        for block in self.blocks:
            x = block(x, mask)
            if output_hidden_states:
                states.append(x)

        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else None  # (B, D)
        out = MaskedLMOutput(hidden=x, pooled=pooled,
                             hidden_states=tuple(states) if output_hidden_states else None)
        if self.nsp is not None:
            out.nsp_logits = self.nsp(pooled)  # (B, 2): 0 = IsNext, 1 = NotNext
        if self.mlm is None:
            return out
        if targets is not None:
            out.nll = self._mlm_nll(x, targets)
        else:
            h = x if mlm_positions is None else _gather_rows(x, mlm_positions)
            out.logits = self.mlm(h)  # (B, T or P, V)
        return out

    def _mlm_nll(self, x: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """(B, T) cross-entropy of the MLM head at the labelled positions (0 elsewhere)."""
        positions = labelled_positions(targets)  # (B, P)
        logits = self.mlm(_gather_rows(x, positions)).float()  # (B, P, V)
        picked = targets.gather(1, positions)  # (B, P), IGNORE_INDEX in the filler
        nll = F.cross_entropy(logits.flatten(0, 1), picked.flatten(), reduction="none")
        return torch.zeros(targets.shape, dtype=nll.dtype, device=x.device).scatter(
            1, positions, nll.view(picked.shape))


def _gather_rows(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """x (B, T, D) at positions (B, P) -> (B, P, D)."""
    return x.gather(1, positions.long()[:, :, None].expand(-1, -1, x.shape[-1]))


# Family -> preset -> config fields. The registry builds BertConfig(**fields, **overrides).
PRESETS = {
    "tiny": dict(vocab_size=512, d_model=32, n_layers=2, n_heads=4, d_ff=128, max_seq_len=64, dropout=0.0),
    "bert-mini": dict(d_model=256, n_layers=4, n_heads=4, d_ff=1024),
    "bert-base": dict(d_model=768, n_layers=12, n_heads=12, d_ff=3072),
    "bert-large": dict(d_model=1024, n_layers=24, n_heads=16, d_ff=4096),
}
