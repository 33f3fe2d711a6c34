"""Music data: the built-in MIDI corpora and folders of MIDI files, as pieces split by piece.

    pieces = read_pieces("builtin:bach-chorales", "train")   # [Piece(name, composer, path)]
    shards = prepare_music("builtin:bach-chorales", tokenizer, splits=("train", "valid"))

Built-ins come from the corpus shipped inside the music21 package (no download), converted once
to MIDI with music21's own MIDI writer and cached per piece under
`$LMLAB_CACHE/music/NAME-music21-VERSION/` (a killed conversion resumes where it stopped):
- `bach-chorales`: the chorales of `corpus.chorales.Iterator()`, Riemenschneider's 371 numbers;
  22 of them open a file another number already opens (the same harmonization), so the data set
  holds 349 distinct pieces, each once (no piece in two splits); label "bach".
- `music21-composers`: every score in music21's composer folders (bach, palestrina, monteverdi,
  beethoven, mozart, haydn, ... `COMPOSER_FOLDERS`), Roman-numeral analyses (.rntxt) left out,
  one piece per tune of a multi-tune ABC file; label = the folder name.
- `essen-folk`: the Essen folk song collection's ABC tunes, one piece per tune; label "folk".
A piece music21 cannot convert is named in one warning line when conversion runs, and left out.
Measured on 2 busy cores (music21 10.5.1): chorales 349 pieces in 133 s; essen-folk 8,514 tunes in
19 min; music21-composers 1,992 pieces (palestrina 1,318, bach 413, trecento 103, monteverdi 49,
josquin 29, beethoven 26, mozart 16, ...) in ~85 min, Beethoven's quartets taking minutes each.

A folder: every `.mid`/`.midi` file under it (recursive, sorted by relative path); a file in a
subfolder is labelled with the subfolder's name (`folder/bach/x.mid` -> "bach"), a file at the top
has no label (the tokenizer's "unknown"). A file that is empty, not MIDI or without notes is named
in a one-line warning and skipped; a folder with nothing usable is a DataError. A MIDI with only
drums is a piece like any other.

Splits, by piece and deterministic: the usable pieces sorted by the sha256 of their name, the
first 5% (at least one) are test, the next 5% (at least one) valid, the rest train, each kept in
listing order. Fewer than three pieces: all train.
"""

from __future__ import annotations

import hashlib
import os
import re
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from lmlab.data.corpora import BUILTIN_PREFIX, MUSIC_BUILTINS, cache_dir, is_builtin
from lmlab.data.music21_midi import MUSIC21_VERSION, convert_item, corpus_root, music21_version
from lmlab.errors import DataError

SPLIT_FRACTION = 0.05  # of the pieces, for each of test and valid
COMPOSER_FOLDERS = (
    "bach", "beach", "beethoven", "chopin", "ciconia", "corelli", "cpebach", "handel", "haydn",
    "johnson_j_r", "joplin", "josquin", "liliuokalani", "luca", "lusitano", "monteverdi", "mozart",
    "palestrina", "schoenberg", "schubert", "schumann_clara", "schumann_robert", "trecento", "verdi",
    "weber", "webern",
)
FOLK_LABEL = "folk"
MIDI_SUFFIXES = (".mid", ".midi")
_SCORE_SUFFIXES = (".mxl", ".xml", ".musicxml", ".krn", ".abc", ".mid", ".midi")


@dataclass(frozen=True)
class Piece:
    """One piece: a stable name, its composer label (None: unlabelled) and a MIDI file."""

    name: str
    composer: str | None
    path: Path


@dataclass(frozen=True)
class _Item:
    """A built-in piece to convert: a music21 corpus file (relative path) and ABC tune number."""

    name: str
    composer: str
    file: str
    number: int | None = None


# ---------------------------------------------------------------- listing the built-ins


def chorale_files() -> list[str]:
    """The 371 corpus files of `corpus.chorales.Iterator()` in Riemenschneider order (349 distinct)."""
    from music21 import corpus

    root = corpus_root()
    return [_resolve(root, name) for name in corpus.chorales.Iterator(returnType="filename")]


def _abc_tunes(path: Path) -> list[int]:
    text = path.read_text(encoding="latin-1")
    return [int(x) for x in re.findall(r"^X:\s*(\d+)", text, flags=re.M)]


def _items_of_file(root: Path, rel: str, composer: str) -> list[_Item]:
    if rel.endswith(".abc"):
        tunes = _abc_tunes(root / rel)
        if len(tunes) > 1:
            return [_Item(f"{rel}#{x}", composer, rel, x) for x in tunes]
    return [_Item(rel, composer, rel)]


