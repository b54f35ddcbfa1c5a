"""Self-distillation with no labels (DINO, Caron et al. 2021) as a training task.

    crops = multicrop(x)                                 2 global (G x G) + L local (S x S)
    student:  s_v = head(backbone(crop_v))               every crop, with gradients
    teacher:  t_g = head'(backbone'(crop_g))             the 2 global crops, no gradients
    loss = DinoLoss(s, t, tau_t(step))                   see loss.py (centring, sharpening)
    after the optimizer step:
        theta' <- m(step) theta' + (1 - m(step)) theta   teacher = EMA of student (backbone + head)

``backbone`` is the model the engine trains: a classifier-free network whose output is its
pooled feature ``(B, D)`` (``setup`` calls ``reset_classifier(0)`` when the model still has a
classifier). The labels are never used for training; each epoch the history gets the k-NN
accuracy (k = 20, T = 0.07, cosine) of the student's and the teacher's frozen features, the
training split as the memory bank and the test split as queries (``knn_acc``, ``teacher_knn_acc``),
and two collapse monitors of the teacher's output ``P_t``: ``teacher_entropy`` (mean per-image
entropy; log K means uniform, one kind of collapse) and ``teacher_mean_entropy`` (entropy of the
batch-mean distribution; 0 means every image picks the same prototype, the other kind).

Multi-crop randomness comes from the global torch RNG, which the engine re-seeds every epoch, so
resume is exact. Colour jitter and flips default to the data: both on for colour images, both off
for grey ones (digits replicated to 3 channels: a mirrored 2 is not a 2, and there is no colour).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import nn

from ...validation import check_bool, check_float, check_int
from .. import distributed as D
from ..batches import DeviceBatches
from ..dino.head import DinoHead
from ..dino.knn import knn_predict, split_features
from ..dino.loss import DinoLoss, teacher_momentum, teacher_temperature
from ..dino.multicrop import MultiCrop, is_grey
from . import register
from .base import Task, TaskExample


def _core(module: nn.Module) -> nn.Module:
    """``module`` without its ``torch.compile`` and DDP wrappers."""
    for _ in range(3):
        module = getattr(module, "_orig_mod", module)
        if isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
    return module


class DinoStudent(nn.Module):
    """The student that the engine trains (and wraps in DDP): ``head(backbone(crops))``.

    ``forward(crops)`` takes the list of crops (2 global ``(B, C, G, G)`` first, then the local ones
    ``(B, C, S, S)``) and returns the ``(B, K)`` logits of each, with one backbone pass per crop size.
    """

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        b = crops[0].shape[0]
        out = [self.head(self.backbone(torch.cat(crops[:2])).float())]
        if len(crops) > 2:
            out.append(self.head(self.backbone(torch.cat(crops[2:])).float()))
        return list(torch.cat(out).split(b))


def _freeze_stochastic_layers(module: nn.Module) -> None:
    """Dropout and drop-path off (eval mode) in ``module``; everything else keeps its mode."""
    for m in module.modules():
        if isinstance(m, nn.modules.dropout._DropoutNd) or type(m).__name__ == "DropPath":
            m.eval()


@dataclass(frozen=True)
class DinoOptions:
    """The options of :class:`Dino`, each checked when made (``TypeError``/``ValueError`` naming it).

    The defaults are for CPU scale (networks of ~30k parameters, 32 x 32 images, a few hundred
    steps); where they differ from the paper's ImageNet recipe, it is for a reason measured here:
    ``head_bn=True`` (DINO's ``use_bn`` option; without it the teacher of a freshly initialised
    nano network barely tells images apart and training slides into the uniform collapse, its
    per-image entropy reaching log K within ~60 steps), ``out_dim=256`` (not 65536), ``momentum``
    0.99 (0.996 would leave the teacher near its random start after so few steps), crops of
    (0.5, 1) and (0.2, 0.5) of the area (on a 32 x 32 digit a 5 % crop is 7 x 7 pixels of mostly
    background, which no teacher can be predicted from). The temperatures are the paper's defaults.

    Attributes:
        out_dim, hidden_dim, bottleneck_dim, head_layers, head_bn: the projection head (:class:`DinoHead`).
        local_crops: local crops per image; local_size: their side (default half the image,
            which the network's stride must divide); global_scale, local_scale: area ranges.
        flip, jitter: ``None`` decides from the data (on for colour, off for grey images);
            ``jitter`` is the colour-jitter strength (0.4 when on).
        student_temp: ``tau_s``; teacher_temp: ``tau_t`` after the warmup, which starts at
            ``warmup_teacher_temp`` and lasts ``teacher_temp_warmup`` (a fraction of all steps).
        momentum: ``m_0`` of the teacher's EMA (cosine schedule to 1).
        center_momentum: ``m_c`` of the centre.
        freeze_last_layer: the prototypes (the head's last layer) get no gradient during this
            fraction of the steps (DINO freezes them for the first epoch: it steadies the start).
        head_seed: the head's initial weights come from ``torch.manual_seed(head_seed)`` (the
            model's come from its builder), so a run is reproducible.
        knn_k, knn_temperature: the k-NN evaluation.
        eval_teacher: also report ``teacher_knn_acc`` every epoch.
    """

    out_dim: int = 256
    hidden_dim: int = 256
    bottleneck_dim: int = 64
    head_layers: int = 3
    head_bn: bool = True
    local_crops: int = 4
    local_size: int | None = None
    global_scale: tuple = (0.5, 1.0)
    local_scale: tuple = (0.2, 0.5)
    flip: bool | None = None
    jitter: float | None = None
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    teacher_temp_warmup: float = 0.3
    momentum: float = 0.99
    center_momentum: float = 0.9
    freeze_last_layer: float = 0.0
    head_seed: int = 0
    knn_k: int = 20
    knn_temperature: float = 0.07
    eval_teacher: bool = True

    def __post_init__(self) -> None:
        checks = {
            **{k: lambda n, v: check_int(n, v, low=1) for k in ("out_dim", "hidden_dim", "bottleneck_dim",
                                                                "head_layers", "knn_k")},
            "local_crops": lambda n, v: check_int(n, v, low=0),
            "head_seed": lambda n, v: check_int(n, v, low=0),
            "local_size": lambda n, v: None if v is None else check_int(n, v, low=1),
            "head_bn": check_bool, "eval_teacher": check_bool,
            "flip": lambda n, v: None if v is None else check_bool(n, v),
            "jitter": lambda n, v: None if v is None else check_float(n, v, low=0.0, high=0.99),
            "global_scale": _area_range, "local_scale": _area_range,
            **{k: lambda n, v: check_float(n, v, low=1e-6, high=10.0)
               for k in ("student_temp", "teacher_temp", "warmup_teacher_temp", "knn_temperature")},
            **{k: lambda n, v: check_float(n, v, low=0.0, high=1.0)
               for k in ("teacher_temp_warmup", "momentum", "freeze_last_layer")},
            "center_momentum": lambda n, v: check_float(n, v, low=0.0, high=0.999999),
        }
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, checks[f.name](f.name, getattr(self, f.name)))


def _area_range(name: str, value) -> tuple[float, float]:
    """A ``(low, high)`` pair of area fractions (the crops' own checks come with :class:`MultiCrop`)."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__") or len(value) != 2:
        raise TypeError(f"{name} must be a pair (low, high) of area fractions, got {value!r}")
    return tuple(check_float(f"{name}[{i}]", v) for i, v in enumerate(value))


@register
class Dino(Task):
    """DINO self-distillation (see the module docstring for the math; :class:`DinoOptions` for the
    options and their CPU-scale defaults)."""

    name = "dino"
    best_metric = "knn_acc"
    Options = DinoOptions

    def __init__(self, **options):
        super().__init__(**options)
        self.head: DinoHead | None = None
        self.teacher: nn.ModuleDict | None = None
        self.criterion: DinoLoss | None = None
        self.multicrop: MultiCrop | None = None
        self.student: nn.Module | None = None
        self.step, self.total_steps = 0, 0

    @classmethod
    def example(cls) -> TaskExample:
        """32 training and 16 test texture images of 16 px, a small head; each rank draws its own
        multi-crops and the head's BatchNorm sees its own shard (so two ranks are not one process)."""
        from unifiedctx.data.texture import load_texture

        return TaskExample("deit_tiny_nano", load_texture(n_train=32, n_test=16, size=16, seed=0),
                           {"out_dim": 32, "hidden_dim": 32, "bottleneck_dim": 16, "local_crops": 2,
                            "knn_k": 5},
                           {}, {"batch_size": 16, "lr": 3e-3, "seed": 1}, ddp_matches_single=False,
                           state_metrics=("teacher_knn_acc",))

    def model_options(self, data) -> dict:
        """The preset sized for ``data``, without a classifier (``num_classes=0``): its output is
        the pooled feature that the head and the k-NN read."""
        return {**super().model_options(data), "num_classes": 0}

    def setup(self, model: nn.Module, data, device: torch.device) -> None:
        """Check the data, drop the model's classifier, build the crops, head, teacher and loss."""
        if not hasattr(data, "train_x"):
            raise TypeError(
                "the dino task needs an ImageData (train_x/train_y/test_x/test_y tensors; its "
                f"training split is the k-NN memory bank), got {type(data).__name__}"
            )
        channels, height, width = (int(s) for s in data.train_x.shape[1:])
        in_chans = getattr(model, "in_chans", channels)
        if in_chans != channels:
            raise ValueError(
                f"the model takes {in_chans} channels but the data has {channels}: build it with "
                f"in_chans={channels}"
            )
        if height != width:
            raise ValueError(f"the dino task crops square images; the data is {height}x{width}")
        if getattr(model, "num_classes", 0) and hasattr(model, "reset_classifier"):
            model.reset_classifier(0)
        grey = is_grey(data.train_x[:512])
        flip = (not grey) if self.options.flip is None else self.options.flip
        jitter = (0.0 if grey else 0.4) if self.options.jitter is None else self.options.jitter
        if jitter > 0 and channels != 3:
            raise ValueError(f"colour jitter needs 3-channel data, got {channels} channels: pass jitter=0")
        local_size = self.options.local_size or max(1, height // 2)
        self.multicrop = MultiCrop(
            height,
            local_size,
            self.options.local_crops,
            self.options.global_scale,
            self.options.local_scale,
            flip=flip,
            jitter=jitter,
            mean=data.mean,
            std=data.std,
        )
        in_dim = self._feature_dim(model, data, device, height, local_size)
        self.student = model
        o = self.options
        with torch.random.fork_rng(devices=[]):  # the same head for the same settings, in any process
            torch.manual_seed(o.head_seed)
            self.head = DinoHead(in_dim, o.out_dim, o.hidden_dim, o.bottleneck_dim, o.head_layers,
                                 o.head_bn).to(device)
        self.head.last_layer.parametrizations.weight.original1.register_hook(self._last_layer_gradient)
        self.teacher = nn.ModuleDict({"backbone": copy.deepcopy(model), "head": copy.deepcopy(self.head)})
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.criterion = DinoLoss(o.out_dim, o.student_temp, o.center_momentum).to(device)
        self.step, self.total_steps = 0, 0

    @torch.no_grad()
    def _feature_dim(self, model, data, device, global_size: int, local_size: int) -> int:
        """The width of ``model``'s output, checked to be pooled ``(B, D)`` at both crop sizes."""
        was_training = model.training
        model.eval()
        try:
            probe = data.test_x[:2].to(device).float()
            out = model(probe)
            if self.options.local_crops:
                small = nn.functional.interpolate(probe, size=(local_size, local_size), mode="bilinear")
                try:
                    model(small)
                except ValueError as err:
                    raise ValueError(
                        f"the model cannot take the {local_size}x{local_size} local crops ({err}); "
                        "pass local_size=... that it takes, or local_crops=0"
                    ) from err
        finally:
            model.train(was_training)
        if out.dim() != 2:
            raise ValueError(
                f"the model must return a pooled feature (B, D), got shape {tuple(out.shape)}; "
                "build it with num_classes=0"
            )
        return int(out.shape[1])

    def last_layer_frozen(self) -> bool:
        """True during the first ``freeze_last_layer`` fraction of the steps (and before the
        engine has told the total), when the prototypes get no gradient."""
        if self.options.freeze_last_layer == 0:
            return False
        return self.total_steps == 0 or self.step < self.options.freeze_last_layer * self.total_steps

    def _last_layer_gradient(self, grad: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(grad) if self.last_layer_frozen() else grad

    def modules(self) -> nn.ModuleDict:
        """The projection head (trained with the backbone)."""
        self._require_setup()
        return nn.ModuleDict({"head": self.head})

    def network(self, model: nn.Module) -> DinoStudent:
        """The student, backbone and head in one module: the engine's DDP wraps both."""
        self._require_setup()
        return DinoStudent(model, self.head)

    def batches(
        self,
        data,
        batch_size: int,
        device,
        *,
        seed: int = 0,
        augment: bool = True,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ):
        """Plain normalised batches ``(x, labels, labels)``: the multi-crop in :meth:`loss` is DINO's
        augmentation (``augment`` is not used)."""
        return DeviceBatches(
            data,
            batch_size,
            device,
            seed=seed,
            augment=False,
            rank=rank,
            world_size=world_size,
            channels_last=channels_last,
        )

    def _require_setup(self) -> None:
        if self.head is None:
            raise RuntimeError("call setup(model, data, device) first (fit does)")

    # ------------------------------------------------------------------ training
    def current_teacher_temp(self) -> float:
        """``tau_t`` at the current step."""
        o = self.options
        return teacher_temperature(self.step, self.total_steps, o.warmup_teacher_temp, o.teacher_temp,
                                   o.teacher_temp_warmup)

    @torch.no_grad()
    def teacher_logits(self, global_crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """The teacher's ``(B, K)`` logits for each global crop (one forward pass for both)."""
        self.teacher.train()
        _freeze_stochastic_layers(self.teacher)
        b = global_crops[0].shape[0]
        out = self.teacher["head"](self.teacher["backbone"](torch.cat(global_crops)).float())
        return list(out.split(b))

    def student_logits(self, student: nn.Module, crops: list[torch.Tensor]) -> list[torch.Tensor]:
        """The student's ``(B, K)`` logits for every crop: ``student`` is :meth:`network`'s module
        (or its DDP wrapper); a bare backbone is given the head here."""
        if not isinstance(_core(student), DinoStudent):
            student = DinoStudent(student, self.head)
        return student(crops)

    def loss(self, model: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Multi-crop, student and teacher forward passes, the DINO loss; the centre is updated."""
        self._require_setup()
        crops = self.multicrop(batch[0])
        if batch[0].is_contiguous(memory_format=torch.channels_last):
            crops = [c.contiguous(memory_format=torch.channels_last) for c in crops]
        teacher = self.teacher_logits(crops[:2])
        student = self.student_logits(model, crops)
        temp = self.current_teacher_temp()
        loss = self.criterion(student, teacher, temp)
        with torch.no_grad():
            probs = torch.cat(self.criterion.teacher_probs(teacher, temp))
            rows = probs.shape[0]
            entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1)
            mean = probs.mean(0)
            mean_entropy = -(mean * mean.clamp_min(1e-30).log()).sum()
        self.criterion.update_center(teacher)
        sums = {
            "teacher_entropy": entropy.sum(),
            "teacher_mean_entropy": mean_entropy * rows,
            "teacher_rows": torch.tensor(float(rows), device=probs.device),
        }
        return loss, sums

    @torch.no_grad()
    def after_step(self, model: nn.Module, global_step: int, total_steps: int) -> None:
        """Teacher EMA with ``m(global_step)``; ``global_step`` is the 0-based step just taken."""
        self._require_setup()
        m = teacher_momentum(global_step, total_steps, self.options.momentum)
        ours = [*self.teacher["backbone"].parameters(), *self.teacher["head"].parameters()]
        theirs = [*self.student.parameters(), *self.head.parameters()]
        torch._foreach_lerp_(ours, [p.detach() for p in theirs], 1.0 - m)
        self.step, self.total_steps = global_step + 1, total_steps

    def train_metrics(self, sums: dict[str, float]) -> dict[str, float]:
        rows = max(sums.get("teacher_rows", 0.0), 1.0)
        return {
            "teacher_entropy": sums.get("teacher_entropy", math.nan) / rows,
            "teacher_mean_entropy": sums.get("teacher_mean_entropy", math.nan) / rows,
        }

    # ------------------------------------------------------------------ evaluation and state
    def knn_accuracy(
        self, backbone: nn.Module, batches, batch_size: int, amp_dtype, ctx: D.DistContext
    ) -> float:
        """k-NN accuracy of ``backbone``'s features: every rank builds the whole bank from the
        training split and classifies its shard of the test split; the hits are summed over ranks."""
        bank, bank_labels, queries, labels = split_features(backbone, batches, batch_size, amp_dtype)
        device = bank.device
        sums = torch.zeros(2, dtype=torch.float64, device=device)
        if len(labels):
            k, temperature = self.options.knn_k, self.options.knn_temperature
            preds = knn_predict(bank, bank_labels, queries.to(device), batches.num_classes, k, temperature)
            sums += torch.stack(
                [
                    (preds == labels.to(device)).sum().double(),
                    torch.tensor(float(len(labels)), dtype=torch.float64, device=device),
                ]
            )
        D.all_reduce_sum(sums, ctx)
        if sums[1] == 0:
            raise ValueError("the test split is empty: nothing to evaluate")
        return float(sums[0] / sums[1])

    def evaluate(self, model, batches, batch_size, amp_dtype, ctx, device) -> dict[str, float]:
        """``knn_acc`` of ``model`` (and ``teacher_knn_acc`` when ``model`` is the student)."""
        row = {"knn_acc": self.knn_accuracy(model, batches, batch_size, amp_dtype, ctx)}
        if self.options.eval_teacher and self.teacher is not None and model is self.student:
            row["teacher_knn_acc"] = self.knn_accuracy(
                self.teacher["backbone"], batches, batch_size, amp_dtype, ctx
            )
        return row

    def state_dict(self) -> dict:
        """The teacher (backbone and head), the centre and the step (the schedules' clock)."""
        self._require_setup()
        return {
            "teacher": self.teacher.state_dict(),
            "center": self.criterion.center.detach().clone(),
            "step": self.step,
            "total_steps": self.total_steps,
        }

    def load_state_dict(self, state: dict) -> None:
        self._require_setup()
        if not state:
            return
        self.teacher.load_state_dict(state["teacher"])
        self.criterion.center.copy_(state["center"])
        self.step, self.total_steps = int(state["step"]), int(state["total_steps"])
