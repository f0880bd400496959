"""The files and directories FerroHSM writes: every file 0600, every directory 0700,
whatever the process umask is -- which is never changed (we are a library loaded into
other programs, whose umask is theirs).  The mode is given to open()/mkdir() (a umask
can only take bits away), and a file of ours found wider (made by an older release) is
narrowed when it is opened for writing.  A configuration file or token directory that
group or others can write is warned about once per process (WARNING): whoever can write
them can change what this process trusts."""

from __future__ import annotations

import os
from pathlib import Path

from .log import LOG

FILE_MODE, DIR_MODE = 0o600, 0o700
_warned: set = set()


def private_dir(path) -> Path:
    """`path` and any missing parent, each made 0700 (existing ones are left as they are)."""
    path = Path(path)
    missing = []
    while not path.exists() and path != path.parent:
        missing.append(path)
        path = path.parent
    for p in reversed(missing):
        try:
            os.mkdir(p, DIR_MODE)
        except FileExistsError:
            pass
    return Path(missing[0]) if missing else path


def private_fd(path, flags: int = os.O_WRONLY | os.O_CREAT | os.O_APPEND) -> int:
    """An fd of `path` opened with `flags` (created 0600); a file of ours that is wider
    is narrowed to 0600."""
    fd = os.open(path, flags | os.O_CLOEXEC, FILE_MODE)
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077 and st.st_uid == os.geteuid():
            os.fchmod(fd, FILE_MODE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def touch_private(path) -> None:
    """Make sure `path` exists as a 0600 file (before another library opens it)."""
    private_dir(Path(path).parent)
    os.close(private_fd(path, os.O_WRONLY | os.O_CREAT))


def append_private(path, text: str) -> None:
    """Append `text` to a 0600 file and fsync it."""
    fd = private_fd(path)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def warn_if_shared(path, what: str) -> None:
    """One WARNING per process if `path` (a config file, a token directory) is writable by
    group or others."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return
    if mode & 0o022 and (what, str(path)) not in _warned:
        _warned.add((what, str(path)))
        LOG.warning("%s %s is writable by %s (mode %03o): whoever can write it can change "
                    "what FerroHSM trusts; chmod go-w it", what, path,
                    " and ".join(w for bit, w in ((0o020, "group"), (0o002, "others")) if mode & bit),
                    mode & 0o777)
