"""BERT's WordPiece tokenizer (Devlin et al. 2018, sec. 3 and A.2; Wu et al. 2016, sec. 4.1).

Text goes through BERT's "basic tokenization" and then greedy longest-match-first WordPiece:
  1. clean-up: NUL, U+FFFD and control characters are dropped, every whitespace becomes " ";
  2. CJK ideographs are cut out as words of their own (`tokenize_chinese_chars`); Hangul, kana
     and other scripts stay whole words;
  3. uncased models lower-case the text and strip accents (NFD, then drop the combining marks,
     Unicode category Mn); `strip_accents=None` means "strip when lower-casing", as in BERT;
  4. words are cut at whitespace and at every punctuation character (ASCII symbols count too);
  5. each word is cut into the longest vocabulary entries from the left, later pieces spelled
     with the "##" prefix; a word with no such cut, or longer than 100 characters, is `[UNK]`.
These steps run in the Rust `tokenizers` library (BertNormalizer, BertPreTokenizer, WordPiece),
which produces the same ids and character offsets as transformers' BertTokenizerFast; the
vocabulary itself is kept here as a plain list so it is written as BERT's `vocab.txt`
(one token per line, id = line number). `[PAD] [UNK] [CLS] [SEP] [MASK]` are matched whole when
they appear in text, as in BertTokenizerFast.

`encode` adds no special tokens, like lmlab's other tokenizers; `encode_pair` builds BERT's model
input `[CLS] a [SEP] b [SEP]` with segment ids and offsets. `eos_token_id` is the id of `[SEP]`,
BERT's end-of-sequence marker: it is what ends every input and what lmlab's generic code may
treat as end of text.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from lmlab.errors import TokenizerError
from lmlab.tokenizers.common import (
    ListVocab,
    read_json,
    read_kind,
    string_list,
    surrogate_at,
    text_error,
    training_pieces,
    write_text,
)

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIALS = (PAD, UNK, CLS, SEP, MASK)  # the order of a trained vocabulary's first ids
VOCAB_FILE, HF_CONFIG_FILE = "vocab.txt", "tokenizer_config.json"
MAX_WORD_CHARS = 100  # longer words become [UNK] (BERT's max_input_chars_per_word)
TRUNCATIONS = ("longest_first", "only_first", "only_second", None)


class WordPieceTokenizer(ListVocab):
    """BERT WordPiece. ids are line numbers of `vocab.txt`; `eos_token_id` is the id of [SEP]."""

    kind = "wordpiece"
    one_line_specials = True  # vocab.txt holds one token per line

    def __init__(self, tokens: Sequence[str], lowercase: bool = True, strip_accents: bool | None = None,
                 tokenize_chinese_chars: bool = True, special_tokens: Sequence[str] = SPECIALS,
                 source: str = "vocabulary"):
        for name, value in (("lowercase", lowercase), ("tokenize_chinese_chars", tokenize_chinese_chars),
                            ("strip_accents", strip_accents)):
            if not isinstance(value, bool) and not (name == "strip_accents" and value is None):
                raise TokenizerError(f"{source}: {name} must be true or false, got {value!r}")
        self._tokens = list(tokens)
        # A token listed twice maps to its last line, as in BERT's own load_vocab.
        self._ids = {t: i for i, t in enumerate(self._tokens)}
        self.lowercase, self.strip_accents = lowercase, strip_accents
        self.tokenize_chinese_chars = tokenize_chinese_chars
        self._source = source
        self._special: list[str] = []
        for tok in (*SPECIALS, *special_tokens):
            if tok not in self._ids:
                raise TokenizerError(f"{source}: special token {tok!r} is not in the vocabulary")
            if tok not in self._special:
                self._special.append(tok)
        self._rebuild()

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def from_vocab_file(cls, path: str | Path, lowercase: bool = True, strip_accents: bool | None = None,
                        tokenize_chinese_chars: bool = True) -> WordPieceTokenizer:
        """A BERT `vocab.txt`; `lowercase=True` for the uncased models, False for the cased ones."""
        path = Path(path)
        return cls(_read_vocab_file(path), lowercase, strip_accents, tokenize_chinese_chars,
                   source=str(path))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int, lowercase: bool = True, min_frequency: int = 2,
              strip_accents: bool | None = None, tokenize_chinese_chars: bool = True) -> WordPieceTokenizer:
        """Learn a vocabulary of at most `vocab_size` ids on `texts` (documents).

        Ids 0..4 are [PAD] [UNK] [CLS] [SEP] [MASK], then the character alphabet (bare, then "##"
        for every character that can follow another in a word), then the learned pieces.
        Training is the `tokenizers` library's WordPiece trainer, run on the same normalized,
        pre-tokenized words that `encode` sees; the same texts give the same files in any process.
        Runs of more than MAX_TRAIN_RUN (100) non-space characters are cut into pieces for
        training (`training_pieces`): time linear in the text; such words encode as [UNK] anyway.
        """
        if vocab_size <= len(SPECIALS):
            raise TokenizerError(f"vocab_size={vocab_size} is too small: the {len(SPECIALS)} special "
                                 f"tokens alone take {len(SPECIALS)} ids")
        texts = [texts] if isinstance(texts, str) else list(texts)  # read twice
        tk = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=MAX_WORD_CHARS))
        tk.normalizer = _normalizer(lowercase, strip_accents, tokenize_chinese_chars)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        # The trainer numbers each "##x" when it first meets it in a Rust hash map, whose order
        # changes with every process, and breaks ties between equally frequent pairs by those
        # numbers: the vocabulary came out different on every run. Registered up front, in
        # sorted order, every "##x" has a fixed number and the result is the same every time.
        continuing = ["##" + c for c in _continuing_chars(texts, tk)]
        trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                            special_tokens=[*SPECIALS, *continuing],
                                            continuing_subword_prefix="##", show_progress=False)
        tk.train_from_iterator(training_pieces(texts), trainer)  # runs cut at 100 characters
        vocab = tk.get_vocab(with_added_tokens=True)
        learned = [t for t in sorted(vocab, key=vocab.__getitem__) if t not in SPECIALS]
        alphabet = [t for t in learned if len(t) == 1]
        fixed = set(continuing)
        pieces = [t for t in learned if len(t) > 1 and t not in fixed]
        tokens = [*SPECIALS, *alphabet, *continuing, *pieces]
        return cls(tokens, lowercase, strip_accents, tokenize_chinese_chars, source="trained vocabulary")

    @classmethod
    def find_in_dir(cls, directory: str | Path) -> WordPieceTokenizer | None:
        """The BERT tokenizer in `directory`, or None when it holds none.

        Reads lmlab's own `tokenizer.json` (kind "wordpiece"); else a Hugging Face layout:
        `vocab.txt` with the casing options of `tokenizer_config.json` (do_lower_case,
        strip_accents, tokenize_chinese_chars; BERT's defaults when absent); else a Hugging Face
        `tokenizer.json` holding a WordPiece model (newer transformers save only that file).
        """
        d = Path(directory)
        spec = read_json(d / "tokenizer.json") if (d / "tokenizer.json").is_file() else None
        if isinstance(spec, dict) and spec.get("kind") == cls.kind:
            return cls.load(d)
        if (d / VOCAB_FILE).is_file():
            options = _hf_options(d / HF_CONFIG_FILE) if (d / HF_CONFIG_FILE).is_file() else {}
            return cls.from_vocab_file(d / VOCAB_FILE, **options)
        if isinstance(spec, dict) and isinstance(spec.get("model"), dict) \
                and spec["model"].get("type") == "WordPiece":
            return _from_hf_json(cls, spec, d / "tokenizer.json")
        return None

    # ---- the interface ------------------------------------------------------------------------
    # (vocab_size, special_tokens, token_to_id, id_to_token, add_special_tokens: ListVocab)
    @property
    def eos_token_id(self) -> int:
        """The id of [SEP], which ends every BERT input (BERT has no separate end-of-text token)."""
        return self._ids[SEP]

    @property
    def pad_token_id(self) -> int:
        return self._ids[PAD]

    @property
    def unk_token_id(self) -> int:
        return self._ids[UNK]

    @property
    def cls_token_id(self) -> int:
        return self._ids[CLS]

    @property
    def sep_token_id(self) -> int:
        return self._ids[SEP]

    @property
    def mask_token_id(self) -> int:
        return self._ids[MASK]

    def encode(self, text: str) -> list[int]:
        """WordPiece ids of `text`, without [CLS]/[SEP]."""
        return self._encode(text).ids

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and, per id, its (start, end) character span in `text` (text[start:end])."""
        enc = self._encode(text)
        return enc.ids, list(enc.offsets)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of many texts in parallel (Rust threads)."""
        return [e.ids for e in self._encode_batch(list(texts))]

    def encode_pair(self, text_a: str, text_b: str | None = None, max_length: int | None = None,
                    truncation: str | None = "longest_first") -> dict:
        """BERT's input `[CLS] a [SEP]` or `[CLS] a [SEP] b [SEP]` (Devlin et al. 2018, sec. 3).

        Returns lists: input_ids; token_type_ids (0 up to the first [SEP], 1 after it);
        attention_mask; offsets, (start, end) into the original text_a or text_b and (0, 0) for
        [CLS]/[SEP]; sequence_ids (0 for a, 1 for b, None for [CLS]/[SEP]), as needed to map
        SQuAD answers between characters and tokens. An empty text_b counts as none, as in BERT's
        run_classifier.py and BertTokenizerFast. With `max_length`, `truncation` cuts the
        end of the texts: "longest_first" takes one token at a time from the longer one (as
        BertTokenizerFast: on a tie, from the one that was shorter at the start, else from a),
        "only_first"/"only_second" cut just that text (an error if it would be left empty),
        None never cuts. Unlike BertTokenizerFast, which then silently does not truncate, a
        max_length shorter than the [CLS]/[SEP] tokens themselves is an error.
        """
        a = self._encode(text_a)
        b = self._encode(text_b) if text_b else None
        return self._assemble(a, b, max_length, truncation)

    def encode_batch_pairs(self, pairs: Sequence[tuple[str, str | None]], max_length: int | None,
                           pad_to: int | None = None, truncation: str | None = "longest_first") -> dict:
        """`encode_pair` of many (a, b or None) pairs, padded into B x T tensors for training.

        T is `pad_to` when given (an error if a row is longer), else the longest row. Returns
        torch LongTensors input_ids, token_type_ids, attention_mask (0 on [PAD]), and the lists
        offsets and sequence_ids, padded with (0, 0) and None.
        """
        import torch  # only here: tokenization alone does not need torch

        pairs = list(pairs)
        try:
            texts_a = [a for a, _ in pairs]
            texts_b = [b for _, b in pairs if b]
        except (TypeError, ValueError):
            raise TokenizerError("encode_batch_pairs expects a list of (text_a, text_b or None) "
                                 "pairs") from None
        enc_a, enc_b = iter(self._encode_batch(texts_a)), iter(self._encode_batch(texts_b))
        rows = [self._assemble(next(enc_a), next(enc_b) if b else None, max_length, truncation)
                for _, b in pairs]
        longest = max((len(r["input_ids"]) for r in rows), default=0)
        width = longest if pad_to is None else pad_to
        if width < longest:
            raise TokenizerError(f"pad_to={pad_to} is shorter than the longest encoded pair ({longest} "
                                 f"tokens); raise pad_to or set max_length <= pad_to")
        out = {}
        for key, fill in (("input_ids", self.pad_token_id), ("token_type_ids", 0), ("attention_mask", 0),
                          ("offsets", (0, 0)), ("sequence_ids", None)):
            padded = [r[key] + [fill] * (width - len(r[key])) for r in rows]
            out[key] = padded if key in ("offsets", "sequence_ids") else \
                torch.tensor(padded, dtype=torch.long).reshape(len(rows), width)
        return out

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        """Wordpieces joined by spaces, "##" pieces glued to the one before; [PAD] is skipped.

        The same text as BertTokenizerFast.decode: a space before . , ! ? is dropped. Lower-casing,
        stripped accents and [UNK] cannot be undone.
        """
        ids = self._checked_ids(ids)
        drop = set(self._special) if skip_special_tokens else {PAD}
        return self._decoder.decode([t for t in map(self._tokens.__getitem__, ids) if t not in drop])

    # ---- files --------------------------------------------------------------------------------
    def save_vocab_file(self, directory: str | Path) -> None:
        """Write only BERT's vocab.txt (one token per line, id = line number)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        write_text(d / VOCAB_FILE, "".join(t + "\n" for t in self._tokens))

    def save(self, directory: str | Path) -> None:
        self.save_vocab_file(directory)
        spec = {"kind": self.kind, "lowercase": self.lowercase, "strip_accents": self.strip_accents,
                "tokenize_chinese_chars": self.tokenize_chinese_chars, "vocab_file": VOCAB_FILE,
                "pad_token": PAD, "unk_token": UNK, "cls_token": CLS, "sep_token": SEP, "mask_token": MASK,
                "special_tokens": self._special}
        write_text(Path(directory) / "tokenizer.json", json.dumps(spec, ensure_ascii=False, indent=1))

    @classmethod
    def load(cls, directory: str | Path) -> WordPieceTokenizer:
        d = Path(directory)
        path = d / "tokenizer.json"
        spec = read_kind(path, cls.kind)
        specials = string_list(spec.get("special_tokens", list(SPECIALS)), "special_tokens", path)
        for field, token in (("pad_token", PAD), ("unk_token", UNK), ("cls_token", CLS),
                             ("sep_token", SEP), ("mask_token", MASK)):
            if spec.get(field, token) != token:
                raise TokenizerError(f"{path}: {field} must be {token!r} (BERT's name), got "
                                     f"{spec[field]!r}")
        options = {field: spec.get(field, default) for field, default in
                   (("lowercase", True), ("strip_accents", None), ("tokenize_chinese_chars", True))}
        # The vocabulary file name is fixed, never taken from the JSON: no path outside the folder.
        tokens = _read_vocab_file(d / VOCAB_FILE)
        return cls(tokens, special_tokens=specials, source=str(path), **options)

    def __repr__(self) -> str:
        return (f"WordPieceTokenizer(vocab_size={self.vocab_size}, lowercase={self.lowercase}, "
                f"strip_accents={self.strip_accents}, tokenize_chinese_chars={self.tokenize_chinese_chars})")

    # ---- internals ----------------------------------------------------------------------------
    def _rebuild(self) -> None:
        """(Re)build the Rust pipeline from the plain data."""
        model = models.WordPiece(self._ids, unk_token=UNK, continuing_subword_prefix="##",
                                 max_input_chars_per_word=MAX_WORD_CHARS)
        tk = Tokenizer(model)
        tk.normalizer = _normalizer(self.lowercase, self.strip_accents, self.tokenize_chinese_chars)
        tk.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tk.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in self._special])
        self._tk = tk
        # cleanup=True drops the space before . , ! ? as BertTokenizerFast.decode does.
        self._decoder = decoders.WordPiece(prefix="##", cleanup=True)

    def _encode(self, text: str):
        try:
            return self._tk.encode(text, add_special_tokens=False)
        except TypeError:
            raise text_error(text) from None

    def _encode_batch(self, texts: list[str]) -> list:
        try:
            return self._tk.encode_batch(texts, add_special_tokens=False)
        except TypeError:
            bad = next((t for t in texts if not isinstance(t, str) or surrogate_at(t) is not None), None)
            raise text_error(bad) from None

    def _assemble(self, a, b, max_length: int | None, truncation: str | None) -> dict:
        """[CLS] a [SEP] (b [SEP]) from two encodings, truncated to `max_length` ids."""
        n_a, n_b = _truncated_lengths(len(a.ids), None if b is None else len(b.ids), max_length, truncation)
        cls_id, sep_id = self._ids[CLS], self._ids[SEP]
        ids = [cls_id, *a.ids[:n_a], sep_id]
        offsets = [(0, 0), *a.offsets[:n_a], (0, 0)]
        sequence_ids = [None, *[0] * n_a, None]
        types = [0] * (n_a + 2)
        if b is not None:
            ids += [*b.ids[:n_b], sep_id]
            offsets += [*b.offsets[:n_b], (0, 0)]
            sequence_ids += [*[1] * n_b, None]
            types += [1] * (n_b + 1)
        return {"input_ids": ids, "token_type_ids": types, "attention_mask": [1] * len(ids),
                "offsets": offsets, "sequence_ids": sequence_ids}


