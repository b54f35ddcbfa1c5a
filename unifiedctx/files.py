"""Files the library writes and reads, safely: atomic writes, a lock, and the names of our temporaries.

Every file is written to a temporary file beside it and renamed over it (:func:`atomic_open`), so a
reader sees the old file or the new one, never half of one. A temporary file is named exactly like
:func:`tempfile.mkstemp` names it, ``.<target>.<8 random characters><suffix>``; only a name of that
exact form is ours (:func:`is_temporary_of`): ``.history.json.bak.tmp`` or ``.last.pt.keep.tmp`` are
a person's files, never removed as leftovers of ours.

:class:`FileLock` is an exclusive ``flock`` that names its holder; it refuses a lock file that was
not written by a lock (a person's ``.lock``) instead of overwriting it.

This module is at the bottom of the library's layers (beside :mod:`unifiedctx.validation`): the
data sets, the models and the trainer all use it, and it imports none of them.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

#: The characters and length of :mod:`tempfile`'s random part of a name.
_RANDOM_PART = r"[a-z0-9_]{8}"
#: What a lock file holds: who took it.
HOLDER_KEYS = ("pid", "host", "started")


def current_umask() -> int:
    """The process's umask (read without changing it, from ``/proc`` where there is one)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w"):
    """Open a temporary file beside ``path`` for writing; when the block ends without an error the
    file is flushed to disk and renamed over ``path`` (``os.replace``), otherwise it is removed. A
    reader therefore sees the old file or the new one, never half of one. The file gets the
    permissions of any file the user creates (``0o666`` less the umask). The temporary file is
    ``.<name>.<8 random characters>.tmp`` (:func:`is_temporary_of`); one left by a killed process
    is removed by the next run that owns the folder (:class:`unifiedctx.train.rundir.RunFolder`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({} if "b" in mode else {"newline": ""})) as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp makes 0600; this is a user's file
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_atomic(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_open`)."""
    with atomic_open(path) as f:
        f.write(text)


def is_temporary_of(name: str, targets, suffix: str = ".tmp") -> bool:
    """Whether ``name`` is exactly the name :mod:`tempfile` gives a temporary file or folder of one of
    ``targets`` (``prefix=".<target>."``, ``suffix=suffix``): ``.<target>.<8 of [a-z0-9_]><suffix>``.

    >>> [is_temporary_of(name, ["last.pt"]) for name in (".last.pt.k1ll3d_x.tmp", ".last.pt.bak.tmp")]
    [True, False]
    """
    match = re.fullmatch(rf"\.(?P<target>.+)\.{_RANDOM_PART}{re.escape(suffix)}", name)
    return match is not None and match["target"] in set(targets)


class FolderInUse(RuntimeError):
    """Another live process holds the lock (its pid, host and start time are named)."""


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path`` that writes who holds it into the file.

    ``acquire()`` raises :class:`FolderInUse` (naming the holder) when a live process holds it, and
    ``FileExistsError`` when ``path`` is a file that no lock wrote (it is left as it was);
    ``release()`` removes the file while still holding the lock. A process that opened the file
    just before it was removed notices (the path no longer names its inode) and tries again. The
    kernel drops a ``flock`` when its process dies, so the lock of a killed process is taken over.
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path, self.what, self.fd = Path(path), what, None

    def acquire(self, wait: bool = False) -> FileLock:
        """Take the lock (``wait``: block until its holder ends, instead of :class:`FolderInUse`)."""
        for _ in range(100):
            created = True
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                created = False
                try:
                    fd = os.open(self.path, os.O_RDWR)
                except FileNotFoundError:
                    continue  # its holder removed it meanwhile: again
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except OSError as err:
                os.close(fd)
                if err.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                raise FolderInUse(f"{self.what} is in use by another process ({self.holder()}); "
                                  "wait for it to end, or use another folder") from None
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)  # removed by its last holder between our open and our flock: again
                continue
            if not created and not _holds_a_holder(fd):
                os.close(fd)  # a person's file: neither written nor removed
                raise FileExistsError(f"{self.path} is a file that no lock of ours wrote, so {self.what} "
                                      "is not ours to lock: move that file away, or use another folder")
            self.fd = fd
            holder = {"pid": os.getpid(), "host": socket.gethostname(),
                      "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
            return self
        raise FolderInUse(f"could not lock {self.path}: it keeps being replaced")

    def holder(self) -> str:
        """``"pid P on HOST since TIME"`` as the holder wrote it (or what is known)."""
        try:
            info = json.loads(self.path.read_text() or "{}")
            return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"
        except (OSError, ValueError, AttributeError):
            return f"the holder of {self.path}"

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            self.path.unlink(missing_ok=True)
        finally:
            os.close(self.fd)  # closing drops the flock
            self.fd = None

    def __enter__(self) -> FileLock:
        return self if self.fd is not None else self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holds_a_holder(fd: int) -> bool:
    """Whether the open file ``fd`` holds what :meth:`FileLock.acquire` writes: a JSON object with
    ``pid``, ``host`` and ``started`` (the lock of a process that was killed)."""
    try:
        text = os.pread(fd, 4096, 0).decode()
        info = json.loads(text)
    except (OSError, ValueError):
        return False
    return isinstance(info, dict) and set(HOLDER_KEYS) <= set(info)
