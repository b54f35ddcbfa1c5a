"""Files the library writes and reads, safely: atomic writes, a lock, our temporaries, and checkpoints.

Every file is written to a temporary file beside it and renamed over it (:func:`atomic_open`), so a
reader sees the old file or the new one, never half of one. A temporary file is named exactly like
:func:`tempfile.mkstemp` names it, ``.<target>.<8 random characters><suffix>``; only a name of that
exact form is ours (:func:`is_temporary_of`): ``.history.json.bak.tmp`` or ``.last.pt.keep.tmp`` are
a person's files, never removed as leftovers of ours.

:class:`FileLock` is an exclusive ``flock`` that names its holder; it refuses a lock file that was
not written by a lock (a person's ``.lock``) instead of overwriting it.

A checkpoint is a dict of tensors and plain values, written atomically by :func:`save_checkpoint`
(never with a non-finite tensor in it) and read by :func:`read_checkpoint` with
``torch.load(..., weights_only=True)``, every entry checked (:func:`check_entries`)::

    {"format": "unifiedctx-checkpoint/1", "model_config": model.config or None,
     "model": state_dict, "optimizer": state_dict or None, "ema": state_dict or None,
     "epoch": completed epochs, "epochs": planned epochs, "step": optimizer steps so far,
     "recipe": the run record, "history": [per-epoch dicts], "task_modules": state_dict or None,
     "task_state": dict or None}

This module is at the bottom of the library's layers (beside :mod:`unifiedctx.validation`): the
data sets, the models and the trainer all use it, and it imports none of them.
"""

from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import re
import socket
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from .validation import check_file_path, check_module, check_path

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


#: The file name of a folder's lock (run folders, the site's folder, the data root).
LOCK_NAME = ".lock"


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


# ---------------------------------------------------------------------------------- checkpoints
FORMAT = "unifiedctx-checkpoint/1"


def model_config(model: nn.Module):
    """The model's ``config`` (a JSON-serialisable dict naming its architecture), or ``None``."""
    config = getattr(model, "config", None)
    return dict(config) if isinstance(config, dict) else None


def describe(config) -> str:
    """A short name for an architecture config: its preset name plus its build args."""
    if not isinstance(config, dict):
        return "an unnamed model"
    name = config.get("name") or config.get("preset") or config.get("model") or "model"
    rest = ", ".join(f"{k}={v!r}" for k, v in config.items() if k not in ("name", "preset", "model"))
    return f"{name}({rest})"


def save_checkpoint(path: str | os.PathLike, model: nn.Module, **state) -> Path:
    """Save ``model``'s weights, its config and ``state`` (optimizer, epoch, history, ...) to ``path``.

    The file is written to a temporary file in the same folder, flushed to disk, then renamed over
    ``path`` (``os.replace``), so a crash leaves either the old or the new checkpoint, never half.

    Raises:
        ValueError: a tensor of the payload (weights, optimizer state, EMA, ...) holds a NaN or an
            infinity: a non-finite model is never saved, and ``path`` is left as it was; or
            ``path`` is a folder.
        TypeError: ``path`` is not a path, ``model`` not a module.
    """
    path = check_path("path", path, kind="file", must_exist=False, what="checkpoint")
    check_module("model", model)
    payload = {"format": FORMAT, "model_config": model_config(model), "model": model.state_dict(), **state}
    bad = nonfinite_tensors(payload)
    if bad:
        shown = ", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "")
        raise ValueError(f"refusing to write {path}: {shown} {'is' if len(bad) == 1 else 'are'} not finite "
                         "(NaN or inf); a checkpoint must hold a good model")
    with atomic_open(path, "wb") as f:
        torch.save(payload, f)
    return path


def check_map_location(name: str, value):
    """``value`` if ``torch.load`` can take it as ``map_location``: a device name (``"cpu"``,
    ``"cuda:0"``), a ``torch.device``, a dict of device names or a callable; otherwise a
    ``TypeError``/``ValueError`` naming ``name`` (not an error that blames the file)."""
    if isinstance(value, torch.device) or callable(value) or isinstance(value, dict):
        return value
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a device name such as 'cpu', a torch.device, a dict or a callable, "
                        f"got {type(value).__name__} {value!r}")
    try:
        torch.device(value)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"{name} must be a device name such as 'cpu' or 'cuda:0', got {value!r}") from err
    return value


