"""The words tokenizer with fastai's text rules, as ULMFiT's models were trained (Howard & Ruder 2018;
fastai v2 `fastai/text/core.py`, `defaults.text_proc_rules`), so vocabularies and weights trained by
fastai can be used as they are.

Before the whitespace split, each text goes through the same rules in the same order:
    fix_html          HTML leftovers (`#39;`, `amp;`, `<br />`, `\\n` spelled out, ...) and `<unk>` -> xxunk
    replace_rep       a character repeated 3+ times:  cccc -> ` xxrep 4 c `
    replace_wrep      a word repeated 3+ times:  no no no no -> ` xxwrep 4 no `
    spec_add_spaces   spaces around `/`, `#` and `\\`
    rm_useless_spaces runs of spaces -> one space
    replace_all_caps  an all-caps word of 2+ letters -> `xxup word`
    replace_maj       a capitalised word of 2+ characters -> `xxmaj word`
    lowercase         lower case, stripped, `xxbos ` in front (every text starts a document)
The tokens of a text are then its space-separated pieces, as fastai's `BaseTokenizer` gives them.
fastai's default tokenizer, spaCy, also splits punctuation off words; lmlab has no spaCy, so on
text that is not already tokenized the tokens are the rules' and the spaces' only (PTB, the
Pang & Lee reviews and many corpora come tokenized). One difference to BaseTokenizer: every
whitespace character separates tokens here, where BaseTokenizer splits at spaces only and keeps
a newline inside a token ("\\nsecond").

Vocabulary layout, as fastai's: the specials xxunk (0), xxpad (1), xxbos, xxeos, xxfld, xxrep, xxwrep,
xxup, xxmaj, then the words by count. Unknown words are xxunk; every document ends with xxeos
(lmlab joins documents with the eos id; fastai adds none).
"""

from __future__ import annotations

import html
import re
from collections import Counter
from collections.abc import Iterable, Sequence

from lmlab.errors import TokenizerError
from lmlab.tokenizers.words import WordTokenizer

UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ = (
    "xxunk", "xxpad", "xxbos", "xxeos", "xxfld", "xxrep", "xxwrep", "xxup", "xxmaj")
SPECIALS = (UNK, PAD, BOS, EOS, FLD, TK_REP, TK_WREP, TK_UP, TK_MAJ)  # fastai's defaults.text_spec_tok

_SPEC = re.compile(r"([/#\\])")
_SPACES = re.compile(" {2,}")
_REP = re.compile(r"(\S)(\1{2,})")
_WREP = re.compile(r"(?:\s|^)(\w+)\s+((?:\1\s+)+)\1(\s|\W|$)")
_ALL_CAPS = re.compile(r"(\s|^)([A-Z]+[^a-z\s]*)(?=(\s|$))")
_MAJ = re.compile(r"(\s|^)([A-Z][^A-Z\s]*)(?=(\s|$))")
_HTML = (("#39;", "'"), ("amp;", "&"), ("#146;", "'"), ("nbsp;", " "), ("#36;", "$"), ("\\n", "\n"),
         ("quot;", "'"), ("<br />", "\n"), ('\\"', '"'), ("<unk>", UNK), (" @.@ ", "."), (" @-@ ", "-"),
         ("...", " …"))


def fix_html(text: str) -> str:
    for old, new in _HTML:  # in this order: each replacement sees the previous ones' output
        text = text.replace(old, new)
    return html.unescape(text)


def replace_rep(text: str) -> str:
    return _REP.sub(lambda m: f" {TK_REP} {len(m.group(2)) + 1} {m.group(1)} ", text)


def replace_wrep(text: str) -> str:
    return _WREP.sub(lambda m: f" {TK_WREP} {len(m.group(2).split()) + 2} {m.group(1)} {m.group(3)}", text)


def spec_add_spaces(text: str) -> str:
    return _SPEC.sub(r" \1 ", text)


def rm_useless_spaces(text: str) -> str:
    return _SPACES.sub(" ", text)


def _marked(mark: str):
    def sub(m: re.Match) -> str:
        word = m.group(2)
        return f"{m.group(1)}{mark + ' ' if len(word) > 1 else ''}{word.lower()}"

    return sub


def replace_all_caps(text: str) -> str:
    return _ALL_CAPS.sub(_marked(TK_UP), text)


def replace_maj(text: str) -> str:
    return _MAJ.sub(_marked(TK_MAJ), text)


def lowercase(text: str) -> str:
    return f"{BOS} " + text.lower().strip()


RULES = (fix_html, replace_rep, replace_wrep, spec_add_spaces, rm_useless_spaces, replace_all_caps,
         replace_maj, lowercase)


def apply_rules(text: str) -> str:
    for rule in RULES:
        text = rule(text)
    return text


def fastai_tokens(text: str) -> list[str]:
    """The tokens fastai's rules and a whitespace split give `text` (before any vocabulary)."""
    return apply_rules(text).split()


class FastaiWordTokenizer(WordTokenizer):
    """Words after fastai's rules <-> ids; xxunk = 0, xxpad = 1, xxeos ends each document."""

    kind = "fastai_words"
    unk_token, eos_token = UNK, EOS

    def __init__(self, tokens: Sequence[str], special_tokens: Sequence[str] = SPECIALS,
                 source: str = "vocabulary"):
        missing = [t for t in SPECIALS if t not in tokens]
        if missing:
            raise TokenizerError(f"{source}: fastai's special token {missing[0]!r} is not in the vocabulary")
        super().__init__(tokens, special_tokens, source)

    @classmethod
    def train(cls, texts: Iterable[str], max_size: int | None = None,
              min_count: int = 1) -> FastaiWordTokenizer:
        """fastai's specials, then the words seen at least `min_count` times after the rules, by count;
        `max_size` caps the vocabulary, specials included."""
        if max_size is not None and max_size < len(SPECIALS):
            raise TokenizerError(f"max_size={max_size} is too small: fastai's {len(SPECIALS)} special tokens "
                                 f"alone take {len(SPECIALS)} ids")
        if isinstance(texts, str):
            texts = [texts]
        counts: Counter[str] = Counter()
        for text in texts:
            counts.update(fastai_tokens(text))
        for special in SPECIALS:
            counts.pop(special, None)
        words = sorted((w for w, n in counts.items() if n >= min_count), key=lambda w: (-counts[w], w))
        if max_size is not None:
            words = words[: max_size - len(SPECIALS)]
        return cls([*SPECIALS, *words])

    def words(self, text: str) -> list[str]:
        return fastai_tokens(text)

    @property
    def pad_token_id(self) -> int:
        return self._ids[PAD]

    def encode(self, text: str) -> list[int]:
        ids, unk, get = [], self._ids[UNK], self._ids.get
        for k, piece in enumerate(self._split(text)):  # specials added later stay whole
            if k % 2:
                ids.append(self._ids[piece])
            else:
                ids.extend(get(w, unk) for w in fastai_tokens(piece)[(1 if k else 0):])
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        return " ".join(self._tokens[i] for i in self._checked_ids(ids))