def _truncated_lengths(len_a: int, len_b: int | None, max_length: int | None,
                       truncation: str | None) -> tuple[int, int]:
    """How many tokens of a and b to keep so that, with [CLS]/[SEP], at most max_length remain."""
    if truncation not in TRUNCATIONS:
        raise TokenizerError(f"truncation={truncation!r}; expected one of "
                             f"{', '.join(map(repr, TRUNCATIONS))}")
    n_b = len_b or 0
    n_special = 2 if len_b is None else 3
    if max_length is None or truncation is None or len_a + n_b + n_special <= max_length:
        return len_a, n_b
    budget = max_length - n_special
    if budget < 0:
        raise TokenizerError(f"max_length={max_length} leaves no room for the {n_special} special tokens")
    if budget == 0:  # nothing fits: BertTokenizerFast empties both texts whatever the strategy
        return 0, 0
    if truncation == "longest_first":
        if len_b is None:
            return budget, 0
        # Taking one token at a time from the longer text (from the one that was shorter at the
        # start on a tie, a when both were equal) ends in this closed form.
        swap = len_a > len_b
        short, long = (len_b, len_a) if swap else (len_a, len_b)
        if short <= budget - short:
            long = budget - short  # only the longer text loses tokens
        else:
            short, long = budget // 2, budget - budget // 2
        return (long, short) if swap else (short, long)
    excess = len_a + n_b - budget
    if truncation == "only_second" and len_b is None:
        raise TokenizerError("truncation='only_second' needs a second text")
    cut, name = (n_b, "second") if truncation == "only_second" else (len_a, "first")
    if cut <= excess:  # BertTokenizerFast refuses to cut a text down to nothing
        raise TokenizerError(f"max_length={max_length} is too short: the {name} text has {cut} tokens "
                             f"but {excess} must go (truncation={truncation!r})")
    return (len_a, n_b - excess) if truncation == "only_second" else (len_a - excess, n_b)


