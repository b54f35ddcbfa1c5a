"""Our DINO against the paper's formulation (Caron et al. 2021, "Emerging properties in
self-supervised vision transformers", and the conventions of its reference code), on identical
inputs, in float64.

The reference formulas are written here from the paper, independently of ``unifiedctx``:

* loss: the student's logits of all crops are divided by ``tau_s`` and cut into crops; the teacher's
  global-crop logits are centred and sharpened, ``softmax((t - C) / tau_t)``; the loss is the sum over
  (teacher global crop ``g``, student crop ``v``, ``v != g``) of ``-q . log_softmax(s / tau_s)``,
  averaged over the images of each pair and then over the pairs;
* centre: ``C <- m C + (1 - m) sum_ranks sum_batch t / (B * world_size)``;
* teacher temperature: ``linspace(warmup_teacher_temp, teacher_temp, W)`` for the first ``W`` epochs,
  then ``teacher_temp`` (per epoch);
* teacher momentum: ``m_k = 1 - (1 - m0) (cos(pi k / K) + 1) / 2`` for the 0-based step ``k`` of ``K``.

Where our convention differs (the temperature warm-up is linear per step, not per epoch; the
centre divides by the rows it summed, which is ``B * world_size`` when the ranks' batches are equal),
the test states it, checks it exactly and checks where it meets the paper's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from unifiedctx.data import load
from unifiedctx.train import build_model
from unifiedctx.train.dino import DinoLoss, teacher_momentum, teacher_temperature
from unifiedctx.train.tasks.dino import Dino

TIGHT = {"atol": 1e-12, "rtol": 1e-12}


# ---------------------------------------------------------------------------- the paper's formulas
def paper_log_softmax(z: np.ndarray) -> np.ndarray:
    """``z - logsumexp(z)`` along the last axis, float64."""
    top = z.max(-1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(-1, keepdims=True))


def paper_loss(
    student_output: np.ndarray,
    teacher_output: np.ndarray,
    center: np.ndarray,
    ncrops: int,
    student_temp: float,
    teacher_temp: float,
) -> float:
    """DINOLoss.forward of the reference code: ``student_output`` is ``(ncrops * B, K)`` (the crops
    stacked, globals first), ``teacher_output`` ``(2 * B, K)``."""
    student_out = np.split(student_output / student_temp, ncrops)
    teacher_out = np.split(np.exp(paper_log_softmax((teacher_output - center) / teacher_temp)), 2)
    total_loss, n_loss_terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v in range(len(student_out)):
            if v == iq:
                continue  # the student's crop that the teacher saw is skipped
            loss = np.sum(-q * paper_log_softmax(student_out[v]), axis=-1)
            total_loss += loss.mean()
            n_loss_terms += 1
    return total_loss / n_loss_terms


def paper_center(
    center: np.ndarray, teacher_outputs_per_rank: list[np.ndarray], momentum: float
) -> np.ndarray:
    """update_center of the reference code: the batch sum all-reduced over ranks, divided by the
    local batch size times the world size."""
    batch_center = sum(t.sum(0, keepdims=True) for t in teacher_outputs_per_rank)
    batch_center = batch_center / (len(teacher_outputs_per_rank[0]) * len(teacher_outputs_per_rank))
    return center * momentum + batch_center * (1 - momentum)


def paper_teacher_temps(
    warmup_teacher_temp: float, teacher_temp: float, warmup_epochs: int, nepochs: int
) -> np.ndarray:
    """The reference code's per-epoch teacher-temperature schedule."""
    return np.concatenate(
        (
            np.linspace(warmup_teacher_temp, teacher_temp, warmup_epochs),
            np.ones(nepochs - warmup_epochs) * teacher_temp,
        )
    )


