"""Checks of the paths a command writes, made before the work so that a bad one fails at once."""

from __future__ import annotations

from pathlib import Path

from lmlab.errors import ConfigError


def output_file(path: str | Path, flag: str) -> Path:
    """`path` as a file to write (its folder made): not an existing folder, not under a file."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{flag} {path} is a folder; expected the path of a file to write")
    parent = path.parent
    for folder in (parent, *parent.parents):
        if folder.exists() and not folder.is_dir():
            raise ConfigError(f"{flag} {path}: {folder} is a file, not a folder")
        if folder.exists():
            break
    parent.mkdir(parents=True, exist_ok=True)
    return path
