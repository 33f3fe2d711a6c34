"""Parallel text (source, target) for translation pretraining (CoVe, McCann et al. 2017 §3): sources,
splits, the vocabularies and batches.

Sources (`lmlab pretrain --model cove --data ...`):
- `builtin:lohelp-en-de`: LibreOffice's help, English -> German (lmlab.data.lohelp). Split by page:
  each page goes to test (5%), valid (5%) or train (90%) by the sha256 of its path, so no page is in
  two splits. Each split then keeps one copy of every (source, target) pair, and valid and test drop
  the pairs whose source occurs in train (the help repeats menu paths and notes on many pages: a
  test sentence seen in training would measure memory, not translation).
- a TSV file, `source<TAB>target` on each line;
- two aligned files `SRC_FILE,TGT_FILE`: one sentence per line, line i of one translating line i of
  the other (the same number of lines).
A local source has train and valid: valid is its last 5% of pairs (at least one), or a separate
`--valid` source of the same form. Blank lines (both sides) are skipped; a line with one side blank
is an error naming it.

Batches (`ParallelBatches`): each epoch a permutation of the training pairs drawn from (seed, epoch);
every 50 batches' worth of pairs are sorted by length and cut into batches whose order is drawn again
(less padding, still random); the state is (epoch, batch index), so a resumed run reads the same
batches. A batch is (source ids (B, S), source mask (B, S), decoder input `<bos> y` (B, T), targets
`y <eos>` (B, T), -100 at padding), each process taking its rows of the global batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from lmlab.data.corpora import BUILTIN_PREFIX, VALID_FRACTION, decode_text, is_builtin
from lmlab.errors import DataError

IGNORE = -100
SPLITS = ("train", "valid", "test")
TEST_FRACTION = 0.05
SORT_BATCHES = 50  # batches of pairs sorted by length together


@dataclass(frozen=True)
class Pair:
    source: str
    target: str
    where: str  # "file:line" or the help page


@dataclass(frozen=True)
class ParallelCorpus:
    """What `lmlab data list` shows about built-in parallel text."""

    name: str
    description: str
    source: str
    size: str


PARALLEL_BUILTINS = {
    "lohelp-en-de": ParallelCorpus("lohelp-en-de", "LibreOffice help English -> German, aligned by paragraph "
                                   "id; split by page",
                                   "Debian libreoffice-help-en-us + -de (apt-get download)",
                                   "53,798 pairs, 2,545 pages"),
}


def is_parallel_builtin(source: str) -> bool:
    return is_builtin(source) and source[len(BUILTIN_PREFIX):] in PARALLEL_BUILTINS


def list_parallel() -> list[dict]:
    """Rows for `lmlab data list`."""
    from lmlab.data.lohelp import deb_status

    ok, note = deb_status()
    return [{"name": BUILTIN_PREFIX + c.name, "size": c.size, "source": c.source, "available": ok,
             "note": note, "tokenizer": "parallel_words", "description": c.description}
            for c in PARALLEL_BUILTINS.values()]


# ---------------------------------------------------------------- the built-in corpus


def page_split(page: str) -> str:
    """test, valid or train for a help page, from the sha256 of its path (no RNG)."""
    u = int.from_bytes(hashlib.sha256(page.encode()).digest()[:8], "big") / 2 ** 64
    return "test" if u < TEST_FRACTION else "valid" if u < 2 * TEST_FRACTION else "train"


@lru_cache(maxsize=2)
def builtin_splits(name: str) -> dict[str, tuple[Pair, ...]]:
    """{split: pairs} of a built-in parallel corpus, deduplicated as the module docstring says."""
    from lmlab.data.lohelp import lohelp_pairs

    if name not in PARALLEL_BUILTINS:
        raise DataError(f"unknown parallel corpus {BUILTIN_PREFIX}{name}; built-in: "
                        + ", ".join(BUILTIN_PREFIX + n for n in PARALLEL_BUILTINS))
    out: dict[str, list[Pair]] = {s: [] for s in SPLITS}
    seen: dict[str, set] = {s: set() for s in SPLITS}
    for p in lohelp_pairs("en", "de"):
        split = page_split(p["page"])
        if (p["source"], p["target"]) not in seen[split]:
            seen[split].add((p["source"], p["target"]))
            out[split].append(Pair(p["source"], p["target"], f"{p['page']}#{p['key']}"))
    trained = {p.source for p in out["train"]}
    return {s: tuple(p for p in pairs if s == "train" or p.source not in trained) for s, pairs in out.items()}


# ---------------------------------------------------------------- local files


def _lines(path: Path) -> list[str]:
    try:
        return decode_text(path.read_bytes(), str(path)).splitlines()
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from None


def _checked(source: str, target: str, where: str) -> Pair | None:
    s, t = " ".join(source.split()), " ".join(target.split())
    if not s and not t:
        return None
    if not s or not t:
        raise DataError(f"{where}: the {'source' if not s else 'target'} side is empty")
    return Pair(s, t, where)


def read_local(source: str) -> list[Pair]:
    """The pairs of a TSV file or of two aligned files `SRC,TGT`."""
    parts = str(source).split(",")
    if len(parts) == 2:
        a, b = (Path(p).expanduser() for p in parts)
        left, right = _lines(a), _lines(b)
        if len(left) != len(right):
            raise DataError(f"{a} has {len(left)} lines but {b} has {len(right)}; aligned files need one "
                            f"sentence per line, line i of one translating line i of the other")
        pairs = [_checked(s, t, f"{a}:{n}") for n, (s, t) in enumerate(zip(left, right, strict=True), 1)]
        where = f"{a} and {b}"
    elif len(parts) == 1:
        path = Path(source).expanduser()
        pairs = []
        for n, line in enumerate(_lines(path), 1):
            if not line.strip():
                continue
            if "\t" not in line:
                raise DataError(f"{path}:{n}: expected 'source<TAB>target' (or give two aligned files as "
                                f"SRC_FILE,TGT_FILE)")
            s, t = line.split("\t", 1)
            pairs.append(_checked(s, t.split("\t")[0], f"{path}:{n}"))
        where = str(path)
    else:
        raise DataError(f"{source}: expected a TSV file or two aligned files SRC_FILE,TGT_FILE")
    pairs = [p for p in pairs if p is not None]
    if not pairs:
        raise DataError(f"{where}: no sentence pairs")
    return pairs


def read_parallel(source: str, split: str, valid: str | None = None) -> list[Pair]:
    """The pairs of `split` (train, valid or test) of `source`; DataError for an empty or missing split."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; expected train, valid or test")
    if split == "valid" and valid is not None:
        return read_local(valid) if not is_builtin(valid) else read_parallel(valid, "valid")
    if is_builtin(source):
        if not is_parallel_builtin(source):
            raise DataError(f"{source} is not parallel text; translation data: "
                            + ", ".join(BUILTIN_PREFIX + n for n in PARALLEL_BUILTINS) + ", a TSV file or "
                            "two aligned files SRC,TGT")
        pairs = list(builtin_splits(source[len(BUILTIN_PREFIX):])[split])
    elif split == "test":
        raise DataError(f"{source}: a local parallel source has train and valid splits only")
    else:
        everything = read_local(source)
        if valid is not None:
            pairs = everything
        else:
            held = max(1, round(VALID_FRACTION * len(everything)))
            if len(everything) < 2:
                raise DataError(f"{source}: one sentence pair cannot be split into train and valid; "
                                f"pass --valid")
            pairs = everything[:-held] if split == "train" else everything[-held:]
    if not pairs:
        raise DataError(f"{source}: the {split} split holds no sentence pairs")
    return pairs