def _continuing_chars(texts: list[str], tk: Tokenizer) -> list[str]:
    """Every character that can stand after another inside a word of `texts`, normalized, sorted.

    Normalization works character by character (clean-up, lower-casing, accents, CJK spacing), so
    normalizing "a" + c for each distinct character c tells what c becomes inside a word; the
    pre-tokenizer then says whether that stays in the word (punctuation and CJK do not).
    """
    seen: set[str] = set()
    for text in texts:
        seen.update(text)
    out: set[str] = set()
    for c in seen:
        words = tk.pre_tokenizer.pre_tokenize_str(tk.normalizer.normalize_str("a" + c))
        if len(words) == 1:
            out.update(words[0][0][1:])
    return sorted(out)


def _normalizer(lowercase: bool, strip_accents: bool | None, tokenize_chinese_chars: bool):
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=tokenize_chinese_chars,
                                      strip_accents=strip_accents, lowercase=lowercase)


def _read_vocab_file(path: Path) -> list[str]:
    """BERT's vocab.txt: one token per line, id = line number (a final newline ends the list)."""
    try:
        text = path.read_text(encoding="utf-8")  # universal newlines, like BERT's own reader
    except FileNotFoundError:
        raise TokenizerError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise TokenizerError(f"{path}: is a directory, expected a vocab.txt file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not a readable UTF-8 text file ({e})") from None
    tokens = text.split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    if not tokens:
        raise TokenizerError(f"{path}: empty vocabulary file (expected one token per line)")
    for n, tok in enumerate(tokens, 1):
        if not tok.strip():
            raise TokenizerError(f"{path}: line {n}: blank token (expected one token per line)")
    return tokens


