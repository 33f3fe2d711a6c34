"""Invertible detokenizers for word-level benchmarks (Radford et al. 2019, §3.1).

PTB and WikiText are distributed tokenized: punctuation, clitics and hyphens are split off by
spaces (`do n't`, `viewers ' opinions`, `1 @,@ 000`). A byte-level model (GPT-2) never saw such
text in pretraining, so GPT-2 §3.1 evaluates on the text with these artifacts removed: "we can
evaluate it on any language model benchmark ... Since these de-tokenizers are invertible, we can
still calculate the log probability of a dataset". Each function below undoes one corpus's
conventions with a fixed, documented list of string rules; applied before tokenizing with a byte
level tokenizer, it changes how the text is spelled, never which words it holds.

The perplexity of the detokenized text is reported per token of the model *and* per word of the
original text (`word_ppl` in `lmlab evaluate --detokenizer ...`), the unit the benchmarks use.
"""

from __future__ import annotations

import re

from lmlab.errors import ConfigError

# Clitics split off by the PTB tokenizer: "do n't" -> "don't", "abc 's" -> "abc's".
_CLITICS = re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m|'S|'RE|'VE|'LL|'D|'M|N'T)\b")
# Punctuation that attaches to the word before it.
_CLOSING = re.compile(r" ([.,;:!?%)\]}])")
# Punctuation that attaches to the word after it.
_OPENING = re.compile(r"([(\[{$#]) ")
_SPACES = re.compile(r"[ \t]+")


def _common(text: str) -> str:
    """Rules both corpora share, applied last.

    1. `do n't` -> `don't` and `abc 's` -> `abc's` (clitics n't 's 're 've 'll 'd 'm);
    2. `dogs ' toys` -> `dogs' toys` (a lone apostrophe after a word ending in s: plural possessive);
    3. no space before . , ; : ! ? % ) ] } and none after ( [ { $ #;
    4. a quoted span `" a b "` -> `"a b"` (straight double quotes, paired left to right per line);
    5. runs of spaces collapse to one; spaces at the start and end of each line are removed.
    """
    text = _CLITICS.sub(r"\1", text)
    text = re.sub(r"(?<=s) ' (?=\S)", "' ", text)
    text = _CLOSING.sub(r"\1", text)
    text = _OPENING.sub(r"\1", text)
    text = re.sub(r'" ([^"\n]*?) "', r'"\1"', text)
    text = _SPACES.sub(" ", text)
    return "\n".join(line.strip(" ") for line in text.split("\n"))


def ptb_detokenize(text: str) -> str:
    """Penn Treebank (Mikolov's LM split, and the Treebank-3 tokenization) -> plain text.

    Before the common rules (see `_common`):
    1. bracket tokens -LRB- -RRB- -LSB- -RSB- -LCB- -RCB- -> ( ) [ ] { };
    2. `` and '' -> " (PTB's directed quotes become straight quotes);
    3. escaped slashes and stars `\\/` `\\*` -> / *;
    4. `$ N` stays `$N` via the common rule 3 (Mikolov's N stands for any number and is kept).
    `<unk>` and `N` are kept: they are words of the benchmark, not tokenization artifacts.
    """
    for token, char in (("-LRB-", "("), ("-RRB-", ")"), ("-LSB-", "["), ("-RSB-", "]"),
                        ("-LCB-", "{"), ("-RCB-", "}")):
        text = text.replace(token, char).replace(token.lower(), char)
    text = text.replace("``", '"').replace("''", '"')
    text = text.replace("\\/", "/").replace("\\*", "*")
    return _common(text)


def wikitext_detokenize(text: str) -> str:
    """WikiText-2/-103 (Merity et al. 2016) -> plain text.

    Before the common rules (see `_common`):
    1. number and hyphen escapes: ` @-@ ` -> `-`, ` @,@ ` -> `,`, ` @.@ ` -> `.`
       (`1 @,@ 000` -> `1,000`, `state @-@ of` -> `state-of`);
    2. section headings: `= = Career = =` -> `== Career ==` (each run of spaced `=` joined).
    `<unk>` is kept: it is a word of the benchmark.
    """
    text = text.replace(" @-@ ", "-").replace(" @,@ ", ",").replace(" @.@ ", ".")
    text = re.sub(r"(?<![^\s=])=( =)+(?=\s|$)", lambda m: m.group(0).replace(" ", ""), text)
    return _common(text)


def no_detokenize(text: str) -> str:
    """The text as it is."""
    return text


DETOKENIZERS = {"none": no_detokenize, "ptb": ptb_detokenize, "wikitext": wikitext_detokenize}


def detokenizer(name: str):
    """The function registered under `name` (none, ptb, wikitext)."""
    if name not in DETOKENIZERS:
        raise ConfigError(f"unknown detokenizer {name!r}; expected one of {', '.join(DETOKENIZERS)}")
    return DETOKENIZERS[name]


def original_words(text: str) -> int:
    """Words of a word-level benchmark text: whitespace tokens plus one end-of-line token per
    line (Mikolov's `<eos>`), the unit of the published word-level perplexities."""
    lines = [line for line in text.split("\n") if line.strip()]
    return sum(len(line.split()) + 1 for line in lines)