def train_tokenizer(source: str, vocab_size: int | None = None, valid: str | None = None):
    """The source and target word vocabularies of the train split (`vocab_size` caps the target)."""
    from lmlab.tokenizers.parallel_words import ParallelWordTokenizer

    read_parallel(source, "valid", valid)  # a bad valid split fails before the vocabularies are built
    pairs = read_parallel(source, "train", valid)
    return ParallelWordTokenizer.train(((p.source, p.target) for p in pairs), max_target=vocab_size)


# ---------------------------------------------------------------- ids and batches


def encode_pairs(pairs, tokenizer, max_len: int) -> tuple[list[tuple[list[int], list[int]]], int]:
    """([(source ids, target ids)], pairs dropped for more than `max_len` words on a side)."""
    out, dropped = [], 0
    for p in pairs:
        src, tgt = tokenizer.encode_source(p.source), tokenizer.encode(p.target)
        if not src or not tgt or len(src) > max_len or len(tgt) + 1 > max_len:
            dropped += 1
            continue
        out.append((src, tgt))
    return out, dropped


def collate(examples: list[tuple[list[int], list[int]]], bos: int, eos: int):
    """(source (B, S), source mask (B, S), decoder input (B, T), targets (B, T)), right-padded."""
    B = len(examples)
    S = max(len(s) for s, _ in examples)
    T = max(len(t) for _, t in examples) + 1
    src = torch.zeros(B, S, dtype=torch.long)
    mask = torch.zeros(B, S, dtype=torch.long)
    tgt_in = torch.zeros(B, T, dtype=torch.long)
    tgt_out = torch.full((B, T), IGNORE, dtype=torch.long)
    for r, (s, t) in enumerate(examples):
        src[r, :len(s)] = torch.tensor(s)
        mask[r, :len(s)] = 1
        tgt_in[r, :len(t) + 1] = torch.tensor([bos, *t])
        tgt_out[r, :len(t) + 1] = torch.tensor([*t, eos])
    return src, mask, tgt_in, tgt_out


