"""Training curves: Container's alpha/beta per layer, their course over training, learning curves.

A training history is a list of per-epoch dicts (``unifiedctx.train``'s ``History`` is
list-like) with keys such as ``"epoch"``, ``"train_loss"``, ``"test_acc"``, ``"lr"`` and
``"mixing"`` -> ``{layer: {"alpha": a, "beta": b}}``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ._common import new_axes


def _as_weights(weights) -> dict:
    """``{layer: {"alpha", "beta"}}`` from such a mapping or from a model (``models.mixing_weights``)."""
    import torch

    if isinstance(weights, torch.nn.Module):
        from ..models import mixing_weights

        weights = mixing_weights(weights)
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping {{layer: {{'alpha', 'beta'}}}} or a model, "
                        f"got {type(weights).__name__}")
    for name, ab in weights.items():
        if not (isinstance(ab, Mapping) and "alpha" in ab and "beta" in ab):
            raise ValueError(f"weights[{name!r}] must hold 'alpha' and 'beta', got {ab!r}")
    return {name: {"alpha": float(ab["alpha"]), "beta": float(ab["beta"])} for name, ab in weights.items()}


def plot_mixing_weights(weights, ax=None, title: str | None = None):
    """Bars of alpha (dynamic / attention share) and beta (static / conv share) of every Container layer.

    Container mixes ``A = alpha * A_attention + beta * A_dwconv``; with the released code's
    sigmoid mixing alpha + beta = 1, so the bars show which way each layer has leaned.
    ``weights`` is ``{layer: {"alpha": a, "beta": b}}`` (``models.mixing_weights(model)``) or the
    model itself. Returns the ``Figure``; ``ax.containers[0]`` are the alpha bars, ``[1]`` beta.
    """
    weights = _as_weights(weights)
    if not weights:
        raise ValueError("no mixing weights: the model has no Container (mixed) layers")
    names = list(weights)
    fig, ax = new_axes(ax, figsize=(max(4.0, 0.7 * len(names) + 2), 3.4))
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, [weights[n]["alpha"] for n in names], 0.4, label="α (attention, dynamic)",
           color="tab:orange")
    ax.bar(pos + 0.2, [weights[n]["beta"] for n in names], 0.4, label="β (conv, static)", color="tab:blue")
    ax.set_xticks(pos, names, rotation=45, ha="right", fontsize=7)
    ax.axhline(0.5, color="0.5", lw=0.6, ls=":")
    ax.set_ylabel("mixing weight")
    ax.legend(fontsize=8)
    ax.set_title(title or "Container mixing per layer", fontsize=10)
    return fig


def _epochs(history: Sequence) -> list:
    return [row.get("epoch", k + 1) for k, row in enumerate(history)]


def _check_history(history, name: str = "history") -> list:
    if isinstance(history, (str, bytes, Mapping)) or not hasattr(history, "__iter__"):
        raise TypeError(f"{name} must be a list of per-epoch dicts, got {type(history).__name__}")
    rows = list(history)
    if not rows or not all(isinstance(r, Mapping) for r in rows):
        raise ValueError(f"{name} must be a non-empty list of per-epoch dicts")
    return rows


def row_mixing(row: Mapping) -> dict:
    """The ``{layer: {"alpha", "beta"}}`` of one history row: its ``"mixing"`` entry, or the
    ``alpha/<layer>`` and ``beta/<layer>`` columns that ``unifiedctx.train.fit`` writes."""
    if row.get("mixing"):
        return row["mixing"]
    return {key[len("alpha/"):]: {"alpha": value, "beta": row.get("beta/" + key[len("alpha/"):], 1 - value)}
            for key, value in row.items() if key.startswith("alpha/")}


def plot_mixing_history(history, ax=None, title: str | None = None):
    """The course of every Container layer's alpha (solid) and beta (dashed) over training.

    ``history`` is a list of per-epoch dicts (a ``unifiedctx.train.History``): each row holds
    the engine's ``alpha/<layer>`` and ``beta/<layer>`` columns, or a ``"mixing"`` entry mapping
    layer names to ``{"alpha", "beta"}`` (for example ``{"epoch": 0, "mixing":
    mixing_weights(untrained_model)}`` to start the curve at initialisation); x is each row's
    ``"epoch"`` (its 1-based position if absent). One colour per layer. Returns the
    ``Figure``; the lines are ``ax.lines`` in order (alpha of layer 0, beta of layer 0, ...).
    """
    rows = _check_history(history)
    rows = [{**r, "mixing": row_mixing(r)} for r in rows]
    rows = [r for r in rows if r["mixing"]]
    if not rows:
        raise ValueError("history has no 'mixing' entries (was the model a Container?)")
    names = list(dict.fromkeys(n for r in rows for n in r["mixing"]))
    epochs = _epochs(rows)
    fig, ax = new_axes(ax, figsize=(5.5, 3.6))
    colors = _colors(len(names))
    for name, color in zip(names, colors):
        xs = [e for e, r in zip(epochs, rows) if name in r["mixing"]]
        for key, style in (("alpha", "-"), ("beta", "--")):
            ys = [float(r["mixing"][name][key]) for r in rows if name in r["mixing"]]
            ax.plot(xs, ys, style, color=color, marker="o", ms=2.5,
                    label=f"{name} α" if key == "alpha" else None)
    ax.set_xlabel("epoch")
    ax.set_ylabel("mixing weight (α solid, β dashed)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=max(1, len(names) // 6))
    ax.set_title(title or "Container mixing over training", fontsize=10)
    return fig


def _colors(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(k if n <= 10 else k / max(1, n - 1)) for k in range(n)]


def learning_curves(runs: Mapping, metric="test_acc", axes=None, title: str | None = None):
    """Learning curves of several runs on one figure: one line per run, one panel per metric.

    ``runs`` maps a label (``"conv"``, ``"attention"``...) to a history (a list of per-epoch
    dicts); ``metric`` is a key of those dicts or a list of keys (one panel each). Epochs
    without the metric (evaluated every few epochs, say) are skipped; a run that never has it
    is a ``ValueError`` naming the metric and the keys it does have.

    Returns:
        the ``Figure``; in panel k, ``ax.lines[r]`` is run r's curve of ``metric[k]``.
    """
    if not isinstance(runs, Mapping) or not runs:
        raise ValueError("runs must be a non-empty mapping {label: history}")
    metrics = [metric] if isinstance(metric, str) else list(metric)
    histories = {label: _check_history(h, f"runs[{label!r}]") for label, h in runs.items()}
    for label, rows in histories.items():
        for m in metrics:
            if not any(m in r for r in rows):
                keys = sorted({k for r in rows for k in r})
                raise ValueError(f"metric {m!r} is not in run {label!r}; its keys are: {', '.join(keys)}")
    if axes is None:
        import matplotlib.pyplot as plt

        fig, axs = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 3.4), squeeze=False,
                                layout="constrained")
        axs = list(axs.ravel())
    else:
        axs = list(np.ravel(axes))
        if len(axs) < len(metrics):
            raise ValueError(f"axes has {len(axs)} axes but {len(metrics)} metrics were asked for")
        fig = axs[0].figure
    colors = _colors(len(histories))
    for ax, m in zip(axs, metrics):
        for (label, rows), color in zip(histories.items(), colors):
            pts = [(e, float(r[m])) for e, r in zip(_epochs(rows), rows) if m in r and r[m] is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "-o", ms=2.5, color=color, label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(m)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(m.replace("_", " "), fontsize=10)
    if title:
        fig.suptitle(title)
    return fig
