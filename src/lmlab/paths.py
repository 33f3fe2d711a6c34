"""What a command writes, checked before the work so that a bad path fails at once, and the lock that
keeps a run dir to one process at a time.

Outputs. lmlab writes a file into a temp file beside it and renames that over the target (and the
safetensors library does the same), which would replace a device node such as /dev/null with a
regular file, and opening a FIFO would block. So an existing output path must be a regular file, a
link to one (its target is written, as `>` in a shell would) or, where a folder is expected, a
folder; anything else is refused before any work, and nothing is written beside it. A folder that
cannot hold files (under a file, under /proc, read-only) is found by making it and creating and
removing one probe file in it.

The lock. Two processes writing one run dir would interleave two histories in metrics.jsonl and mix
their checkpoints. `DirLock` holds an exclusive flock(2) on `DIR/.lmlab.lock` for as long as a run
(pretrain, finetune, convert, demo) writes DIR; a second process is refused in one line before it
writes anything. The kernel drops a flock when its holder exits, however it exits (SIGKILL, OOM
killer, power loss), so a crashed run never leaves a lock that blocks `--resume`; the lock file that
remains is harmless, and a holder removes it when it is done. On a filesystem without flock (some
FUSE and old NFS mounts: ENOLCK, ENOTSUP) the run goes on unlocked after a one-line warning: refusing
would make lmlab unusable there, and the lock is a guard against mistakes, not a security boundary.
A process may take the lock on a dir it already holds (`lmlab demo` runs `pretrain` into its own
dir): the inner hold is a no-op.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import inspect
import os
import socket
import stat
import sys
import time
from pathlib import Path

from lmlab.errors import ConfigError

LOCK_FILE = ".lmlab.lock"


def file_kind(mode: int) -> str:
    """What a file of this `st_mode` is, in words (for messages)."""
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _mode(path: Path, what: str) -> int | None:
    """st_mode of what `path` leads to (None: nothing there); a dangling link or a loop is refused."""
    try:
        return os.stat(path).st_mode
    except FileNotFoundError:
        if os.path.lexists(path):
            raise ConfigError(f"{what}: a link to nothing ({os.readlink(path)}); expected a file to "
                              f"write") from None
        return None
    except OSError as e:
        if e.errno == errno.ENOTDIR:
            return None  # under a file: the folder checks name it
        raise ConfigError(f"{what}: cannot be examined ({e.strerror})") from None


def check_file_target(path: str | Path, what: str | None = None) -> Path:
    """`path` as a file to (re)write: nothing yet, a regular file, or a link to one (then its target,
    which is what gets written). ConfigError for a folder, device, FIFO or socket."""
    path = Path(path)
    what = what or str(path)
    mode = _mode(path, what)
    if mode is None:
        return path
    if stat.S_ISDIR(mode):
        raise ConfigError(f"{what} is a folder; expected the path of a file to write")
    if not stat.S_ISREG(mode):
        raise ConfigError(f"{what} is {file_kind(mode)}, not a regular file; lmlab writes only regular "
                          f"files (choose a file path)")
    return path.resolve() if path.is_symlink() else path


def check_outputs(directory: Path, files: tuple[str, ...] = (), dirs: tuple[str, ...] = ()) -> None:
    """The files and sub-folders a command will write in `directory`: each nothing yet or of its kind."""
    for name in files:
        check_file_target(directory / name)
    for name in dirs:
        mode = _mode(directory / name, str(directory / name))
        if mode is not None and not stat.S_ISDIR(mode):
            raise ConfigError(f"{directory / name} is {file_kind(mode)}; expected a folder")


def _make_folder(folder: Path, what: str) -> None:
    """Make `folder` (and its parents), then prove a file can be created in it: one line otherwise."""
    for above in (folder, *folder.parents):
        mode = _mode(above, what)
        if mode is not None and not stat.S_ISDIR(mode):
            raise ConfigError(f"{what}: {above} is a file, not a folder")
        if mode is not None:
            break
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".lmlab-probe-{os.getpid()}"
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise ConfigError(f"{what}: cannot write in {folder} ({e.strerror})") from None


def output_file(path: str | Path, flag: str) -> Path:
    """`path` as a file to write (its folder made and shown writable): not a folder, device, FIFO or
    socket, not under a file. A link to a regular file gives the target."""
    path = Path(path)
    target = check_file_target(path, f"{flag} {path}")
    _make_folder(target.parent, f"{flag} {path}")
    return target


def output_dir(path: str | Path, flag: str = "--out", what: str = "a run dir") -> Path:
    """`path` as a folder to write into, made (with its parents) and shown writable."""
    path = Path(path)
    mode = _mode(path, f"{flag} {path}")
    if mode is not None and not stat.S_ISDIR(mode):
        raise ConfigError(f"{path} exists and is not a directory; {flag} must be {what}")
    _make_folder(path, f"{flag} {path}")
    return path


# ---------------------------------------------------------------- one process per run dir

_HELD: dict[tuple[int, int], int] = {}  # (st_dev, st_ino) of a locked dir -> holds in this process
_NO_LOCKS = {errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class DirLock:
    """An exclusive lock on a run dir for one process's whole run (see the module docstring).

    `DirLock(path, "pretrain")` makes the dir (output_dir) and takes the lock, or raises ConfigError
    naming the holder; `release()` (or leaving a `with` block) gives it back and removes the lock file."""

    def __init__(self, directory: str | Path, command: str, flag: str = "--out"):
        self.created = not os.path.lexists(directory)  # removed again at release if left empty
        self.directory = output_dir(directory, flag)
        st = os.stat(self.directory)
        self.key, self.fd = (st.st_dev, st.st_ino), None
        if self.key in _HELD:  # this process holds it already: nothing more to take
            _HELD[self.key] += 1
            return
        self.fd = self._acquire(command)
        _HELD[self.key] = 1

    def _acquire(self, command: str) -> int | None:
        path = self.directory / LOCK_FILE
        while True:
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
            except OSError as e:
                raise ConfigError(f"{path}: cannot open the run dir's lock file ({e.strerror})") from None
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                os.close(fd)
                raise ConfigError(f"{path} is not a regular file; remove it (it is the run dir's lock)")
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 300, 0).decode("utf-8", "replace").strip() or "another process"
                os.close(fd)
                raise ConfigError(f"{self.directory} is in use by another lmlab process ({holder}); wait "
                                  f"for it to finish or choose another --out") from None
            except OSError as e:
                os.close(fd)
                if e.errno not in _NO_LOCKS:
                    raise ConfigError(f"{path}: cannot lock the run dir ({e.strerror})") from None
                print(f"lmlab: warning: {self.directory} is on a filesystem without locks ({e.strerror}); "
                      f"nothing stops a second process from writing it", file=sys.stderr)
                return None
            try:  # the last holder may have removed the file between our open and flock: lock the new one
                same = os.stat(path, follow_symlinks=False).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        when = time.strftime("%Y-%m-%d %H:%M:%S")
        holder = f"pid {os.getpid()} on {socket.gethostname()}, lmlab {command} since {when}"
        with contextlib.suppress(OSError):  # who holds it, for a refused process's message (on a full
            os.ftruncate(fd, 0)  # disk the file stays empty: the lock holds all the same)
            os.pwrite(fd, (holder + "\n").encode(), 0)
        return fd

    def release(self) -> None:
        if self.key not in _HELD:
            return
        _HELD[self.key] -= 1
        if _HELD[self.key]:
            return
        del _HELD[self.key]
        if self.fd is not None:
            # Removed while still held: a process waiting on the old file sees it gone and retries.
            try:
                os.unlink(self.directory / LOCK_FILE)
            except OSError:
                pass  # the dir was moved away (convert --overwrite replaces it whole)
            os.close(self.fd)
            self.fd = None
        if self.created:
            with contextlib.suppress(OSError):
                self.directory.rmdir()  # only if empty: a command refused before writing leaves nothing

    def __enter__(self) -> DirLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def holds_dir(command: str, argument: str = "out"):
    """Decorate a command function whose `argument` is the dir it writes: it runs holding DirLock."""

    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def run(*args, **kwargs):
            with DirLock(signature.bind(*args, **kwargs).arguments[argument], command):
                return fn(*args, **kwargs)

        return run

    return wrap
