"""A run owns its folder: :func:`claim_folder` claims ``out`` for one :func:`~unifiedctx.train.fit`
on every rank at once (:class:`RunFolder` on rank 0), and :func:`write_config` writes its ``config.json``.

While a run lives, ``out/.lock`` is held (:class:`unifiedctx.files.FileLock`: ``fcntl.flock``, naming
its holder's pid, host and start time; the kernel drops it when its process dies, so the lock of a
killed run is simply taken over). A second process into the same folder stops at once with
:class:`~unifiedctx.files.FolderInUse` naming that holder.

Nothing is removed from a folder before it is known to be ours, and only names we write ourselves,
exactly, are ours: :data:`RUN_FILES`, ``rank<R>.pt``, the snapshots of a watched run
(:func:`unifiedctx.inspection.snapshots.owns`: ``snapshots.json``, ``snapshots.probe.npz``,
``snapshots.e<epoch>.npz``), and their temporaries as :func:`~unifiedctx.files.atomic_open` names
them (``.<run file>.<8 random characters>.tmp``). A folder holding anything else is refused
(``FileExistsError`` naming the files and the way out, ``allow_foreign=True`` / ``--allow-foreign``),
and nothing in it is touched:

* a new run accepts an empty folder, or one whose ``config.json`` records this very model and
  recipe (the same run, killed before its first checkpoint: with its snapshots, if it was watched);
* a resumed run (``last.pt`` there, ``resume=True``) accepts the run files.

Once the folder is ours, the temporaries a killed run left there are removed (nobody else may be
writing there while we hold the lock). With ``allow_foreign=True`` the folder is not known to be
ours, so nothing in it is removed. An existing ``out/last.pt`` without ``resume=True`` is a
``FileExistsError``. Under DDP the claim's outcome is all-reduced, so when it fails every rank stops
(rank 0 with the claim's own error).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
from pathlib import Path

import torch

from ..files import LOCK_NAME, FileLock, is_temporary_of, model_config, write_atomic
from ..inspection import snapshots
from . import distributed as D

#: The files a run writes into its folder (plus ``rank<R>.pt`` with ``save_rank_weights``, and a
#: watched run's snapshots: :func:`unifiedctx.inspection.snapshots.owns`). A new file of the run is
#: owned by adding its name here.
RUN_FILES = ("last.pt", "best.pt", "history.json", "history.csv", "config.json")
#: The keyword of fit that accepts a folder with other files (the command line's error names its own
#: option for it, ``--allow-foreign``: ``unifiedctx.cli`` translates the keywords of its flags).
ALLOW_FLAG = "allow_foreign=True"
_RANK_FILE = re.compile(r"rank\d+\.pt")


def _is_run_file(name: str) -> bool:
    return name in RUN_FILES or bool(_RANK_FILE.fullmatch(name)) or snapshots.owns(name)


def _is_our_temporary(name: str) -> bool:
    """A temporary file of :func:`~unifiedctx.files.atomic_open` for a run file, named exactly so."""
    target = name[1:].rsplit(".", 2)[0] if name.startswith(".") else ""
    return _is_run_file(target) and is_temporary_of(name, [target])


class RunFolder:
    """Claim ``out`` for one run: lock it, refuse foreign files, then remove our stale temporaries.

    Args:
        out: the run's folder (created if missing, parents included).
        resuming: ``out/last.pt`` exists and the caller resumes from it.
        config: what this run writes into ``config.json`` (its ``model`` and ``recipe`` decide
            whether a ``config.json`` found in a new run's folder is this run's own).
        allow_foreign: accept a folder that holds other files (run files there are overwritten;
            nothing else in it is touched).
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
            if not self.allow_foreign:
                self._refuse_foreign_files()
                self._remove_stale_temporaries()  # the folder is ours: what a killed run left goes
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()

    def _remove_stale_temporaries(self) -> None:
        for path in self.out.iterdir():
            if _is_our_temporary(path.name) and path.is_file():
                path.unlink(missing_ok=True)

    def _own_config(self, path: Path) -> bool:
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        keys = ("model", "recipe")
        return isinstance(stored, dict) and all(stored.get(k) == self.config.get(k) for k in keys)

    def _refuse_foreign_files(self) -> None:
        names = sorted(p.name for p in self.out.iterdir()
                       if p.name != LOCK_NAME and not _is_our_temporary(p.name))
        if self.resuming:
            foreign = [n for n in names if not _is_run_file(n)]
        elif "config.json" in names and self._own_config(self.out / "config.json"):
            foreign = [n for n in names if n != "config.json" and not snapshots.owns(n)]  # its epoch 0
        else:
            foreign = names
        if foreign:
            shown = ", ".join(foreign[:6]) + (f" and {len(foreign) - 6} more" if len(foreign) > 6 else "")
            whose = ("files that are not this run's" if self.resuming
                     else "files of another run or of a person")
            raise FileExistsError(f"{self.out} holds {whose} ({shown}); a run owns its folder: choose an "
                                  f"empty or new folder, or pass {ALLOW_FLAG} to write into it anyway "
                                  "(files named like a run's are then overwritten)")


@contextlib.contextmanager
def claim_folder(out: Path | None, ctx: D.DistContext, device: torch.device, config: dict, *, resume: bool,
                 allow_foreign: bool):
    """Hold ``out`` (rank 0) while the block runs; yields ``out/last.pt`` when the run resumes
    from it, else ``None``. ``out=None`` claims nothing."""
    last = out / "last.pt" if out else None
    resuming = last is not None and last.exists()
    if resuming and not resume:
        raise FileExistsError(f"{last} already exists: pass resume=True to continue that run, "
                              "or choose another output folder")
    with contextlib.ExitStack() as stack:
        refused = None
        if out is not None and ctx.is_main:
            try:
                stack.enter_context(RunFolder(out, resuming=resuming, config=config,
                                              allow_foreign=allow_foreign))
            except (OSError, RuntimeError) as err:
                refused = err
        flag = torch.tensor([float(refused is not None)], device=device)
        if D.all_reduce_sum(flag, ctx).item() > 0:
            raise refused if refused is not None else RuntimeError(
                f"the main process could not claim the run folder {out} (its error says why)")
        yield last if resuming else None


def run_config(model, data, record: dict, run, device: torch.device) -> dict:
    """What ``config.json`` holds: the model's config, the run ``record``, the data's name, the
    device, amp, compile, memory format and the caller's ``run_info`` (``run``: the RunOptions)."""
    return {"model": model_config(model), "recipe": record, "data": getattr(data, "name", None),
            "device": str(device), "amp": str(run.amp_dtype), "compile": run.compiled,
            "channels_last": run.channels_last, "run": run.run_info}


def write_config(out: Path | None, ctx: D.DistContext, config: dict) -> None:
    """``out/config.json`` (rank 0, atomically)."""
    if out is not None and ctx.is_main:
        write_atomic(out / "config.json", json.dumps(config, indent=1, default=str) + "\n")
