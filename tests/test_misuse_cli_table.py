"""Every user mistake at the command line is one line on stderr and exit code 2, for every subcommand.

A table of ``(subcommand arguments, words the line must hold)``: options out of range or of the
wrong type, unknown names, missing or foreign files, the newer error classes (PathNotFound,
DatasetUnavailable, checkpoint errors, a class count that does not match the data, an empty
split, an unknown task option). Run in-process through :func:`unifiedctx.cli.main` (fast); one
case runs as ``python -m unifiedctx`` in a subprocess, to see the real exit code and stderr.
For ``train`` the run folder must not exist afterwards: a refused setting writes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from unifiedctx.cli import main
from unifiedctx.files import FORMAT
from unifiedctx.models import create_model
from unifiedctx.train import save_checkpoint

REPO = Path(__file__).resolve().parents[1]
DATA = ["--data", "texture", "--img-size", "16", "--data-option", "n_train=32", "--data-option", "n_test=16"]
TRAIN = [
    "train",
    "--model",
    "convnet_nano",
    *DATA,
    "--batch-size",
    "16",
    "--device",
    "cpu",
    "--no-progress",
    "--epochs",
    "1",
]


def fails(argv, capsys) -> str:
    """Run main(argv); expect exit code 2 and return the one stderr line (no traceback)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert err and len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.fixture
def place(tmp_path):
    """Files the table refers to by name: ``{out}``, ``{file}``, ``{folder}``, ``{missing}``,
    ``{model5}``, ``{nomodel}``, ``{two_classes}`` (a 2-class checkpoint for 4-class data),
    ``{images}`` (an image folder with 2 classes of 4 images)."""
    (tmp_path / "notes.txt").write_text("not a checkpoint")
    (tmp_path / "folder").mkdir()
    torch.save({"format": FORMAT, "model": 5}, tmp_path / "model5.pt")
    torch.save({"format": FORMAT, "epoch": 3}, tmp_path / "nomodel.pt")
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "two.pt", create_model("convnet_nano", num_classes=2, img_size=16), epoch=1)
    for label in ("a", "b"):
        (tmp_path / "imgs" / label).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(np.full((16, 16, 3), 60 * i, dtype=np.uint8)).save(
                tmp_path / "imgs" / label / f"{i}.png"
            )
    configs = {"cfg_list": "[1, 2]", "cfg_invalid": '{"run": {"data": "texture"',
               "cfg_run": '{"run": "texture"}',
               "cfg_options": '{"run": {"data": "texture", "data_options": [1]}}',
               "cfg_img": '{"run": {"data": "texture", "img_size": "16"}}',
               "cfg_limit": '{"run": {"data": "texture", "limit_test": 0}}',
               "cfg_recipe": '{"run": {"data": "texture"}, "recipe": ["seed", 3]}',
               "cfg_seed": '{"run": {"data": "texture"}, "recipe": {"seed": "three"}}',
               "cfg_data": '{"data": 7}'}
    for name, text in configs.items():  # a run folder whose config.json is wrong, beside a good checkpoint
        (tmp_path / name).mkdir()
        (tmp_path / name / "last.pt").write_bytes((tmp_path / "two.pt").read_bytes())
        (tmp_path / name / "config.json").write_text(text)
    return {
        **{name: tmp_path / name / "last.pt" for name in configs},
        "out": tmp_path / "run",
        "file": tmp_path / "notes.txt",
        "folder": tmp_path / "folder",
        "missing": tmp_path / "nothing",
        "model5": tmp_path / "model5.pt",
        "nomodel": tmp_path / "nomodel.pt",
        "two_classes": tmp_path / "two.pt",
        "images": tmp_path / "imgs",
        "empty_root": tmp_path / "cache",
    }


