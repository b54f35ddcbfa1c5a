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
    assert main(["train", "--model", "deit_tiny_nano", "--epochs", "2", "--out", str(out), *TINY]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert "deit_tiny_nano on texture: 2 epochs" in printed[-1]
    # --no-progress: one compact line per epoch (epoch, train loss, the task's metric, time)
    assert [line.split()[:3] for line in printed[:-1]] == [["deit_tiny_nano", "epoch", "1/2"],
                                                           ["deit_tiny_nano", "epoch", "2/2"]]
    assert all("train_loss" in line and "test_acc" in line and line.endswith("s") for line in printed[:-1])
    files = {p.name for p in out.iterdir()}
    assert files == {"last.pt", "best.pt", "history.json", "history.csv", "config.json"}
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["preset"] == "deit_tiny_nano" and config["recipe"]["epochs"] == 2
    assert config["run"]["data_options"] == {"n_train": 48, "n_test": 32}
    history = json.loads((out / "history.json").read_text())

    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--data", "texture", "--img-size", "16",
                 "--data-option", "n_train=48", "--data-option", "n_test=32", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["epoch"] == 2 and result["acc"] == pytest.approx(history[-1]["test_acc"])
    assert result["loss"] == pytest.approx(history[-1]["test_loss"], rel=1e-5)
    # without --data, eval reads the dataset (name, options, image size) from the run's config.json
    assert main(["eval", "--checkpoint", str(out / "last.pt"), "--device", "cpu"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["data"] == "texture" and again["acc"] == result["acc"] and again["loss"] == result["loss"]

    err = fails(["train", "--model", "deit_tiny_nano", "--epochs", "2", "--out", str(out), *TINY], capsys)
    assert "already exists" in err and "--resume" in err
    err = fails(["train", "--model", "mixer_s16_nano", "--epochs", "1", "--out", str(out), "--resume", *TINY],
                capsys)
    assert "deit_tiny_nano" in err and "mixer_s16_nano" in err  # the other architecture is refused
    err = fails(["eval", "--checkpoint", str(out / "last.pt"), "--data", "longrange", "--img-size", "16"],
                capsys)
    assert "4 classes" in err and "2" in err


@pytest.mark.parametrize("argv, words", [
    (["train", "--model", "container_lite_nano", "--data", "texture", "--epochs", "1", "--out", "x"],
     "unknown model 'container_lite_nano' (--model). Did you mean 'container_light_nano'"),
    (["train", "--model", "convnet_nano", "--data", "cifar11", "--epochs", "1", "--out", "x"],
     "unknown dataset 'cifar11' (--data). Did you mean 'cifar10', 'cifar100'? Available: cifar10"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--epochs", "0", "--out", "x"],
     "argument --epochs: epochs must be positive, got 0"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--epochs", "two", "--out", "x"],
     "argument --epochs: epochs must be an int, got str 'two'"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--epochs", "1"],
     "the following arguments are required: --out"),
    (["train", "--model", "convnet_nano", "--data", "cifar10", "--img-size", "16", "--epochs", "1",
      "--out", "x"],
     "--img-size does not apply to cifar10"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--data-option", "colour=red", "--epochs", "1",
      "--out", "x"], "takes no option 'colour'"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--epochs", "1", "--out", "x", "--lr", "-1"],
     "argument --lr: lr must be > 0, got -1"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--epochs", "1", "--out", "x", "--ema", "1"],
     r"argument --ema: ema must be in (0, 1), got 1"),
    (["train", "--model", "convnet_nano", "--data", "texture", "--epochs", "1", "--out", "x",
      "--task", "dino", "--label-smoothing", "0.1"], "label_smoothing is a setting of the classify task"),
    (["eval", "--checkpoint", "x.pt"], "no checkpoint at x.pt"),
    (["eval", "--checkpoint", "missing.pt", "--data", "texture"], "no checkpoint at missing.pt"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
])
def test_bad_options_are_one_line_errors(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert words in fails(argv, capsys)
    assert not (tmp_path / "x").exists()


def test_listings_give_sizes_and_whether_data_is_offline(capsys):
    from unifiedctx.models import count_params, create_model

    assert main(["models", "*_nano"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    assert header.split() == ["model", "params", "img_size", "classes"]
    table = {row.split()[0]: row.split()[1:] for row in rows}
    assert "container_light_nano" in table and all(n.endswith("_nano") for n in table)
    assert table["container_light_nano"] == [f"{count_params(create_model('container_light_nano')):,d}",
                                             "32x32", "10"]
    assert main(["models", "deit_tiny", "--macs"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[-1] == "GMACs" and 1.0 < float(row.split()[-1]) < 1.5  # DeiT-Ti: 1.3 GMACs
    assert main(["data"]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    table = {row.split()[0]: row for row in rows}
    assert {"cifar10", "mnist5k", "texture", "imagefolder"} <= set(table)
    assert table["mnist5k"].split()[1:] == ["4000", "1000", "1x32x32", "10", "yes"]
    assert table["texture"].endswith("yes")
    for name, needs in (("imagefolder", "train/ (and val/)"), ("segfolder", "images/ and masks/")):
        row = table[name]  # what the row needs, in the listing's words: never an exception's text
        assert "your own files: --data-option path=FOLDER" in row and needs in row, row
        assert not any(word in row for word in ("missing", "argument", "load(", "()")), row
    assert "no: downloaded on first use" in table["cifar10"] or "cached" in table["cifar10"]


def test_train_options_are_generated_from_the_recipe():
    """Every Recipe field is a train option with the field's default and help; the parsed options
    build the Recipe whose defaults they are."""
    import dataclasses

    from unifiedctx.train.recipe import RECIPE_FIELDS, Recipe

    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    actions = {a.dest: a for a in sub._actions}
    for f in RECIPE_FIELDS:
        action = actions[f.name]
        assert action.help.startswith(f.metadata["help"]), f.name
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            assert action.required
        elif f.default_factory is not dataclasses.MISSING:
            assert action.default == []  # KEY=VALUE pairs, gathered into the dict
        else:
            assert action.default == f.default, f.name
    args = build_parser().parse_args(["train", "--model", "m", "--data", "d", "--out", "o", "--epochs", "3",
                                      "--no-augment", "--clip-grad", "off", "--warmup-cap", "0.1"])
    recipe = Recipe(**{k: getattr(args, k) for k in Recipe.keys() if k != "task_options"})
    assert recipe == Recipe(epochs=3, augment=False, warmup_cap=0.1)


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
    argv = ["train", "--model", "zzzz", "--data", "texture", "--epochs", "1", "--out", "x"]
    done = subprocess.run([sys.executable, "-m", "unifiedctx", *argv], capture_output=True, text=True,
                          env=env, timeout=120)
    assert done.returncode == 2 and done.stderr.strip().splitlines() == [
        "unifiedctx train: error: unknown model 'zzzz' (--model). `unifiedctx models` lists them"]


def test_one_epoch_is_said_in_the_singular(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", "--model", "convnet_nano", "--epochs", "1", "--out", out, *TINY]) == 0
    summary = capsys.readouterr().out.splitlines()[-1]
    assert "convnet_nano on texture: 1 epoch," in summary and "epochs" not in summary


def test_a_refusal_names_the_api_keyword_in_python_and_the_option_on_the_command_line(tmp_path, capsys):
    from unifiedctx.data import load
    from unifiedctx.train import build_model, fit

    data = load("texture", size=16, n_train=48, n_test=32)
    argv = ["train", "--model", "convnet_nano", "--epochs", "1", *TINY]
    assert main([*argv, "--out", str(tmp_path / "run")]) == 0
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "notes.txt").write_text("mine")
    for folder, keyword, option in (("run", "resume=True", "--resume"),
                                    ("foreign", "allow_foreign=True", "--allow-foreign")):
        with pytest.raises(FileExistsError) as err:
            fit(build_model("convnet_nano", data), data, epochs=1, batch_size=16, device="cpu",
                progress=False, out=tmp_path / folder)
        assert keyword in str(err.value) and "--" not in str(err.value)
        capsys.readouterr()
        cli = fails([*argv, "--out", str(tmp_path / folder)], capsys)
        assert f"pass {option}" in cli and keyword not in cli


def test_only_whole_keyword_settings_become_options():
    from unifiedctx.cli import as_options, flag_words

    parser = build_parser()
    words = flag_words(parser)
    assert words["resume=True"] == "--resume" and words["allow_foreign=True"] == "--allow-foreign"
    assert words["augment=False"] == "--no-augment" and "help=True" not in words
    assert as_options("pass resume=True, or augment=False", parser) == "pass --resume, or --no-augment"
    untouched = "pass no_resume=True or resume=Truely"
    assert as_options(untouched, parser) == untouched
