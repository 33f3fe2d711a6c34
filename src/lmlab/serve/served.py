"""The served model: what it can do (its card in /v1/models), its limits and its engine."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from lmlab.errors import LmlabError
from lmlab.eval.embed import embeddable
from lmlab.eval.scoring import context_length
from lmlab.generate.loop import check_generator
from lmlab.models.heads import TaskModel
from lmlab.models.registry import spec_of
from lmlab.serve import midi
from lmlab.serve.codec import TextCodec, codec_for
from lmlab.serve.engine import Engine
from lmlab.serve.protocol import ApiError, Limits


@dataclass
class Served:
    """Everything the routes share: the model, what it can do, the engine and the limits. Endpoints:
    completions for a causal LM with a decoding state, inspect for a causal LM, embeddings for a model
    `lmlab embed` reads (lmlab.eval.embed.embeddable), midi for a MIDI tokenizer."""

    model: object
    tokenizer: object
    name: str
    limits: Limits
    engine: Engine
    api_key: str | None = None
    codec: TextCodec = field(init=False)
    card: dict = field(init=False)

    def __post_init__(self):
        self.codec = codec_for(self.tokenizer)
        net = self.model.backbone if isinstance(self.model, TaskModel) else self.model
        spec = spec_of(net)
        self.net, self.spec = net, spec
        self.context = context_length(net)
        self.prompt_limit = min(self.limits.max_prompt_tokens, self.context)
        self.layers = net.config.n_layers + 1 if embeddable(spec) else 0
        endpoints = [name for name, ok in (("completions", self.engine.batch is not None),
                                           ("inspect", spec.kind == "causal_lm" and net is self.model),
                                           ("embeddings", self.layers > 0)) if ok]
        music = midi.capability(self.tokenizer)
        self.card = {"id": self.name, "object": "model", "created": int(time.time()), "owned_by": "lmlab",
                     "lmlab": {"family": net.family, "kind": spec.kind, "state": spec.state,
                               "tokenizer": self.tokenizer.kind, "vocab_size": net.config.vocab_size,
                               "context": self.context, "hidden_states": self.layers,
                               "endpoints": endpoints + (["midi"] if music else []), "midi": music,
                               "limits": {"max_tokens": self.limits.max_tokens, "max_n": self.limits.max_n,
                                          "max_prompt_tokens": self.prompt_limit}}}

    def needs(self, endpoint: str) -> None:
        offered = self.card["lmlab"]["endpoints"]
        if endpoint not in offered:
            raise ApiError(400, f"model {self.name!r} ({self.spec.kind}, state {self.spec.state}) has no "
                                f"{endpoint}: it serves {', '.join(offered) or 'nothing'}",
                           code="unsupported")

    def check_model(self, model: str | None) -> None:
        if model is not None and model != self.name:
            raise ApiError(404, f"model {model[:80]!r} is not served here; this server serves {self.name!r}",
                           "model", "model_not_found")


def can_generate(model) -> bool:
    """A causal LM with a decoding state (any kind: the engine batches them all)."""
    try:
        check_generator(model)
    except LmlabError:
        return False
    return spec_of(model).state != "none"
