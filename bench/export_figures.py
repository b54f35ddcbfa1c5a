"""Re-create the README's training figures from the runs that notebook 04 cached.

    .venv/bin/python bench/export_figures.py                      # runs/<profile>/04 -> docs/figures
    UNIFIEDCTX_PROFILE=quick .venv/bin/python bench/export_figures.py

Writes ``learning_curves.png`` (test accuracy and training loss of every family),
``mixing_history.png`` (alpha/beta of the Container layers over training, from epoch 0) and
``trained_query_maps.png`` (where the centre token of a test digit takes its context from, in a
layer of each trained network). Nothing is trained: run notebook 04 first (``make course``, or
``python -m unifiedctx.course 04``); a missing run is an error that says so.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib.pyplot as plt

from unifiedctx import viz
from unifiedctx.data import load
from unifiedctx.models import mixer_inputs, mixing_weights, record_components
from unifiedctx.profiles import current
from unifiedctx.train import History, build_model, load_checkpoint

FAMILIES = ("convnet", "deit_tiny", "mixer_s16", "container_light", "container")
#: (family, layer, component) of the query-map figure
VIEWS = (("deit_tiny", "stages.0.blocks.1.mixer", "dynamic"),
         ("container", "stages.0.blocks.0.mixer", "mixed"),
         ("container", "stages.1.blocks.0.mixer", "mixed"),
         ("container_light", "stages.3.blocks.0.mixer", "mixed"))
FIGURES = Path(__file__).resolve().parent.parent / "docs" / "figures"


def load_run(folder: Path):
    """``(model, history)`` of a finished run of notebook 04 (the model rebuilt from its checkpoint)."""
    last = folder / "last.pt"
    if not last.exists():
        raise SystemExit(f"no run in {folder}: execute notebook 04 first (python -m unifiedctx.course 04)")
    model, state = load_checkpoint(last)
    return model.eval(), History(state["history"])


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=Path, help="notebook 04's runs (default runs/<profile>/04)")
    parser.add_argument("--out", type=Path, default=FIGURES, help="where the PNGs go (docs/figures)")
    args = parser.parse_args(argv)
    plt.switch_backend("agg")
    profile = current()
    runs = args.runs or profile.cache_dir / "04"
    data = load(profile.dataset, **profile.dataset_options)
    loaded = {f: load_run(runs / f) for f in FAMILIES}
    models = {f: m for f, (m, _) in loaded.items()}
    histories = {f: h for f, (_, h) in loaded.items()}
    args.out.mkdir(parents=True, exist_ok=True)
    written = []

    fig = viz.learning_curves(histories, metric=["test_acc", "train_loss"],
                              title=f"{data.name}: equal budget, {len(histories['container_light'])} epochs")
    written.append(args.out / "learning_curves.png")
    fig.savefig(written[-1], dpi=110, bbox_inches="tight")

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    for ax, family in zip(axes, ("container_light", "container")):
        seed = load_checkpoint(runs / family / "last.pt")[1]["recipe"]["seed"]
        init = build_model(profile.model(family), data, seed=seed)
        start = {"epoch": 0, "mixing": mixing_weights(init)}            # then the history's columns
        viz.plot_mixing_history([start, *histories[family]], ax=ax,
                                title=f"{family}: alpha (solid) and beta (dashed)")
    fig.tight_layout()
    written.append(args.out / "mixing_history.png")
    fig.savefig(written[-1], dpi=110, bbox_inches="tight")

    image = data.test_x[0]
    x = data.normalize(image[None])
    size = image.shape[-1]
    fig, axes = plt.subplots(2, len(VIEWS), figsize=(2.6 * len(VIEWS), 5.4))
    for col, (family, layer, component) in enumerate(VIEWS):
        h, w = mixer_inputs(models[family], x)[layer].shape[-2:]
        A = record_components(models[family], x)[layer][component]
        viz.plot_query_maps(A, (h, w), (h // 2, w // 2), image=image, axes=axes[:, col])
        for row, ax in enumerate(axes[:, col]):
            ax.set_title(f"{family}\n{layer.split('.mixer')[0]}, head {row}", fontsize=8)
    fig.suptitle(f"Where the centre token takes its context from, after training ({size}x{size} input)",
                 fontsize=10)
    fig.tight_layout()
    written.append(args.out / "trained_query_maps.png")
    fig.savefig(written[-1], dpi=110, bbox_inches="tight")
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