def _hf_options(path: Path) -> dict:
    """Casing options of a Hugging Face tokenizer_config.json, named as WordPieceTokenizer names them."""
    spec = read_json(path)
    if not isinstance(spec, dict):
        raise TokenizerError(f"{path}: expected a JSON object")
    options = {}
    for field, name in (("do_lower_case", "lowercase"), ("strip_accents", "strip_accents"),
                        ("tokenize_chinese_chars", "tokenize_chinese_chars")):
        if field in spec:
            value = spec[field]
            if not isinstance(value, bool) and not (name == "strip_accents" and value is None):
                raise TokenizerError(f"{path}: {field} must be true or false, got {value!r}")
            options[name] = value
    return options


def _from_hf_json(cls, spec: dict, path: Path) -> WordPieceTokenizer:
    """A Hugging Face tokenizer.json holding BERT's pipeline (BertNormalizer + WordPiece)."""
    model, norm = spec["model"], spec.get("normalizer")
    pre = spec.get("pre_tokenizer")
    if not (isinstance(norm, dict) and norm.get("type") == "BertNormalizer" and norm.get("clean_text", True)
            and isinstance(pre, dict) and pre.get("type") == "BertPreTokenizer"
            and model.get("continuing_subword_prefix", "##") == "##" and model.get("unk_token") == UNK
            and model.get("max_input_chars_per_word", MAX_WORD_CHARS) == MAX_WORD_CHARS):
        raise TokenizerError(f"{path}: a WordPiece tokenizer but not BERT's pipeline (expected "
                             f"BertNormalizer, BertPreTokenizer, '##' pieces and {UNK!r})")
    vocab = model.get("vocab")
    if not isinstance(vocab, dict) or sorted(vocab.values()) != list(range(len(vocab))):
        raise TokenizerError(f"{path}: model.vocab must map tokens to the ids 0..N-1")
    tokens = sorted(vocab, key=vocab.__getitem__)
    specials = list(SPECIALS)
    for added in spec.get("added_tokens") or []:
        content, i = (added.get("content"), added.get("id")) if isinstance(added, dict) else (None, None)
        if not isinstance(content, str) or not content:
            raise TokenizerError(f"{path}: malformed entry in added_tokens: {added!r}")
        if i == len(tokens) and content not in vocab:
            tokens.append(content)  # added after the vocabulary, e.g. by add_tokens
        elif vocab.get(content) != i:
            raise TokenizerError(f"{path}: added token {content!r} has id {i}, which does not follow "
                                 f"the vocabulary")
        if content not in specials:
            specials.append(content)
    return cls(tokens, lowercase=norm.get("lowercase", True), strip_accents=norm.get("strip_accents"),
               tokenize_chinese_chars=norm.get("handle_chinese_chars", True), special_tokens=specials,
               source=str(path))