def _list_items(name: str) -> list[_Item]:
    root = corpus_root()
    if name == "bach-chorales":
        seen, items = set(), []
        for rel in chorale_files():
            if rel not in seen:
                seen.add(rel)
                items.append(_Item(rel, "bach", rel))
        return items
    if name == "essen-folk":
        files = sorted(p.relative_to(root).as_posix() for p in (root / "essenFolksong").glob("*.abc"))
        return [item for rel in files for item in _items_of_file(root, rel, FOLK_LABEL)]
    from music21 import corpus

    files = sorted(Path(p).relative_to(root).as_posix() for p in corpus.getCorePaths())
    items = []
    for rel in files:
        folder = rel.split("/", 1)[0]
        if folder in COMPOSER_FOLDERS and rel.endswith(_SCORE_SUFFIXES):
            items.extend(_items_of_file(root, rel, folder))
    return items


def _resolve(root: Path, name: str) -> str:
    """The corpus file music21 itself opens for a work name such as "bach/bwv18.5-l"."""
    from music21 import corpus

    try:
        path = corpus.getWork(name)
    except Exception as e:  # noqa: BLE001 -- music21's CorpusException and friends
        raise DataError(f"music21 corpus work {name} not found ({e}); "
                        f"reinstall music21=={MUSIC21_VERSION}") from None
    path = path[0] if isinstance(path, list) else path
    return Path(path).relative_to(root).as_posix()


# ---------------------------------------------------------------- converting once, cached


def music_cache(name: str) -> Path:
    return cache_dir() / "music" / f"{name}-music21-{music21_version()}"


def _slug(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", name)[-80:]
    return f"{safe}-{hashlib.sha256(name.encode()).hexdigest()[:10]}"


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _results(todo: list[_Item], workers: int):
    """(item, (bytes | None, error | None)) for every item, in the order they finish."""
    jobs = [(it.file, it.number) for it in todo]
    if workers == 1:
        yield from zip(todo, map(convert_item, jobs), strict=True)
        return
    import multiprocessing

    # fork where there is one: spawn and forkserver re-run the caller's main module, which breaks
    # any script without an `if __name__ == "__main__"` guard. The workers run only music21.
    kind = "fork" if "fork" in multiprocessing.get_all_start_methods() else None
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(kind)) as pool:
        futures = {pool.submit(convert_item, job): it for it, job in zip(todo, jobs, strict=True)}
        try:
            # as they finish: one large score (a Beethoven quartet takes minutes) holds up nothing
            for future in as_completed(futures):
                yield futures[future], future.result()
        finally:
            pool.shutdown(cancel_futures=True)


def _convert_all(name: str, items: list[_Item], progress: bool, workers: int | None) -> Path:
    """Convert every item not yet cached, each saved as it finishes (a killed run resumes); warn
    once, naming the pieces music21 could not convert."""
    folder = music_cache(name)
    folder.mkdir(parents=True, exist_ok=True)
    todo = [it for it in items if not any((folder / (_slug(it.name) + s)).exists() for s in (".mid", ".err"))]
    if not todo:
        return folder
    from tqdm import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, 8, len(todo)))
    failed = []
    with tqdm(total=len(todo), desc=f"{name}: music21 -> MIDI", unit="piece", disable=not progress) as bar:
        for it, (data, error) in _results(todo, workers):
            if data is not None:
                _write_atomic(folder / (_slug(it.name) + ".mid"), data)
            else:
                _write_atomic(folder / (_slug(it.name) + ".err"), error.encode())
                failed.append(it.name)
            bar.update(1)
    if failed:
        order = {it.name: k for k, it in enumerate(items)}
        failed.sort(key=order.__getitem__)
        shown = ", ".join(failed[:10]) + (f" and {len(failed) - 10} more" if len(failed) > 10 else "")
        warnings.warn(f"builtin:{name}: music21 could not convert {len(failed)} of {len(items)} pieces, "
                      f"left out: {shown} (reasons in {folder}/*.err)", stacklevel=3)
    return folder


def _builtin_pieces(name: str, max_pieces: int | None, progress: bool, workers: int | None) -> list[Piece]:
    items = _list_items(name)
    if max_pieces is not None:
        items = items[:max_pieces]
    folder = _convert_all(name, items, progress, workers)
    pieces = []
    for it in items:
        path = folder / (_slug(it.name) + ".mid")
        if path.exists():
            pieces.append(Piece(it.name, it.composer, path))
    return pieces