class ParallelBatches:
    """Length-sorted, shuffled batches of encoded pairs, epoch after epoch; state (epoch, index)."""

    def __init__(self, examples, batch_size: int, seed: int, bos: int, eos: int, rank: int = 0,
                 world_size: int = 1):
        if len(examples) < batch_size:
            raise DataError(f"{len(examples)} training pairs, fewer than --batch-size {batch_size}")
        if batch_size % world_size:
            raise DataError(f"--batch-size {batch_size} does not split over {world_size} processes")
        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.bos, self.eos, self.rank, self.world_size = bos, eos, rank, world_size
        self.epoch, self.index = 0, 0
        self._order_epoch, self._order = None, None

    @property
    def steps_per_epoch(self) -> int:
        return len(self.examples) // self.batch_size

    def batches_of(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches (example indices), a pure function of (seed, epoch)."""
        rng = np.random.default_rng([self.seed, epoch])
        order = rng.permutation(len(self.examples))[: self.steps_per_epoch * self.batch_size]
        lengths = np.array([len(self.examples[i][0]) for i in order])
        batches = []
        group = SORT_BATCHES * self.batch_size
        for start in range(0, len(order), group):
            chunk = order[start:start + group]
            chunk = chunk[np.argsort(lengths[start:start + group], kind="stable")]
            cut = [chunk[k:k + self.batch_size] for k in range(0, len(chunk), self.batch_size)]
            batches += [cut[k] for k in rng.permutation(len(cut))]
        return batches

    def __iter__(self):
        while True:
            if self._order_epoch != self.epoch:
                self._order_epoch, self._order = self.epoch, self.batches_of(self.epoch)
            while self.index < len(self._order):
                chosen = self._order[self.index]
                self.index += 1
                per = self.batch_size // self.world_size
                mine = chosen[self.rank * per:(self.rank + 1) * per]
                yield collate([self.examples[i] for i in mine], self.bos, self.eos)
            self.epoch, self.index = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
