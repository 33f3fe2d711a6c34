"""The music parts of the server, for a model whose tokenizer is a MIDI tokenizer (kind `midi`).

The page asks `/v1/models` what the model is; when its card has `midi`, it shows a composer and
instrument choice (`/v1/midi/prompt` spells the conditioning prefix: `tokenizer.prompt`), streams the
continuation as event names through `/v1/completions` like any text, then draws the notes of
`/v1/midi/render` as a piano roll and offers its MIDI file for download.
"""

from __future__ import annotations

import base64
import tempfile
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.serve.protocol import ApiError


def capability(tokenizer) -> dict | None:
    """What the page needs to condition a music model: its composers and instruments (None: not music)."""
    if tokenizer is None or tokenizer.kind != "midi":
        return None
    return {"composers": list(tokenizer.composers), "instruments": list(tokenizer.instruments)}


def prompt_text(tokenizer, composer: str | None, instruments: list[str]) -> str:
    try:
        ids = tokenizer.prompt(composer, instruments)
    except LmlabError as e:
        raise ApiError(422, str(e), "composer" if "composer" in str(e) else "instruments") from None
    return " ".join(tokenizer.id_to_token(i) for i in ids)


def render(tokenizer, ids: list[int]) -> dict:
    """{"notes": [[start, end, pitch, velocity, program], ...] (grid steps), "steps_per_quarter",
    "midi": the standard MIDI file, base64}. Runs on the model's thread (lmlab.serve.engine jobs)."""
    notes = tokenizer.decode_notes(ids)  # a TokenizerError is the client's: 422, one line
    with tempfile.TemporaryDirectory(prefix="lmlab-serve-") as tmp:
        midi = Path(tokenizer.write_midi(ids, Path(tmp) / "out.mid")).read_bytes()
    rows = [[int(n.start), int(n.end), int(n.pitch), int(n.velocity), int(n.program)] for n in notes]
    return {"notes": rows, "steps_per_quarter": int(tokenizer.settings.steps_per_quarter),
            "midi": base64.b64encode(midi).decode("ascii")}