# ---------------------------------------------------------------- folders of MIDI files


def _usable_midi(path: Path) -> str | None:
    """Why `path` cannot be used as a piece (empty, not MIDI, no notes), or None."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot read ({e.strerror or e})"
    if not data:
        return "empty file"
    try:
        import symusic
    except ImportError:
        raise DataError("reading MIDI needs symusic (installed with miditok): "
                        "pip install miditok==3.1.0") from None
    try:
        score = symusic.Score.from_midi(data)
    except (RuntimeError, ValueError) as e:
        return f"not a readable MIDI file ({str(e).split(':')[0]})"
    return None if score.note_num() > 0 else "no notes"


def _folder_pieces(folder: Path) -> list[Piece]:
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (music sources are builtin:NAME or a folder of "
                        f".mid files; see lmlab data list)")
    files = sorted((p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES),
                   key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise DataError(f"{folder}: folder holds no .mid or .midi files")
    pieces = []
    for f in files:
        rel = f.relative_to(folder).as_posix()
        reason = _usable_midi(f)
        if reason:
            warnings.warn(f"{f}: skipped, {reason}", stacklevel=3)
            continue
        label = rel.split("/", 1)[0] if "/" in rel else None
        pieces.append(Piece(rel, label, f))
    if not pieces:
        raise DataError(f"{folder}: none of its {len(files)} MIDI files is usable (see the warnings above)")
    return pieces


# ---------------------------------------------------------------- splits and the public readers


def split_pieces(pieces: list[Piece]) -> dict[str, list[Piece]]:
    """{"train", "valid", "test"}: by the sha256 of each piece's name (see the module docstring)."""
    names = sorted({p.name for p in pieces}, key=lambda g: hashlib.sha256(g.encode()).digest())
    if len(names) < 3:
        return {"train": list(pieces), "valid": [], "test": []}
    k = max(1, round(SPLIT_FRACTION * len(names)))
    test, valid = set(names[:k]), set(names[k:2 * k])
    out: dict[str, list[Piece]] = {"train": [], "valid": [], "test": []}
    for p in pieces:
        out["test" if p.name in test else "valid" if p.name in valid else "train"].append(p)
    return out


def all_pieces(source: str, max_pieces: int | None = None, progress: bool = True,
               workers: int | None = None) -> list[Piece]:
    """Every usable piece of `source` (builtin:NAME or a folder), converting built-ins on first use.
    `max_pieces` takes only the first pieces of a built-in's listing (quick checks)."""
    source = str(source)
    if is_builtin(source):
        name = source[len(BUILTIN_PREFIX):]
        if name not in MUSIC_BUILTINS:
            raise DataError(f"unknown music corpus {source!r}; built-in music: "
                            + ", ".join(BUILTIN_PREFIX + n for n in MUSIC_BUILTINS))
        pieces = _builtin_pieces(name, max_pieces, progress, workers)
        if not pieces:
            raise DataError(f"{source}: music21 could convert none of its pieces (see {music_cache(name)})")
        return pieces
    return _folder_pieces(Path(source).expanduser())


def read_pieces(source: str, split: str = "train", max_pieces: int | None = None, progress: bool = True,
                workers: int | None = None) -> list[Piece]:
    """The pieces of `split` ("train", "valid" or "test") of `source`; DataError when it is empty."""
    if split not in ("train", "valid", "test"):
        raise DataError(f"unknown split {split!r}; expected train, valid or test")
    pieces = split_pieces(all_pieces(source, max_pieces, progress, workers))[split]
    if not pieces:
        raise DataError(f"{source}: the {split} split holds no pieces (fewer than three usable pieces)")
    return pieces


def music_fingerprint(source: str, max_pieces: int | None = None) -> dict:
    """A cheap identity of a music source's content, for cache keys (nothing is converted)."""
    source = str(source)
    if is_builtin(source):
        return {"source": source, "music21": music21_version(), "max_pieces": max_pieces}
    folder = Path(source).expanduser().resolve()
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in MIDI_SUFFIXES)
    return {"source": str(folder), "files": [[str(f), f.stat().st_size, f.stat().st_mtime_ns] for f in files]}


def composers_of(pieces: list[Piece]) -> list[str]:
    """The sorted composer labels of `pieces` (for `MidiTokenizer(composers=...)`)."""
    return sorted({p.composer for p in pieces if p.composer})
