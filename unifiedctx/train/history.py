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
from pathlib import Path

from ..files import check_history_rows, write_atomic


def mixing_columns(model) -> dict:
    """``{"mixing": {layer: {name: value}}}`` for a history row: the mixing weights of every mixer
    that has a knob (:func:`unifiedctx.models.mixing_weights`; ``{}`` if none)."""
    from unifiedctx.models import mixing_weights

    weights = mixing_weights(model)
    return {"mixing": {name: dict(w) for name, w in weights.items()}} if weights else {}


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
        """Read a history written by :meth:`to_json`; a file that is not JSON, or whose rows are not
        what :func:`unifiedctx.files.check_history_rows` expects, is a ``ValueError`` naming the file
        and the row."""
        path = Path(path)
        try:
            rows = json.loads(path.read_text())
        except ValueError as err:
            raise ValueError(f"{path} is not a history: it is not valid JSON ({err})") from None
        return cls(check_history_rows(rows, str(path)))

    def __repr__(self) -> str:
        if not self:
            return "History([])"
        last = self[-1]
        shown = ", ".join(f"{k}={last[k]:.4g}" for k in ("train_loss", "test_acc") if k in last)
        return f"History({len(self)} epochs; last: {shown})"
