"""The command line: train/eval end to end, listings, --help, and one-line errors for bad options."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from unifiedctx.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--data", "texture", "--img-size", "16", "--data-option", "n_train=48", "--data-option", "n_test=32",
        "--batch-size", "16", "--device", "cpu", "--no-progress"]


def fails(argv, capsys, code=2) -> str:
    """Run main(argv), expect SystemExit(code) and return the one stderr line."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == code
    err = capsys.readouterr().err.strip()
    assert err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


def test_train_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--model", "deit_tiny_nano", "--epochs", "1", "--out", str(out), *TINY]) == 0
    assert "deit_tiny_nano on texture: 1 epochs" in capsys.readouterr().out
    files = {p.name for p in out.iterdir()}
    assert files == {"last.pt", "best.pt", "history.json", "history.csv", "config.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["preset"] == "deit_tiny_nano" and config["recipe"]["epochs"] == 1
    assert config["run"]["data_options"] == {"n_train": 48, "n_test": 32}
    history = json.loads((out / "history.json").read_text())

    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", "texture", "--img-size", "16",
                 "--data-option", "n_train=48", "--data-option", "n_test=32", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epoch"] == 1 and result["acc"] == pytest.approx(history[-1]["test_acc"])
    assert result["loss"] == pytest.approx(history[-1]["test_loss"], rel=1e-5)

    err = fails(["train", "--model", "deit_tiny_nano", "--epochs", "1", "--out", str(out), *TINY], capsys)
    assert "already exists" in err and "--resume" in err
    err = fails(["train", "--model", "mixer_s16_nano", "--epochs", "1", "--out", str(out), "--resume", *TINY],
                capsys)
    assert "deit_tiny_nano" in err and "mixer_s16_nano" in err  # the other architecture is refused
    err = fails(["eval", "--checkpoint", str(out / "last.pt"), "--data", "longrange", "--img-size", "16"],
                capsys)
    assert "4 classes" in err and "2" in err


@pytest.mark.parametrize("argv, words", [
    (["train", "--model", "container_lite_nano", "--data", "texture", "--epochs", "1", "--out", "x"],
     "unknown model 'container_lite_nano'; did you mean container_light_nano"),
    (["train", "--model", "convnet_nano", "--data", "cifar11", "--epochs", "1", "--out", "x"],
     "unknown dataset 'cifar11'; available: cifar10"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--epochs", "0", "--out", "x"],
     "--epochs: expected a positive integer, got 0"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--epochs", "two", "--out", "x"],
     "--epochs: expected a positive integer, got 'two'"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--epochs", "1"],
     "the following arguments are required: --out"),
    (["train", "--model", "convnet_nano", "--data", "cifar10", "--img-size", "16", "--epochs", "1",
      "--out", "x"],
     "--img-size does not apply to cifar10"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--data-option", "colour=red", "--epochs", "1",
      "--out", "x"], "takes no option 'colour'"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--epochs", "1", "--out", "x", "--lr", "-1"],
     "lr must be > 0"),
    (["eval", "--checkpoint", "missing.pt", "--data", "texture"], "no checkpoint at missing.pt"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_options_are_one_line_errors(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert words in fails(argv, capsys)
    assert not (tmp_path / "x").exists()


def test_listings(capsys):
    assert main(["models", "*_nano"]) == 0
    names = capsys.readouterr().out.split()
    assert "container_light_nano" in names and all(n.endswith("_nano") for n in names)
    assert main(["data"]) == 0
    assert {"cifar10", "mnist5k", "texture", "imagefolder"} <= set(capsys.readouterr().out.split())


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_documents_every_option(command, capsys):
    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for action in sub._actions:
        assert action.help, f"{action.option_strings} has no help"
        for flag in action.option_strings:
            assert flag in text


def test_module_entry_point_gives_one_line_not_a_traceback():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = ["train", "--model", "nope", "--data", "texture", "--epochs", "1", "--out", "x"]
    done = subprocess.run([sys.executable, "-m", "unifiedctx", *argv], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "unifiedctx train: error: unknown model 'nope'; `unifiedctx models` lists them"]
