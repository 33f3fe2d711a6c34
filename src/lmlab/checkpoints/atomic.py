"""Crash-safe writing: temp names, fsync, rename, and a MANIFEST.json (file -> size, sha256) last.

A folder without a valid manifest does not exist as far as lmlab is concerned: a crash at any point
of a write leaves either the old content with its manifest, or no manifest at all. A write that
fails (a full disk, a read-only filesystem) removes its temp file or folder and is one line
(`temp_output`); a target that is not a regular file is never renamed over (lmlab.paths).

JSON that lmlab writes never holds bare NaN or Infinity, which are not JSON (`finite_json`).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import shutil
from pathlib import Path

from safetensors import SafetensorError

from lmlab.checkpoints.files import JSON_CAP, checked_path, read_bytes
from lmlab.errors import CheckpointError, LmlabError, OutputError
from lmlab.paths import check_file_target

MANIFEST = "MANIFEST.json"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """`data` into `path` through a temp file beside it (removed if the write fails: OutputError); a
    `path` that is a folder, device, FIFO or socket is refused (ConfigError), a link to a file writes
    its target."""
    path = check_file_target(path)
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with temp_output(tmp, str(path), error=OutputError):  # a full disk: one line naming `path`
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)


def io_reason(e: BaseException) -> str:
    """What went wrong in an OSError or a safetensors I/O error, in a few words."""
    if isinstance(e, OSError):
        return e.strerror or str(e)
    text = str(e)  # safetensors: "Error while serializing: I/O error: No space left on device (os error 28)"
    reason = text.split("I/O error: ", 1)[-1].split(" at path ")[0].strip()
    return re.sub(r" \(os error \d+\)$", "", reason) or type(e).__name__


@contextlib.contextmanager
def temp_output(tmp: Path, what: str, kept: str = "", error: type[LmlabError] = CheckpointError):
    """Run a write into the temp file or folder `tmp`; if it fails, `tmp` is removed, and an OSError
    (a full disk, a read-only or vanished folder) becomes one `error` line naming `what` and `kept`
    (what is left as it was)."""
    try:
        yield tmp
    except BaseException as e:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        # A write inside (a file of the folder `tmp`) that failed the same way: told as this one.
        reason = io_reason(e) if isinstance(e, (OSError, SafetensorError)) else getattr(e, "io_reason", None)
        if reason is None:
            raise
        failure = error(f"{what}: cannot write ({reason}){kept}")
        failure.io_reason = reason
        raise failure from None


def finite_json(obj, **options) -> str:
    """`json.dumps(obj)` with every NaN, Infinity and -Infinity written as null, never as bare NaN
    (not JSON: strict readers such as jq and JavaScript's JSON.parse refuse it). When `obj` is an
    object, the values stay known: it gets `"non_finite": {PATH: "nan" | "inf" | "-inf"}`, PATH the
    key (dotted and indexed below the top: `dev_metrics.f1`, `losses[3]`)."""
    found: dict[str, str] = {}

    def clean(x, where: str):
        if isinstance(x, float) and not math.isfinite(x):
            found[where] = "nan" if x != x else ("inf" if x > 0 else "-inf")
            return None
        if isinstance(x, dict):
            return {k: clean(v, f"{where}.{k}" if where else str(k)) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v, f"{where}[{i}]") for i, v in enumerate(x)]
        return x

    out = clean(obj, "")
    if found and isinstance(out, dict):
        out["non_finite"] = found
    return json.dumps(out, allow_nan=False, **options)


def write_manifest(directory: Path, files: list[str]) -> None:
    """Record each file's size and sha256; written last, so its presence means 'complete'."""
    entries = {}
    for name in sorted(files):
        path = directory / name
        fsync_path(path)
        entries[name] = {"size": path.stat().st_size, "sha256": sha256_file(path)}
    write_bytes_atomic(directory / MANIFEST, json.dumps({"files": entries}, indent=1).encode())
    fsync_path(directory)


def read_manifest(directory: Path, verify: bool = True) -> dict:
    """The manifest's file table; CheckpointError if it is missing or a file does not match it."""
    path = directory / MANIFEST
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such model directory")
    if not os.path.lexists(path):
        raise CheckpointError(f"{directory}: no {MANIFEST}; the folder is incomplete or not an lmlab model")
    files = _manifest_files(path)
    for name, entry in files.items():
        target = directory / name
        try:
            real = checked_path(target, CheckpointError)  # a regular file inside the folder
        except FileNotFoundError:
            raise CheckpointError(f"{target}: listed in {MANIFEST} but missing") from None
        if real.stat().st_size != entry["size"]:
            raise CheckpointError(f"{target}: size {real.stat().st_size} bytes, manifest says "
                                  f"{entry['size']}; the file is truncated or was changed")
        if verify and sha256_file(real) != entry["sha256"]:
            raise CheckpointError(f"{target}: sha256 does not match {MANIFEST}; the file is corrupt")
    return files


def _manifest_files(path: Path) -> dict:
    """The file table of the manifest at `path`, its shape checked: {name: {"size", "sha256"}}."""
    try:
        manifest = json.loads(read_bytes(path, JSON_CAP, CheckpointError).decode("utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent}: no {MANIFEST}; the folder is incomplete or not an lmlab "
                              f"model") from None
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"{path}: unreadable manifest ({e})") from None
    files = manifest.get("files") if isinstance(manifest, dict) else None
    # Names are plain files of this folder: a manifest never makes us read (or hash) elsewhere.
    ok = isinstance(files, dict) and all(
        name not in ("", ".", "..") and Path(name).name == name
        and isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
        for name, e in files.items())
    if not ok:
        raise CheckpointError(f'{path}: unreadable manifest (expected {{"files": {{NAME: {{"size": '
                              f'BYTES, "sha256": HEX}}}}}})')
    return files


def commit_dir(tmp: Path, final: Path) -> None:
    """Move a fully written temp folder into place (the old one, if any, goes only after)."""
    fsync_path(tmp)
    if final.exists():
        old = final.with_name(f"{final.name}.old-{os.getpid()}")
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    fsync_path(final.parent)
