"""The command line under misuse and faults: one line on stderr naming the path or the argument,
exit code 2 (1 for a diverged or interrupted run), never a traceback, nothing half-written."""

from __future__ import annotations

import argparse
import errno
import io
import os

import numpy as np
import pytest
import torch
from PIL import Image

from unifiedctx import cli
from unifiedctx.cli import main
from unifiedctx.train import read_checkpoint

TINY = ["--model", "convnet_nano", "--data", "texture", "--img-size", "16", "--data-option", "n_train=32",
        "--data-option", "n_test=16", "--batch-size", "16", "--device", "cpu", "--no-progress",
        "--epochs", "1"]


def fails(argv, capsys, code=2) -> str:
    """Run main(argv), expect SystemExit(code) and return the one stderr line."""
    with pytest.raises(SystemExit) as exc:
        try:
            main(argv)
        except KeyboardInterrupt:
            pytest.fail("a KeyboardInterrupt escaped main as a traceback")
    err = capsys.readouterr().err.strip()
    assert exc.value.code == code, err
    assert err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def half_written(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*.tmp")) if folder.exists() else []


def test_a_folder_with_a_persons_files_is_refused_and_kept(tmp_path, capsys):
    (tmp_path / "thesis.tex").write_text("years of work")
    (tmp_path / "history.json").write_text("[]")
    err = fails(["train", *TINY, "--out", str(tmp_path)], capsys)
    assert "history.json, thesis.tex" in err and "--allow-foreign" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["history.json", "thesis.tex"]
    assert (tmp_path / "history.json").read_text() == "[]"
    assert main(["train", *TINY, "--out", str(tmp_path), "--allow-foreign"]) == 0
    assert (tmp_path / "thesis.tex").read_text() == "years of work"


def test_a_folder_in_use_is_refused_naming_its_holder(tmp_path, capsys):
    from unifiedctx.files import FileLock

    with FileLock(tmp_path / ".lock", "run folder"):
        err = fails(["train", *TINY, "--out", str(tmp_path)], capsys)
    assert f"in use by another process (pid {os.getpid()} on" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_output_folder_that_cannot_be_made_is_one_line(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    err = fails(["train", *TINY, "--out", str(tmp_path / "file" / "run")], capsys)
    assert str(tmp_path / "file") in err and "Not a directory" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


@pytest.mark.parametrize("where", ["checkpoint", "config"])
def test_a_full_disk_is_one_line_and_leaves_nothing_half_written(tmp_path, capsys, monkeypatch, where):
    full = OSError(errno.ENOSPC, "No space left on device")
    if where == "checkpoint":
        def save(obj, f, *a, **k):
            f.write(b"the first bytes of a checkpoint")
            raise full
        monkeypatch.setattr(torch, "save", save)
    else:
        import unifiedctx.train.history as history

        def fsync(fd):
            raise full
        monkeypatch.setattr(history.os, "fsync", fsync)
    out = tmp_path / "run"
    err = fails(["train", *TINY, "--out", str(out)], capsys)
    assert err.startswith(f"unifiedctx train: error: {out}: No space left on device")
    assert half_written(out) == [] and not (out / "last.pt").exists()


def test_a_read_only_folder_is_one_line_naming_the_file(tmp_path, capsys, monkeypatch):
    def replace(src, dst):
        raise OSError(errno.EROFS, "Read-only file system", str(dst))

    import unifiedctx.train.history as history

    monkeypatch.setattr(history.os, "replace", replace)
    out = tmp_path / "run"
    err = fails(["train", *TINY, "--out", str(out)], capsys)
    assert f"{out / 'config.json'}: Read-only file system" in err
    assert half_written(out) == []


def test_ctrl_c_is_one_line_and_exit_code_1(tmp_path, capsys, monkeypatch):
    import unifiedctx.train as T

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(T, "fit", interrupted)
    err = fails(["train", *TINY, "--out", str(tmp_path / "run")], capsys, code=1)
    assert "interrupted" in err and "--resume" in err


def test_a_diverged_run_is_one_line_exit_1_and_saves_no_bad_checkpoint(tmp_path, capsys, monkeypatch):
    """The recipe refuses an lr that cannot train (lr <= 10), so the divergence is made by the
    optimiser: its first step leaves NaN in the weights, as a blown-up step would."""
    step = torch.optim.AdamW.step

    def blow_up(self, *args, **kwargs):
        result = step(self, *args, **kwargs)
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    p.fill_(float("nan"))
        return result

    monkeypatch.setattr(torch.optim.AdamW, "step", blow_up)
    out = tmp_path / "run"
    err = fails(["train", *TINY, "--out", str(out), "--warmup-epochs", "0"], capsys, code=1)
    assert "became" in err and "epoch 1, step" in err and "no good checkpoint exists" in err
    assert not (out / "last.pt").exists()


@pytest.mark.parametrize("extra, words", [
    (["--lr", "nan"], "lr must be a finite number"),
    (["--lr", "inf"], "lr must be a finite number"),
    (["--ema", "nan"], "ema must be a finite number"),
    (["--ema", "1"], "ema must be in (0, 1)"),
    (["--clip-grad", "inf"], "clip_grad must be a finite number"),
    (["--clip-grad", "-1"], "clip_grad must be > 0"),
    (["--seed", "-1"], "seed must be >= 0"),
    (["--data-option", "n_train=nan"], "n_train must be a finite number"),
    (["--data-option", "=3"], "expected KEY=VALUE with a key"),
    (["--data-option", "n_train=1.5"], "n_train must be an int"),
    (["--label-smoothing", "1"], "label_smoothing must be in [0, 1), got 1"),
    (["--task-option", "colour=red"], "colour"),
    (["--model-option", "depths=oops"], "depths"),
])
def test_bad_values_are_one_line_errors(extra, words, tmp_path, capsys):
    out = tmp_path / "run"
    assert words in fails(["train", *TINY, "--out", str(out), *extra], capsys)
    assert not (out / "last.pt").exists()


def test_python_booleans_in_options_are_booleans_not_true_strings():
    assert cli._key_value("flag=False") == ("flag", False)
    assert cli._key_value("flag=True") == ("flag", True)
    assert cli._key_value("drop=None") == ("drop", None)
    assert cli._key_value("flag=false") == ("flag", False)
    assert cli._key_value("name=False.png") == ("name", "False.png")
    with pytest.raises(argparse.ArgumentTypeError, match="finite"):
        cli._key_value("x=NaN")


def test_eval_of_a_damaged_checkpoint_is_one_line(tmp_path, capsys):
    assert main(["train", *TINY, "--out", str(tmp_path / "run")]) == 0
    capsys.readouterr()
    last = tmp_path / "run" / "last.pt"
    assert read_checkpoint(last)["epoch"] == 1
    last.write_bytes(last.read_bytes()[:1000])
    err = fails(["eval", "--checkpoint", str(last), "--data", "texture", "--img-size", "16"], capsys)
    assert "is not a readable unifiedctx checkpoint" in err
    err = fails(["eval", "--checkpoint", str(tmp_path), "--data", "texture"], capsys)
    assert f"--checkpoint must be a checkpoint file, but {tmp_path} is a folder" in err


def test_an_undecodable_image_is_one_line_naming_the_file(tmp_path, capsys):
    buf = io.BytesIO()
    Image.fromarray(np.zeros((16, 16, 3), dtype=np.uint8)).save(buf, "JPEG")
    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(4):
            (tmp_path / "imgs" / label / f"{i}.jpg").write_bytes(buf.getvalue())
    bad = tmp_path / "imgs" / "a" / "2.jpg"
    bad.write_bytes(buf.getvalue()[:200])
    err = fails(["train", "--model", "convnet_nano", "--data", "imagefolder", "--img-size", "16",
                 "--data-option", f"path={tmp_path / 'imgs'}", "--data-option", "num_workers=0",
                 "--data-option", "val_fraction=0.25", "--batch-size", "2", "--device", "cpu",
                 "--no-progress", "--epochs", "1", "--out", str(tmp_path / "run")], capsys)
    assert f"cannot decode image {bad}" in err


@pytest.mark.parametrize("change, words", [
    (["--data-option", "n_train=48"], "data.options"),
    (["--amp", "bf16"], "amp: 'off' in the checkpoint, 'bf16' now"),
    (["--channels-last"], "channels_last: False in the checkpoint, True now"),
])
def test_resume_with_other_data_or_settings_is_one_line_listing_them(tmp_path, capsys, change, words):
    out = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(out)]) == 0
    before = (out / "last.pt").read_bytes()
    capsys.readouterr()
    argv = [*TINY, "--out", str(out), "--resume", "--epochs", "1", *change]
    assert words in fails(["train", *argv], capsys)
    assert (out / "last.pt").read_bytes() == before