def paper_momentum_schedule(base: float, epochs: int, niter_per_ep: int) -> np.ndarray:
    """The reference code's ``cosine_scheduler(base, 1, epochs, niter_per_ep)``: one value per step."""
    iters = np.arange(epochs * niter_per_ep)
    return 1 + 0.5 * (base - 1) * (1 + np.cos(np.pi * iters / len(iters)))


def crops(gen: torch.Generator, n: int, batch: int, dim: int, scale: float = 3.0) -> list[torch.Tensor]:
    return [scale * torch.randn(batch, dim, generator=gen, dtype=torch.float64) for _ in range(n)]


# ---------------------------------------------------------------------------- loss
@pytest.mark.parametrize("local_crops", [0, 1, 4])
def test_loss_equals_the_reference_on_stacked_crops(local_crops):
    gen = torch.Generator().manual_seed(10 + local_crops)
    batch, dim, ncrops = 7, 32, 2 + local_crops
    student, teacher = crops(gen, ncrops, batch, dim), crops(gen, 2, batch, dim)
    criterion = DinoLoss(dim, student_temp=0.1, center_momentum=0.9).double()
    center = torch.randn(1, dim, generator=gen, dtype=torch.float64)
    criterion.center.copy_(center)
    for tau_t in (0.04, 0.07):
        got = criterion(student, teacher, teacher_temp=tau_t)
        want = paper_loss(
            torch.cat(student).numpy(), torch.cat(teacher).numpy(), center.numpy(), ncrops, 0.1, tau_t
        )
        assert got.dtype == torch.float64
        assert got.item() == pytest.approx(want, rel=1e-12, abs=1e-12)
    # the centre matters: without it the reference gives another number
    assert criterion(student, teacher, 0.04).item() != pytest.approx(
        paper_loss(
            torch.cat(student).numpy(), torch.cat(teacher).numpy(), 0 * center.numpy(), ncrops, 0.1, 0.04
        )
    )


def test_loss_gradient_reaches_only_the_student_and_equals_the_reference_gradient():
    gen = torch.Generator().manual_seed(3)
    batch, dim, ncrops = 5, 16, 4
    student = [s.requires_grad_() for s in crops(gen, ncrops, batch, dim)]
    teacher = [t.requires_grad_() for t in crops(gen, 2, batch, dim)]
    criterion = DinoLoss(dim, student_temp=0.1).double()
    criterion.center.copy_(torch.randn(1, dim, generator=gen, dtype=torch.float64))
    criterion(student, [t.detach() for t in teacher], 0.04).backward()
    # the reference loss differentiated by hand, P pairs, B images:
    #     d loss / d s_v = sum_{g != v} (softmax(s_v / tau_s) - q_g) / (tau_s B P)
    q = [torch.softmax((t.detach() - criterion.center) / 0.04, -1) for t in teacher]
    pairs = 2 * ncrops - 2
    for v, s in enumerate(student):
        targets = [q[g] for g in range(2) if g != v]
        p = torch.softmax(s.detach() / 0.1, -1)
        want = sum(p - target for target in targets) / (0.1 * batch * pairs)
        torch.testing.assert_close(s.grad, want, **TIGHT)
    assert all(t.grad is None for t in teacher)


def test_centring_and_sharpening_each_change_the_loss_as_the_formula_says():
    # identical teacher rows and a centre equal to them: the centred teacher is uniform at any tau_t,
    # so each pair's loss is the cross-entropy of the uniform distribution, -mean_k log p_s
    gen = torch.Generator().manual_seed(4)
    dim = 12
    row = torch.randn(1, dim, generator=gen, dtype=torch.float64)
    teacher = [row.repeat(3, 1), row.repeat(3, 1)]
    student = crops(gen, 3, 3, dim)
    criterion = DinoLoss(dim).double()
    criterion.center.copy_(row)
    got = criterion(student, teacher, 0.04)
    log_p = [torch.log_softmax(s / 0.1, -1) for s in student]
    want = np.mean([(-lp.mean(-1)).mean().item() for g in range(2) for v, lp in enumerate(log_p) if v != g])
    assert got.item() == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------------------- centre
