"""Non-finite means stop: a NaN/inf loss, gradient, weight or test loss on any step (the last of an
epoch included) ends fit with TrainingDiverged naming the epoch, the step and the true last good
checkpoint; no checkpoint ever holds a non-finite tensor."""

from __future__ import annotations

import pytest
import torch
from misuse_helpers import FAST, Tiny, all_finite, bright, make

from unifiedctx.train import StepDone, TrainingDiverged, fit, read_checkpoint, save_checkpoint

STEPS = 8  # bright(): 128 images, batch 16


class NaNGradAt(Tiny):
    """A finite loss always, but the gradient of training forward call ``n`` is NaN (so the
    weights turn NaN in that step's update)."""

    def __init__(self, n):
        super().__init__()
        self.calls, self.n = 0, n

    def forward(self, x):
        out = super().forward(x)
        if self.training and torch.is_grad_enabled():
            self.calls += 1
            if self.calls == self.n:
                out.register_hook(lambda g: g * float("nan"))
        return out


class NaNWhenEvaluated(Tiny):
    """Trains normally; in eval mode every output is NaN."""

    def forward(self, x):
        out = super().forward(x)
        return out if self.training else out * float("nan")


def test_weights_turning_nan_on_the_last_step_of_the_first_epoch_stop_the_run(tmp_path):
    with pytest.raises(TrainingDiverged, match=rf"gradient norm became nan at epoch 1, step {STEPS}\b.*"
                                               r"no good checkpoint exists"):
        fit(make(cls=NaNGradAt, n=STEPS), bright(), epochs=2, out=tmp_path, **FAST)
    assert not (tmp_path / "last.pt").exists() and not (tmp_path / "best.pt").exists()


def test_weights_turning_nan_on_the_last_step_of_epoch_2_keep_epoch_1_as_the_last_good(tmp_path):
    kept = r"last\.pt \(epoch 1\) is unchanged"
    with pytest.raises(TrainingDiverged, match=rf"epoch 2, step {STEPS}\b.*{kept}"):
        fit(make(cls=NaNGradAt, n=2 * STEPS), bright(), epochs=3, out=tmp_path, **FAST)
    for name in ("last.pt", "best.pt"):
        state = read_checkpoint(tmp_path / name)
        assert state["epoch"] == 1 and all_finite(state["model"]), name


def test_the_step_named_is_the_first_non_finite_one(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"gradient norm became nan at epoch 2, step 3\b"):
        fit(make(cls=NaNGradAt, n=STEPS + 3), bright(), epochs=2, **FAST)


def test_without_out_the_error_says_no_checkpoint_exists():
    with pytest.raises(TrainingDiverged, match=r"no checkpoint exists \(out=None"):
        fit(make(cls=NaNGradAt, n=2), bright(), epochs=1, **FAST)


def test_a_non_finite_test_loss_stops_the_run_and_nothing_is_saved(tmp_path):
    with pytest.raises(TrainingDiverged, match=r"test_loss = nan after epoch 1.*no good checkpoint exists"):
        fit(make(cls=NaNWhenEvaluated), bright(), epochs=2, out=tmp_path, **FAST)
    assert not (tmp_path / "last.pt").exists()


def test_weights_made_non_finite_after_the_last_check_are_still_never_saved(tmp_path):
    def poison(event):  # after the step's check: only the pre-save check can see it
        if isinstance(event, StepDone) and event.step == STEPS:
            with torch.no_grad():
                event.model.body[0].weight[0, 0, 0, 0] = float("inf")

    with pytest.raises(TrainingDiverged, match=r"model\.body\.0\.weight"):
        fit(make(), bright(), epochs=1, out=tmp_path, callback=poison, **FAST)
    assert not (tmp_path / "last.pt").exists()


def test_an_infinite_loss_on_the_last_step_is_caught():
    class InfAt(Tiny):
        calls = 0

        def forward(self, x):
            out = super().forward(x)
            if self.training:
                self.calls += 1
                if self.calls == STEPS:
                    out = out + float("inf")
            return out

    with pytest.raises(TrainingDiverged, match=rf"loss became (nan|inf) at epoch 1, step {STEPS}\b"):
        fit(make(cls=InfAt), bright(), epochs=1, **FAST)


def test_save_checkpoint_refuses_a_non_finite_tensor_and_keeps_the_old_file(tmp_path):
    path = save_checkpoint(tmp_path / "c.pt", make(), epoch=1)
    before = path.read_bytes()
    bad = make()
    with torch.no_grad():
        bad.head.bias[1] = float("nan")
    with pytest.raises(ValueError, match=r"refusing to write .*c\.pt: model\.head\.bias is not finite"):
        save_checkpoint(path, bad, epoch=2)
    with pytest.raises(ValueError, match=r"optimizer\.state\.0\.exp_avg"):
        save_checkpoint(path, make(), optimizer={"state": {0: {"exp_avg": torch.tensor([float("inf")])}}})
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.pt"]


def test_resuming_from_a_checkpoint_with_nan_weights_is_refused(tmp_path):
    fit(make(), bright(), epochs=1, out=tmp_path, **FAST)
    state = read_checkpoint(tmp_path / "last.pt")
    state["model"]["head.weight"][0, 0] = float("nan")  # as an older version could have written it
    torch.save(state, tmp_path / "last.pt")
    with pytest.raises(ValueError, match=r"model\.head\.weight hold NaN or inf"):
        fit(make(), bright(), epochs=1, out=tmp_path, resume=True, **FAST)


def test_the_watch_never_syncs_with_the_host_per_step(monkeypatch):
    from unifiedctx.train.engine import DivergenceWatch

    watch = DivergenceWatch(torch.device("cpu"))

    def no_sync(*args, **kwargs):
        raise AssertionError("a host sync in observe()")

    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "cpu", "numpy"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    for step in range(5):
        value = torch.tensor(float("nan") if step == 3 else 1.0)
        watch.observe(step, loss=value, grad_norm=torch.tensor(2.0), weight_max=torch.tensor(3.0))
    monkeypatch.undo()
    assert int(watch.first) == 3 and int(watch.what) == 1


def test_nonfinite_tensors_names_every_bad_tensor_in_a_nested_state():
    from unifiedctx.files import nonfinite_tensors

    nan, inf = float("nan"), float("inf")
    state = {"a": torch.ones(2), "b": {"c": torch.tensor([1.0, nan]), "d": [torch.tensor(inf)]},
             "n": torch.tensor([1, 2]), "x": 1.5}
    assert nonfinite_tensors(state) == ["b.c", "b.d[0]"]
