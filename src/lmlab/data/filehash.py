"""Content hashes of files for cache keys, remembered with the file's stat so that an untouched
file is read once.

Size and mtime do not identify content: `cp -p`, `rsync -a` and archive tools give a different
file the same size and mtime. The key of a cached shard therefore holds each file's sha256. To
keep a second run cheap (a 40 MB corpus takes ~0.1 s to hash, a cache hit should take none), the
hash is remembered in `$LMLAB_CACHE/file-hashes.json` together with (device, inode, size,
mtime_ns, ctime_ns). The kernel sets ctime on every write, rename onto the path, chmod or utime,
and no call can set it back, so while all five fields match, the content is the one hashed. Any
difference and the file is hashed again.

Racy files (git's term): a timestamp has the resolution of the kernel's clock tick, so a file
changed again within the tick of its last change would keep all five fields. A hash is only
remembered when the file's ctime lies more than RACY_NS before the moment hashing began; a file
written just now is simply hashed again on the next run. A memo that cannot be read is ignored,
one that cannot be written is skipped: it only ever saves time.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path

MEMO_FILE = "file-hashes.json"
MEMO_VERSION = 1
MEMO_LIMIT = 20_000  # entries kept (the latest hashed); a folder corpus has one per file
RACY_NS = 2_000_000_000  # 2 s: coarser than any tick, FAT's 2 s mtime included
_READ = 1 << 20


def _now_ns() -> int:
    return time.time_ns()


def memo_path() -> Path:
    """file-hashes.json in lmlab's cache folder ($LMLAB_CACHE, else ~/.cache/lmlab)."""
    from lmlab.data.corpora import cache_dir  # here: corpora imports this module

    return cache_dir() / MEMO_FILE


def _stat_key(st: os.stat_result) -> list[int]:
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _hash_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_READ):
            digest.update(block)
    return digest.hexdigest()


def _load(memo: Path) -> dict:
    try:
        data = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("version") != MEMO_VERSION:
        return {}
    return data["files"] if isinstance(data.get("files"), dict) else {}


def _save(memo: Path, files: dict) -> None:
    if len(files) > MEMO_LIMIT:  # oldest first in insertion order
        files = dict(list(files.items())[-MEMO_LIMIT:])
    tmp = None
    try:
        memo.parent.mkdir(parents=True, exist_ok=True)
        # A private temporary name (several machines may share the cache folder), then rename:
        # concurrent runs never see half a file; the last writer wins, the others re-hash later.
        fd, tmp = tempfile.mkstemp(prefix=f".{memo.name}.", dir=memo.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"version": MEMO_VERSION, "files": files}, f)
        os.replace(tmp, memo)
    except OSError:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def file_sha256s(paths: list[Path]) -> list[str]:
    """The sha256 (hex) of each file's content, from the memo where the file's stat still matches."""
    memo = memo_path()
    files = _load(memo)
    out, hashed = [], False
    for path in paths:
        path = Path(path).resolve()
        name = str(path)
        st = os.stat(path)
        entry = files.get(name)
        if isinstance(entry, list) and len(entry) == 6 and entry[:5] == _stat_key(st) \
                and isinstance(entry[5], str):
            out.append(entry[5])
            continue
        started = _now_ns()
        digest = _hash_file(path)
        after = os.stat(path)
        files.pop(name, None)
        # Remember only a file that did not change while it was read and is not racy.
        if _stat_key(after) == _stat_key(st) and st.st_ctime_ns < started - RACY_NS:
            files[name] = [*_stat_key(st), digest]
        hashed = True
        out.append(digest)
    if hashed:  # a run that only reused hashes writes nothing
        _save(memo, files)
    return out


def file_sha256(path: str | Path) -> str:
    """The sha256 (hex) of one file's content (see file_sha256s)."""
    return file_sha256s([Path(path)])[0]
