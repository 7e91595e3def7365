"""What a reader raises when a run dir cannot be read as asked (a usage error, exit 2).

Bad data inside a file is not an error: it is a `tail.BadLine`, reported and skipped.
An error is about the file itself: missing where it must be, or not a regular file (a
FIFO would block the reader forever, a device would never end, a directory or a
symlink loop cannot be read at all).
"""

from __future__ import annotations

import os
import stat


class RunLogError(ValueError):
    """The run dir cannot be read as asked; the message is one sentence for the user."""


_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
          (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISSOCK, "a socket"))


def check_regular(path: str, st: os.stat_result) -> None:
    """Raise `RunLogError` unless ``st`` (of ``path``, symlinks followed) is a regular file."""
    if stat.S_ISREG(st.st_mode):
        return
    what = next((name for test, name in _KINDS if test(st.st_mode)), "not a regular file")
    raise RunLogError(f"{path} is {what}, not a regular file; healthcheck reads only regular "
                      f"files (a FIFO or a device may never end): pass the file itself")


def stat_regular(path: str) -> os.stat_result | None:
    """`os.stat` of a file a reader is about to open: None if it does not exist (yet);
    `RunLogError` if it cannot be read or is not a regular file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as err:  # a symlink loop, a name too long, no permission on a folder
        raise RunLogError(f"{path} cannot be read ({err.strerror or err}); "
                          f"pass a regular file a run wrote") from None
    check_regular(path, st)
    return st
