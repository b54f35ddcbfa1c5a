"""DINO: self-distillation with no labels (Caron et al., 2021), at CPU scale.

* ``multicrop.py``: two global and several local random-resized crops, batched with ``grid_sample``;
* ``head.py``: the projection head (MLP, L2-normalised bottleneck, weight-normalised last layer);
* ``loss.py``: the cross-entropy between the centred, sharpened teacher and the student; schedules;
* :mod:`unifiedctx.train.tasks.dino`: the ``"dino"`` Task (teacher EMA, metrics, state);
* ``knn.py``, ``probe.py``: evaluation of frozen features (weighted k-NN, a linear probe).

>>> from unifiedctx import data, train                                   # doctest: +SKIP
>>> ds = data.load("mnist5k", channels=3)                                # doctest: +SKIP
>>> task = train.tasks.create("dino")                                    # doctest: +SKIP
>>> model = train.build_model("container_light_nano", ds, task=task)     # doctest: +SKIP
>>> history = train.fit(model, ds, task=task, epochs=3)                  # doctest: +SKIP
>>> history[-1]["knn_acc"]                                               # doctest: +SKIP
"""

from __future__ import annotations

from .head import DinoHead
from .knn import extract_features, knn_accuracy, knn_predict
from .loss import DinoLoss, teacher_momentum, teacher_temperature
from .multicrop import MultiCrop, color_jitter, crop_boxes, is_grey, resized_crops
from .probe import fit_linear_probe, linear_probe, probe_predict

__all__ = [
    "DinoHead",
    "DinoLoss",
    "MultiCrop",
    "color_jitter",
    "crop_boxes",
    "extract_features",
    "fit_linear_probe",
    "is_grey",
    "knn_accuracy",
    "knn_predict",
    "linear_probe",
    "probe_predict",
    "resized_crops",
    "teacher_momentum",
    "teacher_temperature",
]
