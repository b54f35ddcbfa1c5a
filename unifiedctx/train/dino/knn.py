"""k-nearest-neighbour accuracy of frozen features (DINO's weighted k-NN classifier).

With L2-normalised features, a memory bank ``F`` ``(N, D)`` with labels ``y`` and a query ``q``:

    s_j = <q, F_j> / (||q|| ||F_j||)                   cosine similarity to every bank entry
    J = the k indices of the largest s_j
    score_c = sum_{j in J, y_j = c} exp(s_j / T)       temperature-weighted votes (k = 20, T = 0.07)
    prediction = argmax_c score_c

No parameter is trained: the accuracy says how well the features alone separate the classes.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ...validation import check_float, check_int, check_positive_int


def knn_predict(
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    queries: torch.Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk: int = 1024,
) -> torch.Tensor:
    """Predicted labels ``(Q,)`` for ``queries`` ``(Q, D)`` by the ``k`` nearest of ``bank`` ``(N, D)``.

    Args:
        bank, bank_labels: the memory bank (features need not be normalised) and its int labels.
        queries: the features to classify.
        num_classes: ``C``; labels are in ``[0, C)``.
        k: neighbours that vote (at most ``N``).
        temperature: ``T`` in the vote weights ``exp(s / T)``.
        chunk: queries per similarity block (memory ``chunk x N``).
    """
    if bank.dim() != 2 or queries.dim() != 2 or bank.shape[1] != queries.shape[1]:
        raise ValueError(
            f"bank (N, D) and queries (Q, D) must share D, got {tuple(bank.shape)} and {tuple(queries.shape)}"
        )
    if bank_labels.shape != (bank.shape[0],):
        raise ValueError(f"bank_labels must have shape ({bank.shape[0]},), got {tuple(bank_labels.shape)}")
    k = check_int("k", k, low=1)
    if k > bank.shape[0]:
        raise ValueError(f"k must be an int in [1, {bank.shape[0]}] (the bank size), got {k}")
    temperature = check_float("temperature", temperature, low=0, low_open=True)
    num_classes = check_positive_int("num_classes", num_classes)
    chunk = check_positive_int("chunk", chunk)
    bank = nn.functional.normalize(bank, dim=1)
    labels = bank_labels.long()
    preds = []
    for start in range(0, queries.shape[0], chunk):
        q = nn.functional.normalize(queries[start : start + chunk].to(bank.dtype), dim=1)
        sims, idx = (q @ bank.T).topk(k, dim=1)  # (q, k)
        votes = torch.zeros(q.shape[0], num_classes, dtype=bank.dtype, device=bank.device)
        votes.scatter_add_(1, labels[idx], (sims / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long, device=bank.device)


@torch.no_grad()
def extract_features(
    model: nn.Module, batches, amp_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(features (N, D) float32, labels (N,))`` of a classifier-free ``model`` over ``(x, labels)`` batches.

    The model runs in eval mode (its mode is restored afterwards)."""
    was_training = model.training
    model.eval()
    feats, labels = [], []
    try:
        for x, y in batches:
            autocast = (
                torch.autocast(x.device.type, dtype=amp_dtype) if amp_dtype else contextlib.nullcontext()
            )
            with autocast:
                f = model(x)
            if f.dim() != 2:
                raise ValueError(
                    f"the model must return pooled features (B, D) (build it with num_classes=0), "
                    f"got {tuple(f.shape)}"
                )
            feats.append(f.float())
            labels.append(y)
    finally:
        model.train(was_training)
    if not feats:
        return torch.zeros(0, 0), torch.zeros(0, dtype=torch.long)
    return torch.cat(feats), torch.cat(labels)


def split_batches(data_batches, split: str, batch_size: int):
    """``(x, labels)`` batches of a :class:`~unifiedctx.train.DeviceBatches`'s ``split`` (``"train"``
    or ``"test"``), in order, normalised, not augmented."""
    images, labels = getattr(data_batches, f"{split}_x"), getattr(data_batches, f"{split}_y")
    for start in range(0, images.shape[0], batch_size):
        sl = slice(start, start + batch_size)
        yield data_batches.normalize(images[sl]), labels[sl]


def split_features(model: nn.Module, batches, batch_size: int = 256, amp_dtype: torch.dtype | None = None):
    """The one frozen-feature pass that k-NN and the linear probe share: ``(train_f (N, D),
    train_y (N,), test_f (Q, D), test_y (Q,))`` of a classifier-free ``model`` over a
    :class:`~unifiedctx.train.DeviceBatches`: the whole training split (the bank), and this rank's
    share of the test split (all of it in one process)."""
    train_f, train_y = extract_features(model, split_batches(batches, "train", batch_size), amp_dtype)
    test_f, test_y = extract_features(model, batches.test_batches(batch_size), amp_dtype)
    return train_f, train_y, test_f, test_y


def data_features(model: nn.Module, data, batch_size: int = 256, device="cpu"):
    """:func:`split_features` of an ImageData (``TypeError`` for anything else); ``model`` is moved
    to ``device``."""
    from ..batches import DeviceBatches

    if not hasattr(data, "train_x"):
        raise TypeError(f"data must be an ImageData (train_x/test_x tensors), got {type(data).__name__}")
    dev = torch.device(device)
    model.to(dev)
    return split_features(model, DeviceBatches(data, 1, dev, augment=False), batch_size)


def knn_accuracy(
    model: nn.Module, data, k: int = 20, temperature: float = 0.07, batch_size: int = 256, device="cpu"
) -> float:
    """k-NN accuracy in [0, 1] of ``model``'s features: the training split is the bank, the test
    split the queries (an ImageData; the model must be classifier-free, ``num_classes=0``)."""
    bank, bank_labels, queries, labels = data_features(model, data, batch_size, device)
    preds = knn_predict(bank, bank_labels, queries, int(data.num_classes), k, temperature)
    return float((preds == labels).double().mean())
