"""Files written whole or not at all (a temporary file beside the target, then a rename), and
an exclusive lock on a folder for the one imdbsent process that writes into it.

`atomic_write` names its temporaries `.NAME.imdbsent-XXXXXXXX.tmp`; `sweep_temporaries` removes
files of that pattern only, so another program's `.something.tmp` in the same folder survives.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import stat
import time
from collections.abc import Callable
from pathlib import Path

from imdbsent.errors import UserError

LOCK_NAME = ".lock"
TEMP_TAG = "imdbsent"
_TEMP_PATTERN = re.compile(rf"^\..+\.{TEMP_TAG}-[0-9a-f]{{8}}\.tmp$", re.DOTALL)
_NAME_ROOM = 200  # bytes of the target's name kept in a temporary's name (NAME_MAX is 255)
_LOCK_TRIES = 5  # is_locked's probe holds the lock for an instant: retry before refusing


def temporary_name(target: str) -> str:
    """A fresh temporary name for `target` (a file name, no folder) in atomic_write's pattern."""
    stem = target.encode()[:_NAME_ROOM].decode(errors="ignore")
    return f".{stem}.{TEMP_TAG}-{secrets.token_hex(4)}.tmp"


def is_temporary(name: str) -> bool:
    """Whether a file name is one of atomic_write's temporaries."""
    return bool(_TEMP_PATTERN.match(name))


def atomic_write(path: Path, write: Callable[[Path], None]) -> None:
    """Call `write(tmp)` to fill a temporary file, fsync it, then rename it over `path`.

    A crash at any moment leaves `path` either as it was or complete; a failure (disk full,
    read-only folder) leaves it untouched and raises a UserError naming the file. The file gets
    the permissions a plain open() would give it (0o666 less the umask, or the folder's default
    ACL), even when `write` replaces the temporary file with one of its own (safetensors does).
    """
    path = Path(path)
    tmp = None
    try:
        tmp, mode = _create_temporary(path)
        write(tmp)
        if stat.S_IMODE(os.stat(tmp).st_mode) != mode:
            os.chmod(tmp, mode)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        tmp = None
        _fsync_dir(path.parent)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror or exc}") from exc
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)


def _create_temporary(path: Path) -> tuple[Path, int]:
    """Create an empty temporary beside `path` as open() would (the kernel applies the umask,
    so it is never read or changed here: os.umask would race with other threads); return it and
    the permission bits it got."""
    for _ in range(100):
        tmp = path.parent / temporary_name(path.name)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0),
                         0o666)
        except FileExistsError:
            continue
        try:
            return tmp, stat.S_IMODE(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
    raise OSError(errno.EEXIST, f"no free temporary name beside {path.name}")


def atomic_write_text(path: Path, text: str) -> None:
    """Write a text file atomically (UTF-8)."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def append_line(path: Path, line: str) -> None:
    """Append one line to a log file by rewriting it atomically, so a crash never leaves half a line."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    atomic_write_text(path, old + line.rstrip("\n") + "\n")


def sweep_temporaries(folder: Path) -> list[Path]:
    """Remove the temporaries a killed atomic_write left in `folder` (not in its subfolders) and
    return them. Only atomic_write's own names are touched. Call it only while holding the
    folder's lock: a live writer's temporary looks the same as a dead one's."""
    removed = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        if is_temporary(entry.name) and entry.is_file(follow_symlinks=False):
            try:
                os.unlink(entry.path)
            except FileNotFoundError:
                continue
            removed.append(Path(entry.path))
    return removed


# Locks this process holds, by resolved folder: flock conflicts between two descriptors of the
# same process too, so is_locked must know which locks are our own.
_HELD: dict[Path, int] = {}


class FolderLock:
    """An exclusive lock on `folder` for one imdbsent process (`holder` names its job: "train",
    "prepare"), held with flock on `folder/.lock`, which records the holder's PID.

    flock, not a PID file: the kernel releases the lock when its holder exits or is killed, so
    a dead process never holds a folder forever. On acquiring, it sweeps the temporaries a
    killed writer left behind. A busy folder raises a UserError naming the holder's PID, ending
    with `advice`. The folder must exist.
    """

    def __init__(self, folder: Path, holder: str, *, advice: str = "wait for it to finish"
                 ) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.holder, self.advice = holder, advice
        self._fd: int | None = None
        self._key: Path | None = None

    def __enter__(self) -> FolderLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        except OSError as exc:
            raise UserError(f"cannot lock {self.folder}: {exc.strerror or exc}") from None
        for attempt in range(_LOCK_TRIES):
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if attempt + 1 < _LOCK_TRIES:
                    time.sleep(0.02)
                    continue
                pid = _read_pid(fd)
                os.close(fd)
                raise UserError(f"{self.folder} is in use by another imdbsent {self.holder} "
                                f"process (pid {pid}); {self.advice}") from None
            except OSError as exc:  # a file system without flock, say
                os.close(fd)
                raise UserError(f"cannot lock {self.folder}: {exc.strerror or exc}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the lock holds without the PID; a refused process then says "pid ?"
        self._fd = fd
        self._key = self.folder.resolve()
        _HELD[self._key] = _HELD.get(self._key, 0) + 1
        sweep_temporaries(self.folder)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is None:
            return
        if self._key is not None:
            _HELD[self._key] -= 1
            if not _HELD[self._key]:
                del _HELD[self._key]
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = self._key = None


def is_locked(folder: Path) -> bool:
    """Whether another process holds `folder`'s FolderLock now (a non-blocking probe; a folder
    without a lock file, or one this process holds, is not locked by another)."""
    folder = Path(folder)
    try:
        if folder.resolve() in _HELD:
            return False
        fd = os.open(folder / LOCK_NAME, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def _read_pid(fd: int) -> str:
    try:
        return os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
    except OSError:
        return "?"


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
