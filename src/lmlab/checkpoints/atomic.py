"""Crash-safe writing: temp names, fsync, rename, and a MANIFEST.json (file -> size, sha256) last.

A folder without a valid manifest does not exist as far as lmlab is concerned: a crash at any point
of a write leaves either the old content with its manifest, or no manifest at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

from lmlab.checkpoints.files import JSON_CAP, checked_path, read_bytes
from lmlab.errors import CheckpointError

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
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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