TRAIN_MISTAKES = [
    (["--model", "convnet_nan"], "unknown model 'convnet_nan'"),
    (["--data", "textur"], "unknown dataset 'textur'"),
    (["--epochs", "0"], "epochs must be positive"),
    (["--epochs", "abc"], "epochs must be an int"),
    (["--epochs", "1.5"], "epochs must be an int"),
    (["--batch-size", "0"], "batch_size must be positive"),
    (["--batch-size", "-4"], "batch_size must be positive"),
    (["--lr", "1e38"], "lr must be <= 10"),
    (["--lr", "0"], "lr must be > 0"),
    (["--lr", "fast"], "lr must be a float"),
    (["--weight-decay", "-1"], "weight_decay must be >= 0"),
    (["--warmup-cap", "2"], "warmup_cap must be in [0, 1]"),
    (["--seed", "a"], "seed must be an int"),
    (["--max-steps-per-epoch", "0"], "max_steps_per_epoch must be positive"),
    (["--task", "segmnt"], "unknown task 'segmnt'"),
    (["--task-option", "bogus=1"], "no option 'bogus'"),
    (["--task-option", "label_smoothing=abc"], "label_smoothing"),
    (["--task-option", "label_smoothing=nan"], "label_smoothing must be a finite number"),
    (["--task-option", "mixup=-1"], "mixup must be >= 0"),
    (["--label-smoothing", "abc"], "expected a number"),
    (["--device", "gpu"], "device must be"),
    (["--device", "cuda:x"], "device must be"),
    (["--amp", "fp16"], "--amp"),
    (["--img-size", "0"], "--img-size"),
    (["--limit-train", "0"], "--limit-train"),
    (["--eval-batch-size", "0"], "--eval-batch-size"),
    (["--data-option", "seed=a"], "seed must be an int"),
    (["--data-option", "n_train=0"], "n_train must be"),
    (["--data-option", "bogus=1"], "bogus"),
    (["--data-option", "channels=true"], "channels must be an int"),
    (["--model-option", "drop_path=2"], "drop_path must be"),
    (["--model-option", "bogus=1"], "bogus"),
    (["--model-option", "num_classes=2"], "2 classes but the data has"),  # a class mismatch
    (["--out", "{file}"], "is a file"),
    (["--data", "imagefolder", "--data-option", "path={missing}"], "nothing exists"),  # PathNotFound
    (["--data", "imagefolder", "--data-option", "path={file}"], "is a file"),
    (
        ["--data", "imagefolder", "--data-option", "path={images}", "--data-option", "val_fraction=0"],
        "val_fraction must be in (0, 1)",
    ),  # an empty split
    (
        [
            "--data",
            "imagefolder",
            "--data-option",
            "path={images}",
            "--data-option",
            "val_fraction=0.5",
            "--batch-size",
            "16",
        ],
        "no full batch",
    ),  # 4 training images cannot make a batch of 16
    (
        ["--data", "imagefolder", "--data-option", "path={images}", "--data-option", "val_fraction='0.1'"],
        "val_fraction must be a float",
    ),
    (
        ["--data", "cifar10", "--data-root", "{empty_root}", "--data-option", "download=False"],
        "is not in {empty_root} and download=False",
    ),  # DatasetUnavailable
    (["--data", "cifar10", "--data-root", "{file}"], "root must be a folder"),
]


def _fill(argv, place) -> list[str]:
    return [a.format(**place) for a in argv]


def _train_argv(extra, place) -> list[str]:
    """TRAIN with ``extra``: an option given there replaces TRAIN's own (``--data`` drops TRAIN's data
    options too)."""
    base = list(TRAIN)
    for flag in {
        a
        for a in extra
        if a.startswith("--") and a not in ("--data-option", "--model-option", "--task-option")
    }:
        while flag in base:
            at = base.index(flag)
            del base[at : at + (1 if base[at + 1 : at + 2] == [] or base[at + 1].startswith("--") else 2)]
    if "--data" in extra:
        base = [
            a
            for i, a in enumerate(base)
            if not (a == "--data-option" or (i and base[i - 1] == "--data-option"))
        ]
        base = [
            a for i, a in enumerate(base) if not (a == "--img-size" or (i and base[i - 1] == "--img-size"))
        ]
        base += ["--img-size", "16"] if "imagefolder" in extra else []
    return (
        [*base, "--out", str(place["out"]), *_fill(extra, place)]
        if "--out" not in extra
        else [*base, *_fill(extra, place)]
    )


@pytest.mark.parametrize("extra, words", TRAIN_MISTAKES, ids=[" ".join(e) for e, _ in TRAIN_MISTAKES])
def test_every_train_mistake_is_one_line_exit_2_and_writes_nothing(extra, words, place, capsys):
    err = fails(_train_argv(extra, place), capsys)
    assert err.startswith("unifiedctx") and words.format(**place) in err, err
    assert not place["out"].exists(), f"a run folder was made for {extra}"


#: A small texture set for eval (texture has 4 classes).
EVAL_DATA = ["--data", "texture", "--img-size", "16", "--data-option", "n_train=8",
             "--data-option", "n_test=8"]
