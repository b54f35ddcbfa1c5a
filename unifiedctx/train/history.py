"""The per-epoch record of a training run: a list of dicts, written as JSON and CSV.

Each entry holds ``epoch`` (1-based), ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc``
(``ema_test_loss``/``ema_test_acc`` with EMA), ``lr`` (at the epoch's last step), ``images_per_s``
(training throughput over all ranks), ``epoch_time`` and ``time`` (cumulative training seconds),
and, when the model has mixers with a mixing knob, their weights as nested data::

    row["mixing"] == {"stages.3.blocks.0.mixer": {"alpha": 0.52, "beta": 0.48},   # Container
                      "stages.0.blocks.1.mixer": {"gate": [0.73, 0.71]}}          # GPSA, per head

(the names are the ones each mixer's ``mixing_weights()`` gives). Only :meth:`History.to_csv`
flattens them, into columns ``mixing/<layer>/<name>`` (``mixing/<layer>/<name>/<head>`` for
per-head lists). Histories written before this layout, with flat ``alpha/<layer>`` and
``beta/<layer>`` columns, keep working: :func:`mixing_of` reads either layout (the plots read
the mixing weights through it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


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
    permissions of any file the user creates (``0o666`` less the umask). A temporary file left by
    a killed process (``.<name>.<random>.tmp``) is removed by the next run in that folder
    (:class:`unifiedctx.train.rundir.RunFolder`)."""
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


def mixing_of(row) -> dict:
    """The ``{layer: {name: value}}`` mixing weights of one history row (empty if none).

    Reads the nested ``"mixing"`` entry, or the flat ``alpha/<layer>`` / ``beta/<layer>``
    columns of histories written before it existed (beta defaults to ``1 - alpha``).
    """
    if row.get("mixing"):
        return row["mixing"]
    return {key[len("alpha/"):]: {"alpha": value, "beta": row.get("beta/" + key[len("alpha/"):], 1 - value)}
            for key, value in row.items() if key.startswith("alpha/")}


def flat_row(row: dict) -> dict:
    """``row`` for a CSV line: ``"mixing"`` flattened into ``mixing/<layer>/<name>[/<head>]``."""
    out = {k: v for k, v in row.items() if k != "mixing"}
    for layer, weights in (row.get("mixing") or {}).items():
        for name, value in weights.items():
            if isinstance(value, (list, tuple)):
                out.update({f"mixing/{layer}/{name}/{i}": v for i, v in enumerate(value)})
            else:
                out[f"mixing/{layer}/{name}"] = value
    return out


class History(list):
    """A list of per-epoch dicts with helpers to read and write it."""

    def column(self, key: str) -> list:
        """The values of ``key`` over the epochs (``None`` where an epoch lacks it)."""
        return [row.get(key) for row in self]

    def mixing(self) -> list[dict]:
        """Every epoch's ``{layer: {name: value}}`` mixing weights (:func:`mixing_of`; ``{}`` if none)."""
        return [mixing_of(row) for row in self]

    def keys(self) -> list[str]:
        """Every key that some epoch has, in order of first appearance."""
        seen: dict[str, None] = {}
        for row in self:
            seen.update(dict.fromkeys(row))
        return list(seen)

    def best(self, key: str = "test_acc", mode: str = "max") -> dict:
        """The epoch whose ``key`` is largest (``mode="max"``) or smallest (``"min"``)."""
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        rows = [r for r in self if isinstance(r.get(key), (int, float)) and not math.isnan(r[key])]
        if not rows:
            raise KeyError(f"no epoch has a value for {key!r}; keys are: {', '.join(self.keys())}")
        return (max if mode == "max" else min)(rows, key=lambda r: r[key])

    def to_json(self, path: str | os.PathLike) -> None:
        """Write the epochs as a JSON list (atomically)."""
        write_atomic(path, json.dumps(list(self), indent=1) + "\n")

    def to_csv(self, path: str | os.PathLike) -> None:
        """Write one row per epoch, one column per key (atomically).

        The nested ``"mixing"`` entry becomes the columns ``mixing/<layer>/<name>`` (per-head
        lists ``mixing/<layer>/<name>/<head>``): the only place the mixing weights are flat.
        """
        rows = [flat_row(r) for r in self]
        fields: dict[str, None] = {}
        for row in rows:
            fields.update(dict.fromkeys(row))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
        write_atomic(path, buf.getvalue())

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> History:
        """Read a history written by :meth:`to_json`."""
        return cls(json.loads(Path(path).read_text()))

    def __repr__(self) -> str:
        if not self:
            return "History([])"
        last = self[-1]
        shown = ", ".join(f"{k}={last[k]:.4g}" for k in ("train_loss", "test_acc") if k in last)
        return f"History({len(self)} epochs; last: {shown})"
