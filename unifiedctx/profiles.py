"""One switch for the notebooks: the *quick* profile (CPU, offline data, ``_nano`` presets,
what CI runs) or the *full* profile (CUDA, CIFAR-10, ``_cifar`` presets).

The switch is the environment variable ``UNIFIEDCTX_PROFILE`` (``quick`` or ``full``).
Without it, :func:`current` picks ``full`` when CUDA is available and ``quick`` otherwise.
``UNIFIEDCTX_SEED`` (an int >= 0, default 0) is the seed of every recipe of the profile and of the
notebooks' own random draws (``profile.seed``); runs are cached per profile and per seed, in
``runs/<profile>/seed<k>/``, so the course can be re-run on another seed without mixing runs::

    from unifiedctx.profiles import current
    profile = current()
    model = unifiedctx.create_model(profile.model("container_light"), num_classes=10)
    history = unifiedctx.train.fit(model, data, profile.recipe, device=profile.device)

A notebook takes its epochs, batch size and learning rate from ``profile.recipe`` (notebooks 04
and 05) or ``profile.synthetic_recipes[task]`` (notebook 03's probes), never its own numbers. A
notebook that needs notebook 04's trained classifiers gets them through
:meth:`Profile.supervised_run` (loaded from notebook 04's run folder, trained there if missing),
never by reading that folder itself; their affinities over the epochs (notebook 04's runs are
watched: ``fit(..., watch=profile.probe_images(data))``) through :meth:`Profile.supervised_snapshots`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .train.recipe import Recipe
from .validation import check_int

ENV_VAR = "UNIFIEDCTX_PROFILE"
SEED_VAR = "UNIFIEDCTX_SEED"
PROFILES = ("quick", "full")


@dataclass(frozen=True)
class Profile:
    """Everything a notebook needs to know about the budget it runs under.

    Attributes:
        name: ``"quick"`` or ``"full"``.
        seed: the seed of every recipe (and of a notebook's own draws: ``torch.manual_seed(profile.seed)``).
        device: where to train (``"cpu"`` or ``"cuda"``).
        preset_suffix: appended to a model family name (``"_nano"`` or ``"_cifar"``).
        dataset: the real image dataset (``"mnist5k"`` offline, ``"cifar10"`` online).
        dataset_options: keyword arguments for :func:`unifiedctx.data.load`.
        recipe: the :class:`~unifiedctx.train.recipe.Recipe` of one run on ``dataset``
            (notebooks 04 and 05).
        synthetic_train: number of training images of each synthetic task.
        synthetic_recipes: the Recipe of a probe on each synthetic task (notebook 03):
            ``{"texture": ..., "longrange": ...}``.
        task_recipes: the Recipe of the other notebooks' runs: ``"context"`` (notebook 08's
            receptive-field runs; in the full profile notebook 04's recipe, so the runs are shared),
            ``"segment"`` (notebook 09) and ``"dino"`` (notebook 10).
        cache_dir: where trained checkpoints are kept so re-running loads instead of retraining.
        watch_images: how many test images notebook 04's runs watch (:meth:`probe_images`).
        watch_budget_mb: the size budget of a watched run's snapshots (``fit(watch_budget_mb=)``).
    """

    name: str
    device: str
    preset_suffix: str
    dataset: str
    dataset_options: dict = field(default_factory=dict)
    recipe: Recipe = Recipe(epochs=3)
    synthetic_train: int = 2000
    synthetic_recipes: dict = field(default_factory=dict)
    task_recipes: dict = field(default_factory=dict)
    cache_dir: Path = Path("runs")
    seed: int = 0
    watch_images: int = 4
    watch_budget_mb: float = 256.0

    def model(self, family: str) -> str:
        """The preset name of ``family`` in this profile, e.g. ``container_light_nano``."""
        return f"{family}{self.preset_suffix}"

    @property
    def epochs(self) -> int:
        """``recipe.epochs``: training epochs of one run."""
        return self.recipe.epochs

    @property
    def batch_size(self) -> int:
        """``recipe.batch_size``: training batch size."""
        return self.recipe.batch_size

    @property
    def quick(self) -> bool:
        """True in the CPU/CI profile."""
        return self.name == "quick"

    def probe_images(self, data) -> torch.Tensor:
        """The probe images notebook 04's runs watch: :attr:`watch_images` test images of ``data``
        drawn by the profile's :attr:`seed`, as the models take them (``data.normalize``), float32
        ``(B, C, H, W)``."""
        order = torch.randperm(len(data.test_x), generator=torch.Generator().manual_seed(self.seed))
        return data.normalize(data.test_x[order[:self.watch_images]]).float()

    def supervised_run(self, family: str, data, **fit_kwargs):
        """``(model, history)`` of notebook 04's run of ``family``: the preset :meth:`model` trained on
        ``data`` (the profile's :attr:`dataset`) by :attr:`recipe` in ``cache_dir/04/family``, watching
        :meth:`probe_images`, loaded from there (by :func:`unifiedctx.train.train_or_load`), or trained
        there now when notebook 04 has not run. ``fit_kwargs``: what changes nothing of the run
        (``live=True``, ``progress=``)."""
        from .train import train_or_load

        options = {"device": self.device, "progress": self.progress, "watch": self.probe_images(data),
                   "watch_budget_mb": self.watch_budget_mb, **fit_kwargs}
        return train_or_load(self.model(family), data, self.cache_dir / "04" / family, self.recipe, **options)

    def supervised_snapshots(self, family: str, data):
        """The snapshots of notebook 04's run of ``family`` (:meth:`supervised_run`, trained now if
        missing): its affinities of :meth:`probe_images` at epoch 0 and after every epoch, a
        :class:`~unifiedctx.inspection.snapshots.SnapshotRun` (``AffinityExplorer.from_run`` opens
        the same folder: :meth:`supervised_folder`)."""
        from .inspection.snapshots import read_snapshots

        self.supervised_run(family, data)
        return read_snapshots(self.supervised_folder(family))

    def supervised_folder(self, family: str) -> Path:
        """The run folder of notebook 04's run of ``family`` (``cache_dir/04/family``)."""
        return self.cache_dir / "04" / family

    @property
    def progress(self) -> bool | str:
        """What ``fit(progress=...)`` shows in this profile: one line per epoch in the quick one
        (short CPU runs, plain text that any notebook front end and nbval keep), tqdm bars in the
        full one. Training never runs silently."""
        return "epoch" if self.quick else True


def _repo_runs_dir() -> Path:
    """``runs/`` of the repository in a checkout, else ``~/.cache/unifiedctx/runs``."""
    here = Path(__file__).resolve().parent.parent
    if (here / "pyproject.toml").exists():
        return here / "runs"
    return Path.home() / ".cache" / "unifiedctx" / "runs"


def make(name: str, seed: int = 0) -> Profile:
    """Build the profile called ``name`` (``"quick"`` or ``"full"``) for ``seed`` (an int >= 0): every
    recipe trains with that seed and the runs are cached in ``runs/<name>/seed<seed>/``."""
    seed = check_int("seed", seed, low=0)
    runs = _repo_runs_dir() / name / f"seed{seed}"
    # notebook 03's probes: same seed, data order and optimizer for every probe; no augmentation
    probe = Recipe(epochs=1, batch_size=32, lr=3e-3, weight_decay=0.05, augment=False, seed=seed)
    if name == "quick":
        recipe = Recipe(epochs=4, batch_size=128, lr=5e-3, warmup_epochs=0.5, augment=False,
                        weight_decay=0.05, seed=seed)
        probes = {"texture": probe.replace(epochs=3), "longrange": probe.replace(epochs=8)}
        tasks = {"context": recipe.replace(epochs=1, max_steps_per_epoch=30, warmup_epochs=0.2),
                 # notebook 09, 2048 canvases of 64 px: the point of docs/sweep_segment.md that fits 3 minutes
                 "segment": Recipe(epochs=8, batch_size=16, lr=2e-2, warmup_epochs=0.3, weight_decay=0.05,
                                   seed=seed, task="segment"),
                 # bench/sweep_dino.py (docs/sweep_dino.md): batch 64 doubles the steps at the same cost;
                 # ~42 CPU seconds per family; container_light's k-NN gain over its untrained twin is
                 # +0.04 to +0.19 on seeds 0-9 (mean +0.109), its lead over DeiT after DINO +0.15 to +0.30
                 "dino": recipe.replace(task="dino", epochs=3, batch_size=64, lr=5e-3, weight_decay=0.04,
                                        task_options={"out_dim": 256, "local_crops": 2, "momentum": 0.99})}
        return Profile(name="quick", device="cpu", preset_suffix="_nano", dataset="mnist5k",
                       dataset_options={"channels": 3}, recipe=recipe, synthetic_train=2000,
                       synthetic_recipes=probes, task_recipes=tasks, cache_dir=runs, seed=seed)
    if name == "full":
        device = "cuda" if torch.cuda.is_available() else "cpu"
        recipe = Recipe(epochs=30, batch_size=256, lr=2e-3, warmup_epochs=2, augment=True,
                        task_options={"label_smoothing": 0.1}, weight_decay=0.05, seed=seed)
        probes = {"texture": probe.replace(epochs=10), "longrange": probe.replace(epochs=20)}
        tasks = {"context": recipe,
                 # notebook 09, 4000 canvases of 128 px on a GPU (docs/sweep_segment.md: given, not yet run)
                 "segment": Recipe(epochs=40, batch_size=32, lr=1e-2, warmup_epochs=1, weight_decay=0.05,
                                   seed=seed, task="segment"),
                 # DINO on CIFAR-10, sized for one GPU and NOT measured (no GPU was lent; see
                 # docs/sweep_dino.md): the paper's recipe at CIFAR scale: 10 warm-up epochs, teacher
                 # 0.04 -> 0.07 over 30 %, momentum 0.996 -> 1, 6 local crops, prototypes frozen for the
                 # first epoch; lr 1e-3 is twice the paper's 5e-4 per 256 images (a guess for a small
                 # network and a 100-epoch run)
                 "dino": Recipe(epochs=100, batch_size=256, lr=1e-3, warmup_epochs=10, weight_decay=0.04,
                                augment=False, seed=seed, task="dino",
                                task_options={"out_dim": 4096, "hidden_dim": 1024, "bottleneck_dim": 256,
                                              "local_crops": 6, "momentum": 0.996, "teacher_temp": 0.07,
                                              "warmup_teacher_temp": 0.04, "teacher_temp_warmup": 0.3,
                                              "freeze_last_layer": 0.01})}
        # 2 watched images: the largest run (mixer_s16_cifar) keeps 34 MB an epoch, 1.04 GB over 30 epochs
        return Profile(name="full", device=device, preset_suffix="_cifar", dataset="cifar10", recipe=recipe,
                       synthetic_train=20000, synthetic_recipes=probes, task_recipes=tasks,
                       cache_dir=runs, seed=seed, watch_images=2, watch_budget_mb=2048.0)
    raise ValueError(f"{ENV_VAR} must be one of {PROFILES}, got {name!r}")


def current() -> Profile:
    """The profile this process runs under (see the module docstring for the rule)."""
    name = os.environ.get(ENV_VAR, "").strip().lower()
    if not name:
        name = "full" if torch.cuda.is_available() else "quick"
    seed = os.environ.get(SEED_VAR, "").strip() or "0"
    if not seed.isdigit():
        raise ValueError(f"{SEED_VAR} must be an int >= 0, got {seed!r}")
    return make(name, int(seed))
