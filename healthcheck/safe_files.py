"""Writing inside a run directory without ever leaving it.

A run directory may come from elsewhere (a tarball, a colleague's share), so any name in
it may be a symbolic link to a file the user can write. Every writer here therefore:

* creates temporaries exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``) under a fresh name,
  so a planted ``gate.json.tmp`` link is never followed, and renames them into place (a
  rename replaces a link itself, never its target);
* opens the append-only logs (health.jsonl, metrics.jsonl) with ``O_NOFOLLOW`` and only
  when they are regular files, refusing a link with a one-sentence `RunFileError`;
* refuses an output folder inside the run (``report/``) that is a link.

A write that fails (read-only folder, full disk) removes its temporary and raises a
`RunFileError` whose message is one sentence naming the file and what to do.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Callable
from typing import BinaryIO

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)


class RunFileError(OSError):
    """A file of a run directory cannot be written safely; the message says which and why.

    ``str()`` is the sentence alone; ``errno`` keeps the cause (``ENOSPC``, ``ELOOP``, …).
    """

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(message)
        self.errno = code


def write_failure(path: str | os.PathLike, exc: OSError) -> RunFileError:
    """One sentence for an OSError met while writing ``path``."""
    path = os.fspath(path)
    if isinstance(exc, RunFileError):
        return exc
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return RunFileError(exc.errno, f"cannot write {path}: the disk is full ({exc.strerror}); "
                                       f"free some space and run again")
    if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        return RunFileError(exc.errno, f"cannot write {path}: {exc.strerror}; choose a writable directory")
    return RunFileError(exc.errno, f"cannot write {path}: {exc.strerror or exc}")


def _symlink_error(path: str, what: str) -> RunFileError:
    return RunFileError(errno.ELOOP, f"{path} is a symbolic link; refusing to write {what} through it "
                                     f"(replace it with a regular {what.split()[0]} inside the run directory)")


def real_dir(path: str | os.PathLike) -> str:
    """Make folder ``path`` if needed and refuse it when it is a link or not a folder."""
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
    except FileExistsError:
        pass  # a file or a dangling link: lstat below says which
    except OSError as exc:
        raise write_failure(path, exc) from None
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        raise _symlink_error(path, "folder contents")
    if not stat.S_ISDIR(st.st_mode):
        raise RunFileError(errno.ENOTDIR, f"{path} is not a folder; move it away or choose another directory")
    return path


def open_append(path: str | os.PathLike) -> BinaryIO:
    """``path`` opened for reading and appending, created if absent, never through a link
    and only if it is a regular file (a FIFO would block the writer forever)."""
    path = os.fspath(path)
    flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | _NOFOLLOW | _CLOEXEC | _NONBLOCK
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as exc:
        if exc.errno == errno.ELOOP or (exc.errno == errno.EMLINK and os.path.islink(path)):
            raise _symlink_error(path, "file contents") from None
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            raise RunFileError(exc.errno, f"{path} is not a regular file; move it away and run again") from None
        raise write_failure(path, exc) from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunFileError(errno.EINVAL, f"{path} is not a regular file; move it away and run again")
        if _NONBLOCK:
            os.set_blocking(fd, True)
        return os.fdopen(fd, "a+b")
    except BaseException:
        os.close(fd)
        raise


def write_atomic(path: str | os.PathLike, data: bytes | Callable[[BinaryIO], None], *, fsync: bool = True) -> str:
    """Write ``path`` through an exclusive temporary in its folder and a rename, so a reader
    never sees half a file and a planted link is replaced rather than followed.

    ``data`` is the bytes, or a function that writes them to the open temporary (e.g.
    ``lambda fh: torch.save(state, fh)``). The temporary is removed if anything fails.
    """
    path = os.fspath(path)
    folder, name = os.path.split(path)
    fd, tmp = _exclusive_temp(folder or ".", name)
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise write_failure(path, exc) from None
        raise
    return path


def _exclusive_temp(folder: str, name: str) -> tuple[int, str]:
    """A new file ``.NAME.<random>.tmp`` in ``folder``, created exclusively, never a link."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW | _CLOEXEC
    for _ in range(100):
        tmp = os.path.join(folder, f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
        except OSError as exc:
            raise write_failure(os.path.join(folder, name), exc) from None
    raise RunFileError(errno.EEXIST, f"cannot create a temporary file in {folder}; remove its stale .*.tmp files")


def writable_dir(path: str | os.PathLike, *, own: bool = False) -> str:
    """Make folder ``path`` if needed and check now that it can take a new file, so a
    command fails before its work rather than after it. ``own=True`` marks a folder the
    run directory owns (``report/``), which must not be a link."""
    path = os.fspath(path)
    if own:
        real_dir(path)
    else:
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as exc:
            raise write_failure(path, exc) from None
        if not os.path.isdir(path):
            raise RunFileError(errno.ENOTDIR, f"{path} is not a folder; choose another directory")
    fd, tmp = _exclusive_temp(path, "write-check")
    os.close(fd)
    os.unlink(tmp)
    return path


def report_dirs(run_dir: str | os.PathLike, out: str | os.PathLike, png_dir: str | os.PathLike | None) -> str:
    """Make and check the folders a report writes to, before any of it is built: the
    figures' folder (default ``RUN_DIR/report``, which must not be a link) and the HTML's.
    A run dir that is not a folder is left for the reader to refuse: nothing is made then."""
    if not os.path.isdir(run_dir):
        return os.fspath(png_dir) if png_dir is not None else os.path.join(os.fspath(run_dir), "report")
    own = png_dir is None
    folder = os.fspath(png_dir) if png_dir is not None else os.path.join(os.fspath(run_dir), "report")
    writable_dir(folder, own=own)
    writable_dir(os.path.dirname(os.path.abspath(out)))
    return folder


__all__ = ["RunFileError", "open_append", "real_dir", "report_dirs", "writable_dir", "write_atomic", "write_failure"]