def test_centre_update_equals_the_reference_on_one_rank():
    gen = torch.Generator().manual_seed(5)
    teacher = crops(gen, 2, 6, 20)
    criterion = DinoLoss(20, center_momentum=0.9).double()
    start = torch.randn(1, 20, generator=gen, dtype=torch.float64)
    criterion.center.copy_(start)
    criterion.update_center(teacher)
    want = paper_center(start.numpy(), [torch.cat(teacher).numpy()], 0.9)
    np.testing.assert_allclose(criterion.center.numpy(), want, **TIGHT)
    criterion.update_center(teacher)  # a second step keeps following the same recursion
    np.testing.assert_allclose(
        criterion.center.numpy(), paper_center(want, [torch.cat(teacher).numpy()], 0.9), **TIGHT
    )


def _centre_on_rank(rank: int, world: int, init_file: str, batches: list[int], result_file: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        gen = torch.Generator().manual_seed(100 + rank)
        teacher = crops(gen, 2, batches[rank], 8)
        criterion = DinoLoss(8, center_momentum=0.8).double()
        criterion.center.fill_(0.5)
        criterion.update_center(teacher)
        torch.save(
            {"teacher": torch.cat(teacher), "center": criterion.center.clone()}, f"{result_file}.{rank}"
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("batches", [[4, 4], [3, 5]])
def test_centre_is_the_mean_over_all_ranks(tmp_path, batches):
    # two gloo processes, each with its own teacher batch: both must hold the same centre, the paper's
    # when the batches are equal; with unequal batches ours is the mean over all the rows (the paper's
    # code would divide by B_local * world and weight the ranks unequally)
    world, result = 2, str(tmp_path / "centre")
    mp.spawn(_centre_on_rank, args=(world, str(tmp_path / "init"), batches, result), nprocs=world, join=True)
    got = [torch.load(f"{result}.{r}", weights_only=True) for r in range(world)]
    torch.testing.assert_close(got[0]["center"], got[1]["center"], atol=0, rtol=0)
    rows = [g["teacher"].numpy() for g in got]
    all_rows_mean = 0.8 * 0.5 + 0.2 * np.concatenate(rows).mean(0, keepdims=True)
    np.testing.assert_allclose(got[0]["center"].numpy(), all_rows_mean, **TIGHT)
    if batches[0] == batches[1]:
        np.testing.assert_allclose(
            got[0]["center"].numpy(), paper_center(np.full((1, 8), 0.5), rows, 0.8), **TIGHT
        )


# ---------------------------------------------------------------------------- teacher temperature
def test_teacher_temperature_is_linear_per_step_then_constant():
    # our convention: tau(s) = tau_0 + (tau_1 - tau_0) min(1, s / (w S)), per step
    total, warmup, start, end = 250, 0.3, 0.04, 0.07
    steps = np.arange(total)
    want = start + (end - start) * np.minimum(1.0, steps / (warmup * total))
    got = np.array([teacher_temperature(int(s), total, start, end, warmup) for s in steps])
    np.testing.assert_allclose(got, want, atol=1e-15, rtol=0)
    assert got[0] == start and (got[75:] == end).all() and (np.diff(got[:76]) > 0).all()
    assert teacher_temperature(3, total, start, end, 0.0) == end  # no warm-up: the final value at once


@pytest.mark.parametrize("warmup_epochs, epochs, steps_per_epoch", [(30, 100, 7), (3, 10, 13), (2, 2, 5)])
def test_teacher_temperature_meets_the_papers_per_epoch_schedule_at_every_epoch_start(
    warmup_epochs, epochs, steps_per_epoch
):
    # the paper's schedule is linspace(tau_0, tau_1, W) over W epochs (reaching tau_1 at epoch W - 1);
    # our per-step line with w = (W - 1) / epochs takes the same value at the first step of every epoch
    paper = paper_teacher_temps(0.04, 0.07, warmup_epochs, epochs)
    total, warmup = epochs * steps_per_epoch, (warmup_epochs - 1) / epochs
    ours = np.array(
        [teacher_temperature(e * steps_per_epoch, total, 0.04, 0.07, warmup) for e in range(epochs)]
    )
    np.testing.assert_allclose(ours, paper, atol=1e-15, rtol=1e-14)
    # inside an epoch of the warm-up ours rises already, the paper's stays at the epoch's value
    if warmup_epochs > 1:
        inside = teacher_temperature(steps_per_epoch // 2 + 1, total, 0.04, 0.07, warmup)
        assert paper[0] < inside < paper[1]


def test_the_task_uses_the_warmup_start_at_its_first_step_and_the_step_it_has_reached():
    # the task knows the total only after its first step: step 0 must still be the warm-up's start
    data = load("mnist5k", channels=3).subset(64, 32, seed=0)
    task = Dino(
        out_dim=16,
        hidden_dim=16,
        bottleneck_dim=8,
        local_crops=0,
        warmup_teacher_temp=0.02,
        teacher_temp=0.07,
        teacher_temp_warmup=0.5,
    )
    model = build_model("deit_tiny_nano", data, seed=0, task=task)
    task.setup(model, data, torch.device("cpu"))
    assert task.current_teacher_temp() == 0.02
    for step in range(6):
        task.after_step(model, step, 10)
        assert task.current_teacher_temp() == pytest.approx(0.02 + 0.05 * min(1.0, (step + 1) / 5), abs=1e-15)


# ---------------------------------------------------------------------------- teacher momentum
@pytest.mark.parametrize("base, epochs, niter", [(0.996, 100, 3), (0.99, 4, 31), (0.9, 1, 7)])
def test_teacher_momentum_equals_the_reference_cosine_schedule(base, epochs, niter):
    paper = paper_momentum_schedule(base, epochs, niter)
    total = epochs * niter
    ours = np.array([teacher_momentum(k, total, base) for k in range(total)])
    np.testing.assert_allclose(ours, paper, atol=1e-15, rtol=0)
    formula = 1 - (1 - base) * (np.cos(np.pi * np.arange(total) / total) + 1) / 2
    np.testing.assert_allclose(ours, formula, atol=1e-15, rtol=0)
    assert ours[0] == pytest.approx(base, abs=1e-15) and teacher_momentum(total, total, base) == 1.0


def test_the_task_moves_the_teacher_by_the_momentum_of_the_step_just_taken():
    # theta_t <- m_k theta_t + (1 - m_k) theta_s with m_k the reference schedule's value at step k
    data = load("mnist5k", channels=3).subset(64, 32, seed=0)
    task = Dino(out_dim=16, hidden_dim=16, bottleneck_dim=8, local_crops=0, momentum=0.9)
    model = build_model("deit_tiny_nano", data, seed=0, task=task)
    task.setup(model, data, torch.device("cpu"))
    model.double()  # float64 after set-up (it probes the model with float32 images)
    task.head.double()
    task.teacher.double()
    schedule = paper_momentum_schedule(0.9, 2, 5)
    gen = torch.Generator().manual_seed(7)
    for k in (0, 4, 9):
        with torch.no_grad():
            for p in [*model.parameters(), *task.head.parameters()]:
                p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype))
        before = [p.clone() for p in task.teacher.parameters()]
        student = [p.detach().clone() for p in [*model.parameters(), *task.head.parameters()]]
        task.after_step(model, k, 10)
        m = float(schedule[k])
        assert math.isclose(m, teacher_momentum(k, 10, 0.9), abs_tol=1e-15)
        for t, t0, s in zip(task.teacher.parameters(), before, student):
            torch.testing.assert_close(t, m * t0 + (1 - m) * s, **TIGHT)