def read_checkpoint(path: str | os.PathLike, map_location="cpu") -> dict:
    """The raw checkpoint dict (``weights_only=True``); clear errors for a missing or foreign file,
    and for a ``map_location`` that names no device."""
    path = check_file_path("path", path, "checkpoint")
    check_map_location("map_location", map_location)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:  # a truncated file, a pickle with code in it, not a torch file at all
        raise ValueError(f"{path} is not a readable unifiedctx checkpoint: {err}") from err
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise ValueError(f"{path} is not a unifiedctx checkpoint (no format {FORMAT!r})")
    check_weights_entry(path, state)
    check_entries(path, state)
    return state


def _held(value) -> str:
    """What a wrong entry holds, for a message: its type and (the start of) its value."""
    return f"{type(value).__name__} {value!r}"[:80]


def _is_count(value, low: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= low


def check_entries(path, state: dict) -> dict:
    """Every entry of a checkpoint that the library reads, checked against what it must hold: a
    ``ValueError`` naming the file, the entry, what it holds and what was expected (never an error
    from a comparison or from torch later). Entries a file does not have are not required here
    (a ``best.pt`` holds no optimizer; what resume needs on top is :func:`check_resumable`)."""
    counts = {"epoch": 0, "epochs": 1, "step": 0}
    for key, low in counts.items():
        if key in state and not _is_count(state[key], low):
            raise ValueError(f"{path}: the {key!r} entry holds {_held(state[key])}, but an int >= {low} "
                             "was expected")
    if "epoch" in state and "epochs" in state and state["epoch"] > state["epochs"]:
        raise ValueError(f"{path}: the 'epoch' entry ({state['epoch']} epochs done) is more than the "
                         f"'epochs' entry ({state['epochs']} planned)")
    for key in ("model_config", "task_state", "recipe"):
        if state.get(key) is not None and not isinstance(state[key], dict):
            raise ValueError(f"{path}: the {key!r} entry holds {_held(state[key])}, but a dict was expected")
    for key in ("ema", "task_modules"):
        if state.get(key) is not None:
            check_weights_entry(path, state, key)
    optimizer = state.get("optimizer")
    if optimizer is not None and not (isinstance(optimizer, dict) and isinstance(optimizer.get("state"), dict)
                                      and isinstance(optimizer.get("param_groups"), list)):
        raise ValueError(f"{path}: the 'optimizer' entry holds {_held(optimizer)}, but an optimizer's "
                         "state dict ({'state': {...}, 'param_groups': [...]}) was expected")
    task = (state.get("recipe") or {}).get("task")
    if task is not None and not (isinstance(task, dict) and isinstance(task.get("name"), str)
                                 and isinstance(task.get("settings") or {}, dict)):
        raise ValueError(f"{path}: the recipe's 'task' entry holds {_held(task)}, but "
                         "{'name': str, 'settings': dict} was expected")
    if "history" in state:
        check_history_rows(state["history"], f"{path}: the 'history' entry")
        if "epoch" in state and len(state["history"]) != state["epoch"]:
            raise ValueError(f"{path}: the 'history' entry has {len(state['history'])} rows but the 'epoch' "
                             f"entry says {state['epoch']} epochs were done")
    return state


def check_resumable(path, state: dict) -> dict:
    """``state`` if a run can resume from it: besides :func:`check_entries`, the entries resume reads
    (``epoch``, ``step``, ``history``, ``optimizer``, ``recipe``) are there; a weights-only file
    (a ``best.pt``) is a ``ValueError`` that says how to start a new run from its weights."""
    if state.get("optimizer") is None or "epoch" not in state:
        raise ValueError(f"cannot resume from {path}: it holds weights only (no optimizer state or epoch "
                         "count, like a best.pt), but resume needs the last.pt of a run. To start a new run "
                         f"from its weights: load_checkpoint({str(path)!r}, model), then fit the model into "
                         "another folder")
    missing = [key for key in ("step", "history", "recipe") if key not in state]
    if missing:
        raise ValueError(f"cannot resume from {path}: it has no {', '.join(map(repr, missing))} "
                         "entry (resume needs the last.pt that a run wrote)")
    return state


def check_history_rows(rows, where: str) -> list[dict]:
    """``rows`` if it is a history: a list of dicts (string keys), row ``i`` with ``epoch == i + 1``
    (an int), every value a number, ``None``, or nested data (a dict or a list, as ``"mixing"``);
    otherwise a ``ValueError`` naming ``where`` (the file or entry) and the row."""
    if not isinstance(rows, list):
        raise ValueError(f"{where} must hold a history, a list of per-epoch dicts; it holds {_held(rows)}")
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(isinstance(k, str) for k in row):
            raise ValueError(f"{where}: row {i} must be a dict of column -> value, got {_held(row)}")
        epoch = row.get("epoch")
        if not _is_count(epoch, 1) or epoch != i + 1:
            raise ValueError(f"{where}: row {i} must have epoch {i + 1} (rows are epochs 1, 2, ...), "
                             f"got {_held(epoch)}")
        for key, value in row.items():
            if isinstance(value, bool) or not isinstance(value, (int, float, dict, list, type(None))):
                raise ValueError(f"{where}: row {i} has {key} = {_held(value)}; a history holds numbers "
                                 "(or nested data such as 'mixing')")
    return rows


def check_weights_entry(path, state: dict, key: str = "model") -> dict:
    """``state[key]`` if it is a state dict (``{name: tensor}``); otherwise a ``ValueError`` naming
    the file, what it holds and what was expected."""
    if key not in state:
        held = ", ".join(map(str, state)) or "nothing"
        raise ValueError(f"{path} holds no {key!r} entry (it has: {held}); "
                         f"a unifiedctx checkpoint stores the weights under {key!r} as a state dict")
    weights = state[key]
    if not isinstance(weights, dict) or not all(isinstance(v, torch.Tensor) for v in weights.values()):
        held = type(weights).__name__ if not isinstance(weights, dict) else "a dict with non-tensor values"
        raise ValueError(f"{path}: the {key!r} entry holds {held}, but a state dict (names -> tensors) "
                         "was expected")
    return weights


def load_weights_into(model: nn.Module, path, state: dict, *, ema: bool = False) -> nn.Module:
    """Load ``state``'s weights (its EMA weights with ``ema``) into ``model``, strictly; a mismatch is
    a ``ValueError`` naming the file and, where the stored config differs, both architectures."""
    if ema and state.get("ema") is None:
        raise ValueError(f"{path} has no EMA weights (it was trained without ema)")
    weights = check_weights_entry(path, state, "ema" if ema else "model")
    try:
        model.load_state_dict(weights)
    except RuntimeError as err:
        reason = " ".join(str(err).split())[:400]
        stored, current = state.get("model_config"), model_config(model)
        if isinstance(stored, dict) and isinstance(current, dict) and stored != current:
            diff = sorted(k for k in set(stored) | set(current) if stored.get(k) != current.get(k))
            raise ValueError(f"checkpoint {path} was made for {describe(stored)}, "
                             f"not for {describe(current)} "
                             f"(differs in: {', '.join(diff)}): {reason}") from err
        raise ValueError(f"checkpoint {path} does not fit the model: {reason}") from err
    return model


def nonfinite_tensors(state, prefix: str = "") -> list[str]:
    """Dotted names of the floating-point tensors in ``state`` (nested dicts, lists, tuples) that
    hold a NaN or an infinity."""
    bad: list[str] = []
    if isinstance(state, torch.Tensor):
        if (state.is_floating_point() or state.is_complex()) and not bool(torch.isfinite(state).all()):
            bad.append(prefix or "tensor")
    elif isinstance(state, dict):
        for key, value in state.items():
            bad += nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(state, (list, tuple)):
        for i, value in enumerate(state):
            bad += nonfinite_tensors(value, f"{prefix}[{i}]")
    elif isinstance(state, float) and not math.isfinite(state):
        bad.append(prefix or "value")
    return bad
