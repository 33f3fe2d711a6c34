"""Reading the files of a model dir that lmlab does not control: a Hugging Face download, a folder
someone sent, or an lmlab dir that was edited. Every foreign read goes through here.

A file is read only if it is a regular file (not a FIFO, which would block forever, nor a device
such as /dev/zero, which never ends) that resolves inside its dir: a link named `vocab.txt` that
points at a file elsewhere would otherwise be copied into the converted model. The one exception
is the Hugging Face hub cache, whose `models--ORG--NAME/snapshots/REV/` files are links to
`../../blobs/HASH`: there, targets inside the `models--*` folder are allowed.

Size caps, checked on the open file before reading (metadata and vocabularies are read whole):

- JSON metadata (config.json, MANIFEST.json, shard indexes, tokenizer_config.json, ...): 16 MiB;
  released configs are a few kB, indexes of 100-shard models a few hundred kB.
- Vocabulary files (tokenizer.json, vocab.json, vocab.txt, merges.txt, encoder.json, vocab.bpe):
  64 MiB; the largest released tokenizer.json files (250k-token multilingual vocabularies) are
  about 20 MB.
- A safetensors header: 100 MiB, the limit the safetensors library itself applies.

Weights have no cap (they are as big as the model); they are checked to be regular files inside
the dir and are read by their libraries. JSON nested deeper than Python's recursion limit is an
error like any other malformed JSON.
"""

from __future__ import annotations

import json
import os
import stat
import struct
from pathlib import Path

from lmlab.errors import LmlabError
from lmlab.paths import file_kind

MiB = 1 << 20
JSON_CAP = 16 * MiB
VOCAB_CAP = 64 * MiB
HEADER_CAP = 100 * MiB

VOCAB_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "merges.txt", "encoder.json", "vocab.bpe")
TOKENIZER_JSON_FILES = ("tokenizer_config.json", "special_tokens_map.json", "added_tokens.json")


def allowed_root(directory: Path) -> Path:
    """The folder files of `directory` may resolve into: itself, or a hub cache's `models--*`."""
    real = directory.resolve()
    if real.parent.name == "snapshots" and real.parent.parent.name.startswith("models--"):
        return real.parent.parent
    return real


def checked_path(path: Path, error: type[LmlabError]) -> Path:
    """`path` resolved, once it is known to be a regular file inside its dir's `allowed_root`.

    FileNotFoundError (for the caller's own message) when nothing is there, a dangling link included.
    """
    if not os.path.lexists(path):
        raise FileNotFoundError(path)
    try:
        root, real = allowed_root(path.parent), path.resolve()
    except (OSError, RuntimeError) as e:  # a loop of links (RuntimeError before Python 3.13)
        raise error(f"{path}: cannot be resolved ({e})") from None
    if not real.is_relative_to(root):
        raise error(f"{path}: a link to {real}, outside {root}; lmlab reads only files inside the model dir")
    try:
        mode = os.stat(real).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(path) from None
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: {file_kind(mode)}, expected a regular file")
    return real


def read_bytes(path: Path, cap: int, error: type[LmlabError]) -> bytes:
    """The whole of `path`, a regular file inside its dir of at most `cap` bytes."""
    real = checked_path(path, error)
    try:
        # O_NONBLOCK: were the file swapped for a FIFO since the check, open would not wait for a writer.
        fd = os.open(real, os.O_RDONLY | os.O_NONBLOCK)
    except OSError as e:
        raise error(f"{path}: cannot be read ({e.strerror})") from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise error(f"{path}: {file_kind(info.st_mode)}, expected a regular file")
        if info.st_size > cap:
            raise error(f"{path}: {info.st_size:,} bytes, more than the {cap:,} bytes lmlab reads from "
                        f"such a file")
        data = f.read(cap + 1)  # the file may have grown since fstat
    if len(data) > cap:
        raise error(f"{path}: more than the {cap:,} bytes lmlab reads from such a file")
    return data


def read_json(path: Path, cap: int, error: type[LmlabError]):
    """The JSON value in `path` (read as `read_bytes`); FileNotFoundError when it is absent."""
    data = read_bytes(path, cap, error)
    try:
        return json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise error(f"{path}: not valid JSON ({e})") from None
    except RecursionError:
        raise error(f"{path}: not valid JSON (nested too deeply)") from None


def check_files(directory: Path, names: tuple[str, ...], cap: int, error: type[LmlabError]) -> None:
    """Each of `names` present in `directory` is a regular file inside it of at most `cap` bytes.

    For files a library outside lmlab.checkpoints reads by path (the tokenizers): checked first."""
    for name in names:
        path = directory / name
        try:
            real = checked_path(path, error)
        except FileNotFoundError:
            continue
        size = os.stat(real).st_size
        if size > cap:
            raise error(f"{path}: {size:,} bytes, more than the {cap:,} bytes lmlab reads from such a file")


def check_tokenizer_files(directory: Path, error: type[LmlabError]) -> None:
    """Every tokenizer file lmlab or Hugging Face keeps in a model dir, checked as `check_files`."""
    check_files(directory, VOCAB_FILES, VOCAB_CAP, error)
    check_files(directory, TOKENIZER_JSON_FILES, JSON_CAP, error)


# safetensors dtype names -> bytes per element (the format's own list).
DTYPE_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E4M3": 1, "F8_E5M2": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}


def safetensors_shapes(path: Path, error: type[LmlabError]) -> dict[str, tuple[str, tuple[int, ...]]]:
    """{tensor name: (dtype, shape)} from a safetensors file's header, without reading the data.

    The header is an 8-byte little-endian length and that many bytes of JSON; only what the
    shapes need is checked here (the library checks the rest when the data is read)."""
    real = checked_path(path, error)
    bad = f"{path}: not a readable safetensors file"
    with open(real, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise error(f"{bad} (shorter than its 8-byte header length)")
        (n,) = struct.unpack("<Q", head)
        if n > HEADER_CAP:
            raise error(f"{bad} (header of {n:,} bytes, more than {HEADER_CAP:,})")
        raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise error(f"{bad} (its header is not JSON)") from None
    if not isinstance(header, dict):
        raise error(f"{bad} (its header is not a JSON object)")
    shapes = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        shape = entry.get("shape") if isinstance(entry, dict) else None
        dtype = entry.get("dtype") if isinstance(entry, dict) else None
        if not (isinstance(shape, list) and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                                                for s in shape) and dtype in DTYPE_BYTES):
            raise error(f"{bad} (tensor {name!r} has no valid dtype and shape in the header)")
        shapes[name] = (dtype, tuple(shape))
    return shapes
