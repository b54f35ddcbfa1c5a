"""Training curves: the mixing weights per layer, their course over training, learning curves.

A training history is a list of per-epoch dicts (``unifiedctx.train``'s ``History`` is
list-like) with keys such as ``"epoch"``, ``"train_loss"``, ``"test_acc"``, ``"lr"`` and
``"mixing"`` -> ``{layer: {name: value}}``: the mixing knob of every layer that has one, under
the names its mixer's ``mixing_weights()`` gives (Container: ``"alpha"``, ``"beta"``; GPSA:
``"gate"``, a list with one value per head). Old histories with flat ``alpha/<layer>`` columns
are read too (:func:`unifiedctx.train.history.mixing_of`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.ticker import MaxNLocator

from ..train.history import mixing_of
from ..validation import check_finite
from ._common import new_axes
from .scales import MIN_FONTSIZE

#: How the history's columns read on an axis.
METRIC_LABELS = {
    "train_loss": "training loss", "train_acc": "training accuracy",
    "test_loss": "test loss", "test_acc": "test accuracy",
    "ema_test_loss": "test loss (EMA weights)", "ema_test_acc": "test accuracy (EMA weights)",
    "lr": "learning rate", "images_per_s": "images per second", "epoch_time": "seconds per epoch",
    "time": "training time (s)",
}
GREEK = {"alpha": "α", "beta": "β", "gate": "gate g"}
MEANING = {"alpha": "attention, dynamic", "beta": "conv, static", "gate": "positional share"}
STYLES = ("-", "--", ":", "-.")


def _check_title(title) -> None:
    if title is not None and not isinstance(title, str):
        raise TypeError(f"title must be a string or None, got {type(title).__name__} {title!r}")


def metric_label(key: str) -> str:
    """A column name as words: ``"test_acc"`` -> ``"test accuracy"``."""
    if not isinstance(key, str):
        raise TypeError(f"key must be a metric name (a string such as 'test_acc'), got {type(key).__name__}")
    if key in METRIC_LABELS:
        return METRIC_LABELS[key]
    words = ["accuracy" if w == "acc" else w for w in key.split("_")]
    return " ".join(words)


def _as_weights(weights) -> dict:
    """``{layer: {name: float | list}}`` from such a mapping or from a model (``models.mixing_weights``)."""
    import torch

    if isinstance(weights, torch.nn.Module):
        from ..models import mixing_weights

        weights = mixing_weights(weights)
    if not isinstance(weights, Mapping):
        raise TypeError(f"weights must be a mapping {{layer: {{name: value}}}} or a model, "
                        f"got {type(weights).__name__}")
    out = {}
    for layer, named in weights.items():
        if not isinstance(named, Mapping) or not named:
            raise ValueError(f"weights[{layer!r}] must map weight names to values, got {named!r}")
        if ("alpha" in named) != ("beta" in named):
            raise ValueError(f"weights[{layer!r}] must hold both 'alpha' and 'beta' (Container's "
                             f"mix), got {sorted(named)}")
        out[layer] = {}
        for name, v in named.items():
            try:
                value = np.asarray(v.detach().cpu() if hasattr(v, "detach") else v, dtype=float)
            except (TypeError, ValueError):
                raise TypeError(f"weights[{layer!r}][{name!r}] must be a number or a list of numbers, "
                                f"got {type(v).__name__} {v!r}") from None
            check_finite(f"weights[{layer!r}][{name!r}]", value)
            out[layer][name] = value.tolist()
    return out


def _names(weights: Mapping) -> list[str]:
    return list(dict.fromkeys(n for named in weights.values() for n in named))


def _mean(value) -> float:
    return float(np.mean(value)) if isinstance(value, list) else float(value)


def plot_mixing_weights(weights, ax=None, title: str | None = None):
    """Bars of every layer's mixing weights: Container's alpha (dynamic) and beta (static), ...

    Container mixes ``A = alpha * A_attention + beta * A_dwconv``; with the released code's
    sigmoid mixing alpha + beta = 1, so the bars show which way each layer has leaned. A
    per-head weight (GPSA's gate) is drawn as the bar of its mean with one dot per head.
    ``weights`` is ``{layer: {name: value}}`` (``models.mixing_weights(model)``) or the model.
    The legend sits outside the axes, so it never covers a bar.

    Returns:
        the ``Figure``; ``ax.containers[k]`` are the bars of the k-th weight name (alpha, beta).
    """
    _check_title(title)
    weights = _as_weights(weights)
    if not weights:
        raise ValueError("no mixing weights: the model has no mixer with a mixing knob")
    layers, names = list(weights), _names(weights)
    fig, ax = new_axes(ax, figsize=(max(4.0, 0.7 * len(layers) + 3.2), 3.4))
    pos = np.arange(len(layers))
    width = 0.8 / len(names)
    colors = {"alpha": "tab:orange", "beta": "tab:blue"}
    for k, name in enumerate(names):
        x = pos - 0.4 + width * (k + 0.5)
        has = [name in weights[la] for la in layers]
        heights = [_mean(weights[la][name]) if h else 0.0 for la, h in zip(layers, has)]
        label = f"{GREEK.get(name, name)} ({MEANING[name]})" if name in MEANING else name
        ax.bar(x, heights, width, label=label, color=colors.get(name, f"C{k + 2}"))
        for xi, la in zip(x, layers):
            if isinstance(weights[la].get(name), list):
                ax.plot([xi] * len(weights[la][name]), weights[la][name], "k.", ms=3)
    ax.set_xticks(pos, layers, rotation=45, ha="right", fontsize=MIN_FONTSIZE)
    ax.tick_params(labelsize=MIN_FONTSIZE)
    ax.axhline(0.5, color="0.5", lw=0.6, ls=":")
    ax.set_ylabel("mixing weight")
    ax.legend(fontsize=MIN_FONTSIZE, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title or "Mixing weights per layer", fontsize=10)
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


def plot_mixing_history(history, ax=None, title: str | None = None):
    """The course of every layer's mixing weights over training: one colour per layer.

    ``history`` is a list of per-epoch dicts (a ``unifiedctx.train.History``) whose
    ``"mixing"`` entries map layers to ``{name: value}`` (old flat ``alpha/<layer>`` columns are
    read too); put ``{"epoch": 0, "mixing": mixing_weights(untrained_model)}`` first to start
    the curve at initialisation. Each weight name has its line style (alpha solid, beta dashed;
    per-head weights as their mean). x is each row's ``"epoch"`` (its 1-based position if
    absent), with integer ticks.

    Returns:
        the ``Figure``; the lines are ``ax.lines`` in order (alpha of layer 0, beta of layer 0, ...).
    """
    _check_title(title)
    rows = _check_history(history)
    rows = [{**r, "mixing": mixing_of(r)} for r in rows]
    rows = [r for r in rows if r["mixing"]]
    if not rows:
        raise ValueError("history has no 'mixing' entries (does the model have a mixing knob?)")
    layers = list(dict.fromkeys(n for r in rows for n in r["mixing"]))
    names = list(dict.fromkeys(k for r in rows for w in r["mixing"].values() for k in w))
    epochs = _epochs(rows)
    for e, r in zip(epochs, rows):
        for layer, w in r["mixing"].items():
            for name, v in w.items():
                check_finite(f"history (epoch {e}) mixing[{layer!r}][{name!r}]", np.asarray(v, dtype=float))
    fig, ax = new_axes(ax, figsize=(6.5, 3.6))
    for layer, color in zip(layers, _colors(len(layers))):
        seen = [(e, r["mixing"][layer]) for e, r in zip(epochs, rows) if layer in r["mixing"]]
        for k, name in enumerate(names):
            pts = [(e, _mean(w[name])) for e, w in seen if name in w]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], STYLES[k % len(STYLES)], color=color,
                        marker="o", ms=2.5, label=f"{layer} {GREEK.get(name, name)}" if k == 0 else None)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    styles = ", ".join(f"{GREEK.get(n, n)} {('solid', 'dashed', 'dotted', 'dash-dot')[k % 4]}"
                       for k, n in enumerate(names))
    ax.set_ylabel(f"mixing weight ({styles})", fontsize=9)
    ax.tick_params(labelsize=MIN_FONTSIZE)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=MIN_FONTSIZE, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    ax.set_title(title or "Mixing weights over training", fontsize=10)
    return fig


def _colors(n: int):
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "viridis"]
    return [cmap(k if n <= 10 else k / max(1, n - 1)) for k in range(n)]


def learning_curves(runs: Mapping, metric="test_acc", axes=None, title: str | None = None):
    """Learning curves of several runs on one figure: one line per run, one panel per metric.

    ``runs`` maps a label (``"conv"``, ``"attention"``...) to a history (a list of per-epoch
    dicts); ``metric`` is a key of those dicts or a list of keys (one panel each), labelled in
    words (``test_acc`` -> "test accuracy"). Epochs without the metric (evaluated every few
    epochs, say) are skipped; a run that never has it is a ``ValueError`` naming the metric and
    the keys it does have. Epoch ticks are integers.

    Returns:
        the ``Figure``; in panel k, ``ax.lines[r]`` is run r's curve of ``metric[k]``.
    """
    if not isinstance(runs, Mapping):
        raise TypeError(f"runs must be a mapping {{label: history}}, got {type(runs).__name__}")
    if not runs:
        raise ValueError("runs must be a non-empty mapping {label: history}")
    _check_title(title)
    if isinstance(metric, str):
        metrics = [metric]
    elif isinstance(metric, (list, tuple)) and metric and all(isinstance(m, str) for m in metric):
        metrics = list(metric)
    else:
        raise TypeError(f"metric must be a key such as 'test_acc' or a non-empty list of keys, "
                        f"got {metric!r}")
    histories = {label: _check_history(h, f"runs[{label!r}]") for label, h in runs.items()}
    for label, rows in histories.items():
        for m in metrics:
            if not any(m in r for r in rows):
                keys = sorted({k for r in rows for k in r})
                raise ValueError(f"metric {m!r} is not in run {label!r}; its keys are: {', '.join(keys)}")
            for e, r in zip(_epochs(rows), rows):
                value = r.get(m)
                if value is None:
                    continue
                if isinstance(value, bool) or not isinstance(value, (int, float, np.number)):
                    raise TypeError(f"run {label!r}, epoch {e}: metric {m!r} must be a number, got "
                                    f"{type(value).__name__} {value!r}")
                if not np.isfinite(value):
                    raise ValueError(f"run {label!r}, epoch {e}: metric {m!r} is {value}, not a finite "
                                     "number: nothing is drawn (a diverged run? its curve ends there)")
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
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric_label(m))
        ax.tick_params(labelsize=MIN_FONTSIZE)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=MIN_FONTSIZE)
        ax.set_title(metric_label(m), fontsize=10)
    if title:
        fig.suptitle(title)
    return fig
