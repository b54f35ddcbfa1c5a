"""Evaluation of frozen features: the weighted k-NN classifier and the linear probe."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from unifiedctx.data.base import ImageData
from unifiedctx.train.dino import fit_linear_probe, knn_accuracy, knn_predict, linear_probe, probe_predict


def knn_numpy(bank, bank_labels, queries, num_classes, k, temperature):
    """DINO's weighted k-NN written out one query at a time."""
    bank = bank / np.linalg.norm(bank, axis=1, keepdims=True)
    preds = []
    for q in queries:
        sims = bank @ (q / np.linalg.norm(q))
        order = np.argsort(-sims, kind="stable")[:k]
        votes = np.zeros(num_classes)
        for j in order:
            votes[bank_labels[j]] += np.exp(sims[j] / temperature)
        preds.append(int(np.argmax(votes)))
    return np.array(preds)


@pytest.mark.parametrize("k, temperature", [(20, 0.07), (1, 0.07), (7, 1.0)])
def test_knn_matches_a_direct_numpy_implementation(k, temperature):
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 16, generator=gen, dtype=torch.float64)
    bank_labels = torch.randint(0, 4, (300,), generator=gen)
    bank = centres[bank_labels] + 0.8 * torch.randn(300, 16, generator=gen, dtype=torch.float64)
    queries = centres[torch.randint(0, 4, (77,), generator=gen)] + 0.8 * torch.randn(
        77, 16, generator=gen, dtype=torch.float64
    )
    got = knn_predict(bank, bank_labels, queries, 4, k=k, temperature=temperature, chunk=10)
    want = knn_numpy(bank.numpy(), bank_labels.numpy(), queries.numpy(), 4, k, temperature)
    assert np.array_equal(got.numpy(), want)


def test_knn_votes_are_weighted_by_similarity():
    # 3 neighbours: two of class 0 at cosine 0.5, one of class 1 at cosine 1; at T = 0.07 the single
    # close neighbour outweighs the two far ones (e^(1/.07) > 2 e^(.5/.07)); at T = 10 the count wins.
    bank = torch.tensor([[0.5, 0.75**0.5], [0.5, -(0.75**0.5)], [1.0, 0.0]], dtype=torch.float64)
    labels = torch.tensor([0, 0, 1])
    query = torch.tensor([[2.0, 0.0]], dtype=torch.float64)
    assert knn_predict(bank, labels, query, 2, k=3, temperature=0.07).item() == 1
    assert knn_predict(bank, labels, query, 2, k=3, temperature=10.0).item() == 0


def test_knn_refuses_bad_input_with_the_argument_named():
    bank, labels = torch.randn(10, 4), torch.zeros(10, dtype=torch.long)
    with pytest.raises(ValueError, match="share D"):
        knn_predict(bank, labels, torch.randn(3, 5), 2)
    with pytest.raises(ValueError, match="k must be"):
        knn_predict(bank, labels, torch.randn(3, 4), 2, k=11)
    with pytest.raises(ValueError, match="bank_labels"):
        knn_predict(bank, labels[:5], torch.randn(3, 4), 2)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(bank, labels, torch.randn(3, 4), 2, k=3, temperature=0)


def test_linear_probe_finds_the_same_optimum_as_sklearn():
    sklearn = pytest.importorskip("sklearn.linear_model")
    gen = torch.Generator().manual_seed(1)
    y = torch.randint(0, 3, (200,), generator=gen)
    x = torch.randn(3, 5, generator=gen, dtype=torch.float64)[y] + torch.randn(
        200, 5, generator=gen, dtype=torch.float64
    )
    wd = 0.05
    probe = fit_linear_probe(x, y, 3, weight_decay=wd, max_iter=500, standardize=False)
    # sklearn minimises 0.5 ||W||^2 + C sum_i CE_i, i.e. our mean CE + (wd / 2) ||W||^2 with C = 1 / (wd n)
    ref = sklearn.LogisticRegression(C=1.0 / (wd * len(y)), tol=1e-12, max_iter=10_000).fit(
        x.numpy(), y.numpy()
    )
    np.testing.assert_allclose(probe["weight"].numpy(), ref.coef_, atol=1e-5)
    np.testing.assert_allclose(probe["bias"].numpy(), ref.intercept_, atol=1e-5)
    assert np.array_equal(probe_predict(probe, x).numpy(), ref.predict(x.numpy()))


class PixelFeatures(nn.Module):
    """A fixed 'backbone': the mean of each image's four quadrants per channel (12 features)."""

    def forward(self, x):
        return nn.functional.avg_pool2d(x, x.shape[-1] // 2).flatten(1)


def quadrant_data(seed=0) -> ImageData:
    """Class k = a bright quadrant k on a dark image, plus noise."""
    gen = torch.Generator().manual_seed(seed)

    def split(n):
        y = torch.randint(0, 4, (n,), generator=gen)
        x = torch.randint(0, 60, (n, 3, 8, 8), generator=gen)
        for i, k in enumerate(y.tolist()):
            r, c = divmod(k, 2)
            x[i, :, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 150
        return x.to(torch.uint8), y

    (tx, ty), (vx, vy) = split(120), split(60)
    return ImageData("quadrants", tx, ty, vx, vy, ["a", "b", "c", "d"], (0.3,) * 3, (0.3,) * 3)


def test_knn_accuracy_and_linear_probe_of_a_model_on_image_data():
    data = quadrant_data()
    model = PixelFeatures()
    feats = lambda x: model(data.normalize(x))
    want = knn_predict(feats(data.train_x), data.train_y, feats(data.test_x), 4)
    acc = knn_accuracy(model, data, batch_size=17)
    assert acc == pytest.approx((want == data.test_y).double().mean().item())
    assert acc > 0.95  # the features separate the classes perfectly up to noise
    probe = linear_probe(model, data, batch_size=17)
    assert probe["train_acc"] > 0.95 and probe["test_acc"] > 0.95
    with pytest.raises(TypeError, match="ImageData"):
        knn_accuracy(model, object())
