"""A run owns its folder: :class:`RunFolder` claims ``out`` for one :func:`~unifiedctx.train.fit`.

While a run lives, ``out/.lock`` is held with ``fcntl.flock`` (the kernel drops the lock when its
process dies, so a lock left by a killed run is simply taken over) and names its holder
(``pid``, host, start time). A second process into the same folder stops at once with
:class:`FolderInUse` naming that holder. On a successful claim, the temporary files that a
killed process left behind (``.<run file>.*.tmp`` of :func:`~unifiedctx.train.history.atomic_open`)
are removed: nobody else may be writing there while we hold the lock.

A folder holding anything but this run's own files is refused (``FileExistsError`` naming the
files and the way out, ``allow_foreign=True`` / ``--allow-foreign``):

* a new run accepts an empty folder, or one whose ``config.json`` records this very model and
  recipe (the same run, killed before its first checkpoint);
* a resumed run (``last.pt`` there, ``resume=True``) accepts the run files
  :data:`RUN_FILES` (and ``rank<R>.pt``).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import time
from pathlib import Path

#: The files a run writes into its folder (plus ``rank<R>.pt`` with ``save_rank_weights``).
RUN_FILES = ("last.pt", "best.pt", "history.json", "history.csv", "config.json")
LOCK_NAME = ".lock"
#: Flag (keyword of fit) and option (of ``unifiedctx train``) that accept a folder with other files.
ALLOW_FLAG = "allow_foreign=True (--allow-foreign)"
_RANK_FILE = re.compile(r"rank\d+\.pt")


class FolderInUse(RuntimeError):
    """Another live process holds the run folder's lock (its pid, host and start time are named)."""


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or bool(_RANK_FILE.fullmatch(name))


def _is_temp_file(name: str) -> bool:
    """A temporary file of :func:`atomic_open` for a run file: ``.<run file>.<random>.tmp``."""
    if not (name.startswith(".") and name.endswith(".tmp")):
        return False
    target = name[1:].rsplit(".", 2)[0]
    return _is_run_file(target)


class FileLock:
    """An exclusive, non-blocking ``flock`` on ``path`` that writes who holds it into the file.

    ``acquire()`` raises :class:`FolderInUse` (naming the holder) when a live process holds it;
    ``release()`` removes the file while still holding the lock. A process that opened the file
    just before it was removed notices (the path no longer names its inode) and tries again.
    """

    def __init__(self, path: str | os.PathLike, what: str):
        self.path, self.what, self.fd = Path(path), what, None

    def acquire(self, wait: bool = False) -> FileLock:
        """Take the lock (``wait``: block until its holder ends, instead of :class:`FolderInUse`)."""
        for _ in range(100):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
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
            if same:
                self.fd = fd
                holder = {"pid": os.getpid(), "host": socket.gethostname(),
                          "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
                os.ftruncate(fd, 0)
                os.write(fd, (json.dumps(holder) + "\n").encode())
                return self
            os.close(fd)  # removed by its last holder between our open and our flock: again
        raise FolderInUse(f"could not lock {self.path}: it keeps being replaced")

    def holder(self) -> str:
        """``"pid P on HOST since TIME"`` as the holder wrote it (or what is known)."""
        try:
            info = json.loads(self.path.read_text() or "{}")
            return f"pid {info.get('pid')} on {info.get('host')} since {info.get('started')}"
        except (OSError, ValueError):
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


class RunFolder:
    """Claim ``out`` for one run: lock it, remove stale temporary files, refuse foreign files.

    Args:
        out: the run's folder (created if missing, parents included).
        resuming: ``out/last.pt`` exists and the caller resumes from it.
        config: what this run writes into ``config.json`` (its ``model`` and ``recipe`` decide
            whether a ``config.json`` found in a new run's folder is this run's own).
        allow_foreign: accept a folder that holds other files (run files there are overwritten).
    """

    def __init__(self, out: str | os.PathLike, *, resuming: bool, config: dict, allow_foreign: bool = False):
        self.out, self.resuming, self.config, self.allow_foreign = Path(out), resuming, config, allow_foreign
        self.lock = FileLock(self.out / LOCK_NAME, f"run folder {self.out}")

    def __enter__(self) -> RunFolder:
        if self.out.exists() and not self.out.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, "out must be a folder, but this is a file", str(self.out))
        self.out.mkdir(parents=True, exist_ok=True)
        self.lock.acquire()
        try:
            self._remove_stale_temporaries()
            self._refuse_foreign_files()
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def _remove_stale_temporaries(self) -> None:
        for path in self.out.iterdir():
            if _is_temp_file(path.name) and path.is_file():
                path.unlink(missing_ok=True)

    def _own_config(self, path: Path) -> bool:
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        keys = ("model", "recipe")
        return isinstance(stored, dict) and all(stored.get(k) == self.config.get(k) for k in keys)

    def _refuse_foreign_files(self) -> None:
        if self.allow_foreign:
            return
        names = sorted(p.name for p in self.out.iterdir() if p.name != LOCK_NAME)
        if self.resuming:
            foreign = [n for n in names if not _is_run_file(n)]
        else:
            foreign = [n for n in names if not (n == "config.json" and self._own_config(self.out / n))]
        if foreign:
            shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
            whose = ("files that are not this run's" if self.resuming
                     else "files of another run or of a person")
            raise FileExistsError(f"{self.out} holds {whose} ({shown}); a run owns its folder: choose an "
                                  f"empty or new folder, or pass {ALLOW_FLAG} to write into it anyway "
                                  "(files named like a run's are then overwritten)")