EVAL_MISTAKES = [
    (["--checkpoint", "{missing}"], "nothing exists"),
    (["--checkpoint", "{folder}"], "is a folder"),
    (["--checkpoint", "{file}"], "is not a readable unifiedctx checkpoint"),
    (["--checkpoint", "{model5}"], "holds int"),
    (["--checkpoint", "{nomodel}"], "no 'model' entry"),
    (["--checkpoint", "{two_classes}", "--data", "textur"], "unknown dataset 'textur'"),
    (["--checkpoint", "{two_classes}", "--batch-size", "0"], "--batch-size"),
    (["--checkpoint", "{two_classes}", "--device", "gpu"], "device must be"),
    (["--checkpoint", "{two_classes}", "--ema"], "no EMA weights"),
    # a class mismatch: a 2-class model on texture's 4 classes
    (["--checkpoint", "{two_classes}", *EVAL_DATA], "the model has 2 classes but the data has 4"),
    (
        ["--checkpoint", "{two_classes}", "--data", "texture", "--data-option", "classes=4"],
        "takes no option 'classes'",
    ),
    (["--checkpoint", "{two_classes}"], "--data is needed"),
    # the run's config.json, read when --data is not given: each entry that eval reads
    (["--checkpoint", "{cfg_list}"], "config.json holds list [1, 2], but a run's config (a JSON object)"),
    (["--checkpoint", "{cfg_invalid}"], "config.json is not valid JSON"),
    (["--checkpoint", "{cfg_run}"], "config.json: the 'run' entry holds str 'texture', but a dict"),
    (["--checkpoint", "{cfg_options}"], "config.json: the 'run.data_options' entry holds list"),
    (["--checkpoint", "{cfg_img}"], "config.json: the 'run.img_size' entry holds str '16'"),
    (["--checkpoint", "{cfg_limit}"], "config.json: the 'run.limit_test' entry holds int 0"),
    (["--checkpoint", "{cfg_recipe}"], "config.json: the 'recipe' entry holds list"),
    (["--checkpoint", "{cfg_seed}"], "config.json: the 'recipe.seed' entry holds str 'three'"),
    (["--checkpoint", "{cfg_data}"], "config.json: the 'data' entry holds int 7"),
]


@pytest.mark.parametrize("extra, words", EVAL_MISTAKES, ids=[" ".join(e) for e, _ in EVAL_MISTAKES])
def test_every_eval_mistake_is_one_line_exit_2(extra, words, place, capsys):
    argv = ["eval", "--device", "cpu", *_fill(extra, place)]
    if "--data" not in extra and "{two_classes}" in extra and "--data is needed" not in words:
        argv += EVAL_DATA
    err = fails(argv, capsys)
    assert words.format(**place) in err, err


@pytest.mark.parametrize(
    "argv, words",
    [
        ([], "the following arguments are required"),
        (["trian"], "invalid choice: 'trian'"),
        (["train"], "required"),
        (["models", "--macs", "extra", "more"], "unrecognized arguments"),
        (["eval"], "--checkpoint"),
    ],
)
def test_mistakes_in_the_command_itself_are_one_line_exit_2(argv, words, capsys):
    assert words in fails(argv, capsys)


def test_a_weights_only_file_given_to_resume_is_one_line_saying_how_to_start_from_it(place, capsys):
    out = place["out"]
    torch.manual_seed(0)
    save_checkpoint(out / "last.pt", create_model("convnet_nano", num_classes=4, img_size=16))  # as a best.pt
    err = fails([*TRAIN, "--out", str(out), "--resume", "--allow-foreign"], capsys)
    assert "cannot resume" in err and "weights only" in err and "load_checkpoint" in err
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["last.pt"]


def test_the_real_command_gives_one_line_and_exit_code_2(tmp_path):
    """One case as a user runs it: a subprocess, its stderr and its exit code."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run(
        [sys.executable, "-m", "unifiedctx", *TRAIN, "--lr", "1e38", "--out", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "lr must be <= 10" in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


#: (entry, wrong value, words): entries of a run's last.pt that train --resume and eval read.
BAD_CHECKPOINT_ENTRIES = [
    ("epoch", "one", "the 'epoch' entry holds str 'one', but an int >= 0"),
    ("epoch", -3, "the 'epoch' entry holds int -3"),
    ("history", [1, 2], "the 'history' entry: row 0 must be a dict"),
    ("step", None, "the 'step' entry holds NoneType"),
    ("recipe", [1], "the 'recipe' entry holds list"),
]


@pytest.mark.parametrize("entry, value, words", BAD_CHECKPOINT_ENTRIES, ids=[f"{e}={v!r}" for e, v, _ in
                                                                              BAD_CHECKPOINT_ENTRIES])
def test_a_wrong_checkpoint_entry_is_one_line_naming_the_file_for_resume_and_eval(entry, value, words, place,
                                                                                  capsys):
    out = place["out"]
    assert main([*TRAIN, "--out", str(out)]) == 0
    capsys.readouterr()
    last = out / "last.pt"
    state = torch.load(last, weights_only=True)
    state[entry] = value
    torch.save(state, last)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    evaluate = ["eval", "--checkpoint", str(last), "--device", "cpu"]
    for argv in ([*TRAIN, "--out", str(out), "--resume"], evaluate):
        err = fails(argv, capsys)
        assert str(last) in err and words in err, err
    assert {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")} == before
