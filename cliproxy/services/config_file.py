"""The config file on disk: written atomically, and only over the version an edit was computed from.

`atomic_write` replaces the file so that a reader or a crash sees the old file or the new one,
whole; `replace_if_unchanged` does so only when the file is still the version read with
`read_version` (an operator's save is never overwritten); `remove_leftover_temp_files` clears the
temporary copies a killed process left. The only functions of the config write-back touching the
disk; what is written is computed by `cliproxy.services.writeback`.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import tempfile
from dataclasses import dataclass

__all__ = [
    "FileChanged",
    "FileVersion",
    "atomic_write",
    "current_version",
    "read_version",
    "remove_leftover_temp_files",
    "replace_if_unchanged",
]


class FileChanged(Exception):
    """The file on disk is no longer the version an edit was computed from: nothing was written."""


def _write_temp(target: str, text: str) -> str:
    """Write `text` to a new temporary file beside `target`, flushed and fsynced, with target's mode.

    Returns the temporary file's path. The first half of `atomic_write`; until the rename the
    target is untouched.
    """
    directory = os.path.dirname(target) or "."
    try:
        st: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        st = None
    fd, temp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        if st is not None:
            os.chmod(temp, stat.S_IMODE(st.st_mode))
            with contextlib.suppress(OSError):  # only root may give a file away; keep ours otherwise
                os.chown(temp, st.st_uid, st.st_gid)
        else:
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(temp, 0o666 & ~umask)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return temp


def _fsync_directory(directory: str) -> None:
    fd = os.open(directory or ".", os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | os.PathLike[str], text: str) -> None:
    """Replace the file at `path` with `text` so that a reader or a crash sees the old file or the new, whole.

    Temporary file in the same directory, write, flush, fsync, rename over the target, fsync the
    directory (so the rename itself survives a power cut). Keeps the file's mode (and owner, when
    allowed). A symlink is followed: its target is replaced, the link stays.
    """
    target = os.path.realpath(os.fspath(path))
    temp = _write_temp(target, text)
    try:
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(os.path.dirname(target))


def remove_leftover_temp_files(path: str | os.PathLike[str]) -> list[str]:
    """Remove the temporary copies `atomic_write` leaves beside `path` when the process is killed
    between creating one and renaming it (`.<name>.XXXXXXXX.tmp`, the `mkstemp` naming of
    `_write_temp`). For start-up, before anything writes the file: one server runs per config, so
    none of them is being written. Returns the paths removed.
    """
    target = os.path.realpath(os.fspath(path))
    directory = os.path.dirname(target) or "."
    leftover = re.compile(re.escape(f".{os.path.basename(target)}.") + r"[A-Za-z0-9_]{8}\.tmp")
    removed: list[str] = []
    for name in os.listdir(directory):
        if leftover.fullmatch(name):
            candidate = os.path.join(directory, name)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(candidate)
                removed.append(candidate)
    return removed


# ---------------------------------------------------------------------------------------------
# Compare-and-swap: never write over a version of the file that the edit was not computed from
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileVersion:
    """What identifies one version of a file: where it lives (device, inode), its stat times and
    size, and the SHA-256 of its bytes (stat times alone miss an in-place rewrite of the same size
    within one timestamp tick on a coarse-grained filesystem)."""

    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int
    sha256: str

    @property
    def stat_key(self) -> tuple[int, int, int, int, int]:
        return (self.device, self.inode, self.size, self.mtime_ns, self.ctime_ns)


def _stat_key(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def read_version(path: str | os.PathLike[str]) -> tuple[str, FileVersion]:
    """The file's text and its version, read so that the two belong together.

    Raises `FileChanged` when the file changed while it was being read (an editor writing it in
    place): the caller has no complete version to start from. `OSError`/`UnicodeDecodeError` as
    reading does.
    """
    target = os.path.realpath(os.fspath(path))
    with open(target, "rb") as handle:
        before = os.fstat(handle.fileno())
        data = handle.read()
        after = os.fstat(handle.fileno())
    now = os.stat(target)  # renamed over meanwhile: the path no longer names what we read
    if not (_stat_key(before) == _stat_key(after) == _stat_key(now)) or len(data) != before.st_size:
        raise FileChanged(f"{target} changed while it was being read")
    text = data.decode("utf-8")
    return text, FileVersion(*_stat_key(before), hashlib.sha256(data).hexdigest())


def current_version(path: str | os.PathLike[str]) -> FileVersion | None:
    """The version the file at `path` has now (None when it is missing)."""
    try:
        return read_version(path)[1]
    except FileNotFoundError:
        return None
    except FileChanged:
        # Being written right now: a version no caller can have read, so it matches none.
        return FileVersion(-1, -1, -1, -1, -1, "")


def replace_if_unchanged(path: str | os.PathLike[str], expected: FileVersion | None, text: str) -> os.stat_result:
    """`atomic_write`, but only when the file is still `expected` (None: still missing) at the rename.

    Returns the stat of the file written (its inode, size and mtime stay the same through the rename).

    Raises `FileChanged` (the file untouched, the temporary file removed) when someone else wrote
    the file after `expected` was read: an operator's save is never overwritten by a write computed
    from the text before it.

    The remaining window is between the last comparison and `os.replace`, both in this thread
    (microseconds: one stat, one read of the file, one rename). Callers hold the config manager's
    lock, so no write of ours races it; only another process can. A save that lands in that window
    is lost: a writer that renames its file into place has it replaced by ours, and one that writes
    in place (truncate, write) writes into the inode we just unlinked. POSIX has no
    rename-if-unchanged, and editors take no lock we could share, so the window cannot be closed
    from here without a moment where the file is missing (rename away, check, link in), which would
    break every reader. It is accepted: it is thousands of times narrower than the
    read-edit-validate-write span it replaces (hundreds of milliseconds for a large file), and an
    operator save is a rare, human-paced event.
    """
    target = os.path.realpath(os.fspath(path))
    temp = _write_temp(target, text)  # the slow part (write, fsync) before the comparison
    try:
        written = os.stat(temp)
        if current_version(target) != expected:
            raise FileChanged(f"{target} changed since it was read")
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    _fsync_directory(os.path.dirname(target))
    return written
