"""GPT-2 byte-level BPE (Radford et al. 2019, sec. 2.2).

Text is UTF-8 encoded, every byte is mapped to a printable character, and BPE merges run on
those characters inside the pieces cut by GPT-2's pre-tokenization regex. Because all 256 bytes
are in the vocabulary, every string is encodable and `decode(encode(s)) == s` holds for any
Python string that is valid Unicode. Strings with lone surrogates (e.g. "\\ud800") have no UTF-8
form; `encode` rejects them with a TokenizerError rather than altering them silently.

Encoding runs in the Rust `tokenizers` library; the vocabulary and merges are kept here as plain
data so that files are written in the exact GPT-2 layout (`vocab.json` + `merges.txt`, which
`transformers` loads with identical ids). Special tokens (`<|endoftext|>` and any added later)
are matched atomically in text, as GPT2TokenizerFast does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from lmlab.errors import TokenizerError
from lmlab.tokenizers.common import (
    check_special,
    read_json,
    string_list,
    surrogate_at,
    text_error,
    training_pieces,
    write_text,
)

EOT = "<|endoftext|>"
VOCAB_FILE, MERGES_FILE = "vocab.json", "merges.txt"
OPENAI_VOCAB_FILE, OPENAI_MERGES_FILE = "encoder.json", "vocab.bpe"  # names in OpenAI's release


def _byte_chars() -> list[str]:
    """byte -> character of GPT-2's byte-level alphabet.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, soft hyphen...)
    move to U+0100 onwards in byte order, so no token contains whitespace or a control character.
    """
    keep = {*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)}
    chars, moved = [], 0
    for b in range(256):
        if b in keep:
            chars.append(chr(b))
        else:
            chars.append(chr(0x100 + moved))
            moved += 1
    return chars


_CHAR_TO_BYTE = {c: b for b, c in enumerate(_byte_chars())}


def _token_bytes(token: str, special: bool) -> bytes:
    if not special and all(c in _CHAR_TO_BYTE for c in token):
        return bytes(_CHAR_TO_BYTE[c] for c in token)
    return token.encode("utf-8")  # special tokens (and odd foreign entries) are literal text


class ByteBPETokenizer:
    """GPT-2 byte-level BPE. ids are those of `vocab`; `eos_token_id` is the id of <|endoftext|>."""

    kind = "byte_bpe"

    def __init__(self, vocab: dict[str, int], merges: Sequence[tuple[str, str]],
                 special_tokens: Sequence[str] = (EOT,), source: str = "vocabulary"):
        self._vocab = dict(vocab)
        self._merges = [tuple(m) for m in merges]
        self._source = source
        self._special: list[str] = []
        for tok in special_tokens:  # specials missing from the vocabulary are appended
            self._add_special(tok)
        self._rebuild()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, min_frequency: int = 2) -> ByteBPETokenizer:
        """Learn merges on `texts` (documents); the result has at most `vocab_size` ids.

        Ids 0..255 are the byte alphabet, then merges in order, then <|endoftext|> last, as in
        GPT-2's own vocabulary (where it is 50256). Training sees runs of at most MAX_TRAIN_RUN
        (100) non-space characters, longer ones cut into pieces (`training_pieces`), so its time
        grows linearly with the text; encoding still takes every run whole.
        """
        if vocab_size < 257:
            raise TokenizerError(f"vocab_size={vocab_size} is too small: byte-level BPE needs the 256 "
                                 f"byte tokens plus {EOT}")
        if isinstance(texts, str):
            texts = [texts]
        tk = Tokenizer(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size - 1, min_frequency=min_frequency, show_progress=False,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all bytes, seen or not
        )
        # <|endoftext|> separates documents; no merge may learn across it or spell it out.
        # Runs longer than MAX_TRAIN_RUN characters are cut for training (tokenizers.common).
        tk.train_from_iterator(training_pieces(part for text in texts for part in text.split(EOT)), trainer)
        model = json.loads(tk.to_str())["model"]
        tokens = sorted(model["vocab"], key=model["vocab"].__getitem__)
        vocab = {tok: i for i, tok in enumerate(tokens)}
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
        return cls(vocab, merges, (EOT,), source="trained vocabulary")

    @classmethod
    def from_files(cls, vocab_path: str | Path, merges_path: str | Path) -> ByteBPETokenizer:
        """GPT-2 files: `vocab.json`/`merges.txt` (HF) or `encoder.json`/`vocab.bpe` (OpenAI)."""
        vocab_path, merges_path = Path(vocab_path), Path(merges_path)
        vocab = _read_vocab(vocab_path)
        merges = _read_merges(merges_path, vocab, vocab_path.name)
        return cls(vocab, merges, [EOT] if EOT in vocab else [], source=str(vocab_path))

    @classmethod
    def find_in_dir(cls, directory: str | Path) -> ByteBPETokenizer | None:
        """The GPT-2 tokenizer in `directory`, or None when it holds none.

        Looks for vocab.json + merges.txt, then encoder.json + vocab.bpe, then a Hugging Face
        `tokenizer.json` describing a byte-level BPE (newer transformers save only that file).
        """
        d = Path(directory)
        for v, m in ((VOCAB_FILE, MERGES_FILE), (OPENAI_VOCAB_FILE, OPENAI_MERGES_FILE)):
            if (d / v).is_file() and (d / m).is_file():
                return cls.from_files(d / v, d / m)
        if (d / "tokenizer.json").is_file():
            return _from_hf_json(cls, d / "tokenizer.json")
        return None

    @classmethod
    def from_dir(cls, directory: str | Path) -> ByteBPETokenizer:
        """Like `find_in_dir`, but a directory without a GPT-2 tokenizer is an error."""
        tok = cls.find_in_dir(directory)
        if tok is None:
            raise TokenizerError(f"{directory}: no GPT-2 tokenizer files (expected {VOCAB_FILE} + "
                                 f"{MERGES_FILE}, {OPENAI_VOCAB_FILE} + {OPENAI_MERGES_FILE}, or a "
                                 f"byte-level BPE tokenizer.json)")
        return tok

    # ---- the interface ------------------------------------------------------------------------
    @property
    def vocab_size(self) -> int:
        return len(self._id_bytes)

    @property
    def eos_token_id(self) -> int | None:
        return self._vocab.get(EOT) if EOT in self._special else None

    @property
    def special_tokens(self) -> list[str]:
        return list(self._special)

    def encode(self, text: str) -> list[int]:
        try:
            return self._tk.encode(text, add_special_tokens=False).ids
        except TypeError:
            raise text_error(text) from None

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Encode many texts in parallel (Rust threads)."""
        texts = list(texts)
        batch = getattr(self._tk, "encode_batch_fast", self._tk.encode_batch)  # fast: no offsets
        try:
            return [e.ids for e in batch(texts, add_special_tokens=False)]
        except TypeError:
            bad = next(t for t in texts if not isinstance(t, str) or surrogate_at(t) is not None)
            raise text_error(bad) from None

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The raw bytes of `ids`; join these when streaming so no character is split."""
        ids = ids.tolist() if hasattr(ids, "tolist") else list(ids)  # tensors and arrays too
        table = self._id_bytes
        try:
            if ids and min(ids) < 0:
                raise IndexError
            return b"".join([table[i] for i in ids])
        except (IndexError, TypeError):
            bad = next(i for i in ids if not (0 <= i < len(table)) or table[i] is None)
            raise TokenizerError(f"token id {bad} is not in the vocabulary "
                                 f"(size {self.vocab_size})") from None

    def decode(self, ids: Iterable[int]) -> str:
        # Like GPT-2's encoder.py: bytes that are not complete UTF-8 become U+FFFD.
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        return self._vocab.get(token)

    def id_to_token(self, token_id: int) -> str:
        """The vocabulary entry (byte-level form, e.g. 'Ġthe' for ' the')."""
        tok = self._id_token[token_id] if 0 <= token_id < len(self._id_token) else None
        if tok is None:
            raise TokenizerError(f"token id {token_id} is not in the vocabulary (size {self.vocab_size})")
        return tok

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Register `tokens` as special (matched whole in text); new ones get the next free ids."""
        tokens = list(tokens)
        for tok in tokens:  # check all first: a bad one must leave the tokenizer unchanged
            check_special(tok)
        ids = [self._add_special(tok) for tok in tokens]
        self._rebuild()
        return ids

    # ---- files --------------------------------------------------------------------------------
    def save_gpt2_files(self, directory: str | Path) -> None:
        """Write only vocab.json + merges.txt, the layout transformers' GPT-2 tokenizer reads."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        ordered = dict(sorted(self._vocab.items(), key=lambda kv: kv[1]))
        write_text(d / VOCAB_FILE, json.dumps(ordered, ensure_ascii=False))
        write_text(d / MERGES_FILE, "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in self._merges))

    def save(self, directory: str | Path) -> None:
        self.save_gpt2_files(directory)
        spec = {"kind": self.kind, "vocab_file": VOCAB_FILE, "merges_file": MERGES_FILE,
                "special_tokens": self._special, "eos_token": EOT if self.eos_token_id is not None else None}
        write_text(Path(directory) / "tokenizer.json", json.dumps(spec, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> ByteBPETokenizer:
        d = Path(directory)
        spec = read_json(d / "tokenizer.json")
        specials = string_list(spec.get("special_tokens") if isinstance(spec, dict) else None,
                               "special_tokens", d / "tokenizer.json")
        # File names are fixed, never taken from the JSON: no path outside the folder is read.
        vocab = _read_vocab(d / VOCAB_FILE)
        merges = _read_merges(d / MERGES_FILE, vocab, VOCAB_FILE)
        missing = [t for t in specials if t not in vocab]
        if missing:
            raise TokenizerError(f"{d / VOCAB_FILE}: special token {missing[0]!r} listed in tokenizer.json "
                                 f"is not in the vocabulary")
        return cls(vocab, merges, specials, source=str(d / VOCAB_FILE))

    def __repr__(self) -> str:
        return f"ByteBPETokenizer(vocab_size={self.vocab_size}, special_tokens={self._special})"

    # ---- internals ----------------------------------------------------------------------------
    def _add_special(self, tok: str) -> int:
        check_special(tok)
        if tok not in self._vocab:
            self._vocab[tok] = max(self._vocab.values(), default=-1) + 1
        if tok not in self._special:
            self._special.append(tok)
        return self._vocab[tok]

    def _rebuild(self) -> None:
        """(Re)build the Rust tokenizer and the id -> bytes table from the plain data."""
        size = max(self._vocab.values(), default=-1) + 1
        self._id_token: list[str | None] = [None] * size
        for tok, i in self._vocab.items():
            if self._id_token[i] is not None:
                raise TokenizerError(f"{self._source}: id {i} is used by both "
                                     f"{self._id_token[i]!r} and {tok!r}")
            self._id_token[i] = tok
        special = set(self._special)
        self._id_bytes = [None if t is None else _token_bytes(t, t in special) for t in self._id_token]
        try:
            model = models.BPE(vocab=self._vocab, merges=self._merges, fuse_unk=False)
        except Exception as e:  # the Rust error names the offending merge
            raise TokenizerError(f"{self._source}: inconsistent vocabulary and merges ({e})") from None
        tk = Tokenizer(model)
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        tk.decoder = decoders.ByteLevel()
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self._special])
        self._tk = tk


def _read_vocab(path: Path) -> dict[str, int]:
    vocab = read_json(path)
    if not isinstance(vocab, dict) or not all(
        isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in vocab.values()
    ):
        raise TokenizerError(f"{path}: expected a JSON object mapping tokens to non-negative integer ids")
    return vocab


def _read_merges(path: Path, vocab: dict[str, int], vocab_name: str) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")
    except FileNotFoundError:
        raise TokenizerError(f"{path}: file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not a readable UTF-8 text file ({e})") from None
    merges = []
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"{path}: line {n}: malformed merge {line!r} (expected two tokens "
                                 f"separated by one space)")
        for tok in (*parts, parts[0] + parts[1]):
            if tok not in vocab:
                raise TokenizerError(f"{path}: line {n}: token {tok!r} is not in {vocab_name}")
        merges.append((parts[0], parts[1]))
    return merges


def _from_hf_json(cls, path: Path):
    """A Hugging Face tokenizer.json holding exactly GPT-2's byte-level BPE, else None."""
    spec = read_json(path)
    spec = spec if isinstance(spec, dict) else {}
    model, pre = spec.get("model"), spec.get("pre_tokenizer")
    gpt2_style = (
        isinstance(model, dict) and model.get("type") == "BPE" and not spec.get("normalizer")
        and not any(model.get(k) for k in ("ignore_merges", "continuing_subword_prefix",
                                           "end_of_word_suffix"))
        # one ByteLevel step with GPT-2's regex; e.g. Llama 3 adds its own Split regex: not GPT-2
        and isinstance(pre, dict) and pre.get("type") == "ByteLevel"
        and not pre.get("add_prefix_space") and pre.get("use_regex", True)
    )
    if not gpt2_style:
        return None  # lmlab's own tokenizer.json, WordPiece, another BPE flavour...
    try:
        vocab = dict(model["vocab"])
        merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model.get("merges", [])]
        added = sorted(((a["content"], a["id"]) for a in spec.get("added_tokens") or []), key=lambda a: a[1])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise TokenizerError(f"{path}: malformed model or added_tokens ({type(e).__name__}: {e})") from None
    specials = []
    for tok, i in added:  # GPT-2's <|endoftext|> is in the vocabulary; later ones may follow it
        if vocab.get(tok, i) != i or (tok not in vocab and i != max(vocab.values(), default=-1) + 1):
            raise TokenizerError(f"{path}: added token {tok!r} has id {i}, which does not follow "
                                 f"the vocabulary")
        vocab[tok] = i
        specials.append(tok)
    return cls(vocab, merges, specials, source=str(path))
