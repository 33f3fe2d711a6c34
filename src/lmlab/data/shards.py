"""Token shards: one flat array of token ids on disk, memory-mapped for training.

File layout (all integers little-endian):

    bytes 0..7    magic b"LMLABTOK"
    bytes 8..15   uint64 H: length of the JSON header that follows
    bytes 16..    JSON header, UTF-8, padded with spaces so the token data starts on a
                  64-byte boundary (aligned memmap reads for uint32)
    then          count token ids of `dtype` (uint16 when vocab_size <= 65536, else uint32)

Header: {"format": "lmlab-shard", "version": 1, "dtype": "uint16", "count": N,
"vocab_size": V, "sha256": hex digest of the token bytes, "meta": {...}}.

A shard is written atomically (temp file, fsync, rename) after checking that every id is in
[0, vocab_size), and checked when opened: magic, header fields, file size against `count`, and
(with verify=True, the default) the sha256 of the token bytes and the largest id. A truncated or
tampered shard therefore fails at open with a DataError naming the file, never mid-run.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path

import numpy as np

from lmlab.errors import DataError

MAGIC = b"LMLABTOK"
FORMAT = "lmlab-shard"
VERSION = 1
_ALIGN = 64
_MAX_HEADER = 1 << 20  # a header is a few hundred bytes; anything near 1 MiB is garbage
_DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
_HASH_CHUNK = 1 << 24  # hash in 16 MiB slices so verifying a large shard does not copy it whole


class Shard:
    """An opened, validated shard. `tokens` is a read-only np.memmap of `count` ids."""

    def __init__(self, path: Path, header: dict, tokens: np.ndarray):
        self.path = path
        self.header = header
        self.tokens = tokens
        self.dtype: str = header["dtype"]
        self.vocab_size: int = header["vocab_size"]
        self.sha256: str = header["sha256"]
        self.meta: dict = header.get("meta", {})

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    def __getitem__(self, index):
        return self.tokens[index]

    def __repr__(self) -> str:
        return (f"Shard({str(self.path)!r}, count={len(self)}, vocab_size={self.vocab_size}, "
                f"dtype={self.dtype})")


def dtype_for(vocab_size: int) -> str:
    """The smallest shard dtype that holds ids 0..vocab_size-1."""
    if not isinstance(vocab_size, (int, np.integer)) or vocab_size < 1:
        raise DataError(f"shard vocab_size must be a positive integer, got {vocab_size!r}")
    if vocab_size <= 1 << 16:
        return "uint16"
    if vocab_size <= 1 << 32:
        return "uint32"
    raise DataError(f"shard vocab_size {vocab_size} does not fit uint32 token ids")


def _sha256(tokens: np.ndarray) -> str:
    digest = hashlib.sha256()
    flat = tokens.reshape(-1)
    step = max(1, _HASH_CHUNK // max(1, flat.itemsize))
    for start in range(0, flat.shape[0], step):
        digest.update(np.ascontiguousarray(flat[start : start + step]).data)
    return digest.hexdigest()


def write_shard(path: str | Path, ids, vocab_size: int, meta: dict | None = None) -> Path:
    """Write token `ids` (any int sequence or array) to `path` atomically; return the path.

    Every id must be in [0, vocab_size); otherwise DataError names the shard, the first bad id
    and its position, and nothing is written.
    """
    path = Path(path)
    dtype = dtype_for(int(vocab_size))
    arr = np.asarray(ids)
    if arr.size == 0:
        arr = np.zeros(0, dtype=np.int64)
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: shard ids must be a flat sequence of integers, got {arr.dtype} {arr.shape}")
    if arr.size:
        bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
        if bad.size:
            i = int(bad[0])
            raise DataError(
                f"{path}: token id {int(arr[i])} at position {i} is outside the vocabulary "
                f"[0, {vocab_size}) ({bad.size} bad ids in all)"
            )
    data = arr.astype(_DTYPES[dtype], copy=False)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "dtype": dtype,
        "count": int(data.shape[0]),
        "vocab_size": int(vocab_size),
        "sha256": _sha256(data),
        "meta": dict(meta or {}),
    }
    blob = json.dumps(header, sort_keys=True).encode("utf-8")
    pad = (-(len(MAGIC) + 8 + len(blob))) % _ALIGN
    blob += b" " * pad

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC)
            f.write(struct.pack("<Q", len(blob)))
            f.write(blob)
            f.write(data.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not every platform lets a directory be opened.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_header(path: str | Path) -> tuple[dict, int]:
    """The validated JSON header of the shard at `path` and the byte offset of its tokens."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            prefix = f.read(len(MAGIC) + 8)
            if len(prefix) < len(MAGIC) + 8 or prefix[: len(MAGIC)] != MAGIC:
                raise DataError(f"{path}: not an lmlab token shard (bad magic bytes or file too short)")
            (hlen,) = struct.unpack("<Q", prefix[len(MAGIC) :])
            if hlen > _MAX_HEADER or len(prefix) + hlen > size:
                raise DataError(f"{path}: shard header length {hlen} is corrupt or the file is truncated")
            blob = f.read(hlen)
    except FileNotFoundError:
        raise DataError(f"{path}: token shard not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read token shard ({e.strerror or e})") from None
    try:
        header = json.loads(blob.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DataError(f"{path}: shard header is not valid JSON (file corrupt)") from None
    _check_header(path, header)
    offset = len(prefix) + hlen
    expected = offset + header["count"] * _DTYPES[header["dtype"]].itemsize
    if size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise DataError(
            f"{path}: shard {what}: header says {header['count']} {header['dtype']} tokens "
            f"({expected} bytes in all) but the file has {size} bytes"
        )
    return header, offset


def _check_header(path: Path, header) -> None:
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError(f"{path}: shard header is not an {FORMAT} header")
    if header.get("version") != VERSION:
        raise DataError(f"{path}: shard format version {header.get('version')!r}; this lmlab reads {VERSION}")
    if header.get("dtype") not in _DTYPES:
        raise DataError(f"{path}: shard dtype {header.get('dtype')!r}; expected uint16 or uint32")
    for key in ("count", "vocab_size"):
        value = header.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise DataError(f"{path}: shard header field {key!r} must be a non-negative integer, "
                            f"got {value!r}")
    if header["vocab_size"] < 1 or dtype_for(header["vocab_size"]) != header["dtype"]:
        raise DataError(f"{path}: shard vocab_size {header['vocab_size']} does not match "
                        f"dtype {header['dtype']}")
    digest = header.get("sha256")
    if not isinstance(digest, str) or len(digest) != 64:
        raise DataError(f"{path}: shard header has no valid sha256")


def open_shard(path: str | Path, verify: bool = True) -> Shard:
    """Open and validate the shard at `path`.

    The header and the file size are always checked. With verify=True the token bytes are
    hashed and compared with the header's sha256 and the largest id is checked against
    vocab_size: about a second per GB, cheap next to any training run.
    """
    path = Path(path)
    header, offset = read_header(path)
    dtype = _DTYPES[header["dtype"]]
    if header["count"] == 0:
        tokens = np.zeros(0, dtype=dtype)
    else:
        tokens = np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(header["count"],))
    if verify:
        if _sha256(tokens) != header["sha256"]:
            raise DataError(f"{path}: shard token bytes do not match the header sha256 "
                            "(file corrupt or edited)")
        if tokens.shape[0] and int(tokens.max()) >= header["vocab_size"]:
            raise DataError(
                f"{path}: shard holds token id {int(tokens.max())} >= its vocab_size {header['vocab_size']}"
            )
    return Shard(path, header, tokens)
