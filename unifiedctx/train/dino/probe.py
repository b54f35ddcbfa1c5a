"""A linear probe: multinomial logistic regression on frozen features.

Features are standardised with the training split's mean and standard deviation, then

    W*, b* = argmin_{W, b}  mean_i  -log softmax(W f_i + b)_{y_i}  +  (lambda / 2) ||W||_F^2

is found by full-batch L-BFGS in float64 (the problem is convex, so the optimum is unique for
``lambda > 0``). The probe's test accuracy says how much of the label is linearly readable from
the features.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def fit_linear_probe(
    train_features: torch.Tensor,
    train_labels: torch.Tensor,
    num_classes: int,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
    standardize: bool = True,
) -> dict[str, torch.Tensor]:
    """``{"weight": (C, D), "bias": (C,), "mean": (D,), "std": (D,)}`` (float64) of the probe.

    Args:
        train_features: ``(N, D)`` frozen features; train_labels: ``(N,)`` ints in ``[0, C)``.
        num_classes: ``C``.
        weight_decay: ``lambda`` (the bias is not penalised).
        max_iter: L-BFGS iterations.
        standardize: centre and scale each feature by the training split's statistics.
    """
    if train_features.dim() != 2 or train_labels.shape != (train_features.shape[0],):
        raise ValueError(
            f"train_features (N, D) and train_labels (N,) expected, got "
            f"{tuple(train_features.shape)} and {tuple(train_labels.shape)}"
        )
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    x = train_features.detach().double().cpu()
    y = train_labels.detach().long().cpu()
    d = x.shape[1]
    mean, std = (x.mean(0), x.std(0).clamp_min(1e-12)) if standardize else (torch.zeros(d), torch.ones(d))
    mean, std = mean.double(), std.double()
    x = (x - mean) / std
    weight = torch.zeros(num_classes, d, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=max_iter,
        tolerance_grad=1e-10,
        tolerance_change=1e-14,
        history_size=20,
        line_search_fn="strong_wolfe",
    )

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + 0.5 * weight_decay * weight.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return {"weight": weight.detach(), "bias": bias.detach(), "mean": mean, "std": std}


def probe_predict(probe: dict[str, torch.Tensor], features: torch.Tensor) -> torch.Tensor:
    """Predicted labels ``(N,)`` of ``features`` ``(N, D)`` by a probe from :func:`fit_linear_probe`."""
    x = (features.detach().double().cpu() - probe["mean"]) / probe["std"]
    return (x @ probe["weight"].T + probe["bias"]).argmax(1)


def linear_probe(
    model, data, weight_decay: float = 1e-4, max_iter: int = 200, batch_size: int = 256, device="cpu"
) -> dict[str, float]:
    """Train and test accuracy in [0, 1] of a linear probe on a classifier-free ``model``'s frozen
    features of an ImageData's train split (fit) and test split (scored)."""
    from .knn import data_features

    train_f, train_y, test_f, test_y = data_features(model, data, batch_size, device)
    probe = fit_linear_probe(train_f, train_y, int(data.num_classes), weight_decay, max_iter)
    train_acc = (probe_predict(probe, train_f) == train_y.cpu()).double().mean()
    test_acc = (probe_predict(probe, test_f) == test_y.cpu()).double().mean()
    return {"train_acc": float(train_acc), "test_acc": float(test_acc)}
