"""The command line: ``python -m unifiedctx {train,eval,models,data}`` (also ``unifiedctx ...``).

    unifiedctx train --model container_light_cifar --data cifar10 --epochs 30 --out runs/cl [--resume]
    unifiedctx eval --checkpoint runs/cl/last.pt --data cifar10
    unifiedctx models '*_nano'
    unifiedctx data

Under ``torchrun --nproc_per_node=K`` the same ``train`` command runs DistributedDataParallel
(``--batch-size`` is per process). A bad option, a missing, foreign or busy folder, a read-only
or full disk: one line on stderr naming the argument or the path, exit code 2, never a traceback.
A run whose loss becomes NaN, or one interrupted with Ctrl-C, stops with one line and exit code 1,
its last good checkpoint kept (every file is written atomically: nothing is left half-written).
"""

from __future__ import annotations

import argparse
import dataclasses
import errno
import inspect
import json
import os
import re
import sys
import typing
from pathlib import Path

#: Which option of each dataset's loader ``--img-size`` sets.
SIZE_OPTIONS = ("size", "image_size")


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


#: Python's spellings of the JSON constants, read as those (``drop_path=None``, ``proj=False``).
PY_CONSTANTS = {"True": True, "False": False, "None": None}


def _refuse_constant(name: str):
    """``json.loads``'s hook for ``NaN`` and ``Infinity``: refuse them."""
    raise ValueError(f"non-finite number {name}")


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (``3``, ``0.1``, ``true``), or as one of
    Python's ``True``/``False``/``None`` (so ``False`` never becomes the true string ``"False"``),
    else a string. Non-finite numbers (``nan``, ``inf``) are refused."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE with a key, got {text!r}")
    if raw.strip() in PY_CONSTANTS:
        return key.strip(), PY_CONSTANTS[raw.strip()]
    try:
        value = json.loads(raw, parse_constant=_refuse_constant)
    except ValueError:  # JSONDecodeError, or NaN / Infinity
        if raw.strip().lower() in ("nan", "inf", "-inf", "infinity", "-infinity"):
            raise argparse.ArgumentTypeError(f"{key.strip()} must be a finite number, got {raw!r}") from None
        value = raw
    return key.strip(), value


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``prog: error: ...``) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see {self.prog} --help)\n")


def _recipe_parser(f: dataclasses.Field, kind: type, none_ok: bool):
    """Text -> a value of the Recipe field ``f``, checked by the field's own check (its message)."""
    def parse(text: str):
        if none_ok and text.strip().lower() in ("none", "off"):
            return None
        try:
            value = kind(text)
        except ValueError:
            value = text  # the field's check names what it expected
        try:
            return f.metadata["check"](f.name, value)
        except (TypeError, ValueError) as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    parse.__name__ = f.name  # argparse names the type in some messages
    return parse


def add_recipe_options(parser: argparse.ArgumentParser) -> None:
    """One option per :class:`~unifiedctx.train.recipe.Recipe` field: flag, type, default and help
    are read from the field (``--warmup-epochs 0.5``, ``--augment/--no-augment``,
    ``--task-option KEY=VALUE``); nothing here repeats the recipe."""
    from unifiedctx.train.recipe import RECIPE_FIELDS, Recipe

    hints = typing.get_type_hints(Recipe)
    for f in RECIPE_FIELDS:
        flag = f.metadata.get("flag") or "--" + f.name.replace("_", "-")
        kinds = typing.get_args(hints[f.name]) or (hints[f.name],)
        kind, none_ok = next(k for k in kinds if k is not type(None)), type(None) in kinds
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        default = (None if required else f.default if f.default is not dataclasses.MISSING
                   else f.default_factory())
        text = f.metadata["help"]
        if kind is bool:
            parser.add_argument(flag, dest=f.name, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{text} (default {'on' if default else 'off'})")
        elif kind is dict:
            parser.add_argument(flag, dest=f.name, type=_key_value, action="append", default=[],
                                metavar="KEY=VALUE", help=f"{text} (repeatable)")
        else:
            shown = "required" if required else f"default {'off' if default is None else default}"
            parser.add_argument(flag, dest=f.name, type=_recipe_parser(f, kind, none_ok), default=default,
                                required=required, metavar=kind.__name__.upper(), help=f"{text} ({shown})")


def add_task_flags(parser: argparse.ArgumentParser) -> None:
    """The flags that tasks declare for their options (``Task.flags``: ``--label-smoothing`` of
    classify); a given flag becomes a ``--task-option`` of the same name, checked by the task."""
    from unifiedctx.train import tasks

    seen = set()
    for name in tasks.available():
        for option, text in tasks.task_class(name).flags.items():
            if option not in seen:
                seen.add(option)
                parser.add_argument("--" + option.replace("_", "-"), dest=f"task_flag__{option}",
                                    type=_number, default=None, metavar="FLOAT",
                                    help=f"{text} (a --task-option of task {name})")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The parser of every subcommand (``--help`` on each documents every option)."""
    parser = OneLineParser(prog="unifiedctx", description="Train and evaluate context-aggregation "
                                     "networks (convolution, attention, MLP-Mixer, Container).")
    sub = parser.add_subparsers(dest="command", metavar="{train,eval,models,data}")
    sub.required = True

    t = sub.add_parser("train", help="train a model preset on a dataset",
                       description="Train MODEL on DATA; writes OUT/last.pt (every epoch), OUT/best.pt, "
                       "OUT/history.json, OUT/history.csv and OUT/config.json. Under torchrun "
                       "--nproc_per_node=K it runs DistributedDataParallel; --batch-size is per process.")
    t.add_argument("--model", required=True, help="model preset (see `unifiedctx models`)")
    t.add_argument("--data", required=True, help="dataset name (see `unifiedctx data`)")
    t.add_argument("--out", required=True, type=Path, help="output folder of the run")
    t.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (same settings); without it an existing run is an error")
    add_recipe_options(t)
    add_task_flags(t)
    t.add_argument("--allow-foreign", action="store_true",
                   help="train into an OUT that holds other files (a run owns its folder: refused otherwise)")
    t.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (auto)")
    t.add_argument("--amp", default="auto", choices=("auto", "bf16", "off"),
                   help="autocast: auto = bf16 on CUDA, off on CPU (auto)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--channels-last", action="store_true", help="channels_last memory format")
    t.add_argument("--img-size", type=_positive_int, default=None,
                   help="image side for datasets that make or resize images "
                   "(synthetic, mnist5k, imagefolder)")
    t.add_argument("--data-root", default=None, help="folder of downloaded datasets (default: data/)")
    t.add_argument("--data-option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset option, e.g. path=/imgs for imagefolder or channels=3 (repeatable)")
    t.add_argument("--model-option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a create_model override, e.g. drop_path=0.1 (repeatable)")
    t.add_argument("--limit-train", type=_positive_int, default=None,
                   help="train on a random subset of this many images (smoke runs)")
    t.add_argument("--limit-test", type=_positive_int, default=None,
                   help="test on a random subset of this many images (smoke runs)")
    t.add_argument("--eval-batch-size", type=_positive_int, default=None, help="test batch size (2 x batch)")
    t.add_argument("--no-progress", action="store_true",
                   help="no progress bars: one line per epoch (epoch, train loss, the task's metric, time)")
    t.add_argument("--save-rank-weights", action="store_true",
                   help="every process also writes OUT/rank{R}.pt with its final weights (DDP checks)")
    t.add_argument("--watch", type=_positive_int, default=None, metavar="N",
                   help="keep every mixer layer's affinities for the first N test images in OUT, epoch 0 and "
                   "after every epoch (AffinityExplorer.from_run(OUT) scrubs them)")
    t.add_argument("--watch-budget-mb", type=float, default=None,
                   help="the largest size of the snapshots of --watch, checked before training (256)")

    e = sub.add_parser("eval", help="evaluate a checkpoint on a dataset's test split",
                       description="Print the test loss and accuracy of CHECKPOINT on DATA as one JSON line. "
                       "Without --data, the dataset (name, options, image size, subsets) is read from the "
                       "run's config.json next to the checkpoint.")
    e.add_argument("--checkpoint", required=True, type=Path, help="a .pt file written by `train`")
    e.add_argument("--data", default=None,
                   help="dataset name (see `unifiedctx data`); default: the one the run was trained on")
    e.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    e.add_argument("--batch-size", type=_positive_int, default=256, help="test batch size (256)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto)")
    e.add_argument("--img-size", type=_positive_int, default=None, help="as for train")
    e.add_argument("--data-root", default=None, help="folder of downloaded datasets (default: data/)")
    e.add_argument("--data-option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset option (repeatable)")
    e.add_argument("--limit-test", type=_positive_int, default=None, help="test on a random subset")

    m = sub.add_parser("models", help="list model presets with their sizes",
                       description="List model presets: parameters, image size, classes (and GMACs).")
    m.add_argument("pattern", nargs="?", default=None, help="an fnmatch pattern such as '*_nano'")
    m.add_argument("--macs", action="store_true", help="also count multiply-accumulates per image (slower)")
    sub.add_parser("data", help="list datasets with their sizes and whether they are offline",
                   description="List the datasets --data accepts: sizes, classes, and whether each can be "
                   "had without a network (offline) or needs a download.")
    return parser


# ------------------------------------------------------------------------------------ helpers
def _check_model_name(name: str) -> None:
    from unifiedctx.models.segment import segmenter_presets
    from unifiedctx.validation import suggest

    names = segmenter_presets()  # every preset, and the segment task's U-Net
    if name not in names:
        raise ValueError(f"unknown model {name!r} (--model).{suggest(name, names)} "
                         "`unifiedctx models` lists them")


def _load_data(args, limit_train=None):
    from unifiedctx import data as D

    D.check_name(args.data, "--data")  # the same check (and suggestion) as load's
    options = dict(args.data_option)
    if args.img_size is not None:
        accepted = inspect.signature(D.LOADERS[args.data]).parameters
        key = next((k for k in SIZE_OPTIONS if k in accepted), None)
        if key is None:
            raise ValueError(f"--img-size does not apply to {args.data} (its image size is fixed)")
        options[key] = args.img_size
    ds = D.load(args.data, root=args.data_root, **options)
    if limit_train is not None or args.limit_test is not None:
        if not hasattr(ds, "subset"):
            raise ValueError(f"--limit-train/--limit-test need a tensor dataset, not {args.data}")
        n_train = None if limit_train is None else min(limit_train, ds.train_x.shape[0])
        n_test = None if args.limit_test is None else min(args.limit_test, ds.test_x.shape[0])
        ds = ds.subset(n_train, n_test, seed=getattr(args, "seed", 0))
    return ds


def _train(args) -> int:
    from unifiedctx import train as T
    from unifiedctx.train.recipe import Recipe, resolve

    _check_model_name(args.model)
    flags = {k.removeprefix("task_flag__"): v for k, v in vars(args).items()
             if k.startswith("task_flag__") and v is not None}
    settings = {k: getattr(args, k) for k in Recipe.keys()}
    recipe, task = resolve(None, None, {**settings, **flags, "task_options": dict(args.task_options)})
    ds = _load_data(args, args.limit_train)
    model = T.build_model(args.model, ds, recipe.seed, task=task, **dict(args.model_option))
    watch, watching = None, {}
    if args.watch_budget_mb is not None:
        if args.watch is None:
            raise ValueError("--watch-budget-mb bounds the snapshots of --watch N: give --watch too")
        watching["watch_budget_mb"] = args.watch_budget_mb
    if args.watch is not None:
        if not hasattr(ds, "test_x"):
            raise ValueError(f"--watch needs a tensor dataset (its first N test images), not {args.data}")
        if args.watch > len(ds.test_x):
            raise ValueError(f"--watch {args.watch}: the test split of {args.data} has "
                             f"{len(ds.test_x)} images")
        watch = ds.normalize(ds.test_x[:args.watch]).float()
    run_info = {"command": "train", "task": task.name, "model": args.model, "data": args.data,
                "data_options": dict(args.data_option), "data_root": args.data_root,
                "img_size": args.img_size, "limit_train": args.limit_train, "limit_test": args.limit_test,
                "model_options": dict(args.model_option)}
    history = T.fit(model, ds, recipe, task=task, device=args.device, amp=args.amp, compile=args.compile,
                    channels_last=args.channels_last, out=args.out, resume=args.resume,
                    progress="epoch" if args.no_progress else True, eval_batch_size=args.eval_batch_size,
                    run_info=run_info, save_rank_weights=args.save_rank_weights,
                    allow_foreign=args.allow_foreign, watch=watch, **watching)
    if int(os.environ.get("RANK", 0)) == 0 and history:
        metric = task.best_metric
        best = history.best(metric)
        epochs = f"{len(history)} epoch" + ("s" if len(history) != 1 else "")
        print(f"{args.model} on {args.data}: {epochs}, {metric} {history[-1][metric]:.4f} "
              f"(best {best[metric]:.4f} at epoch {best['epoch']}); wrote {args.out}/")
    return 0


#: What ``eval`` reads from a run's ``config.json`` (``run`` entry, written by ``train``): entry -> (the
#: types it may hold, what it must be, in words). ``None`` is always allowed (the run did not set it).
RUN_ENTRIES = {"data": ((str,), "a dataset name"), "data_options": ((dict,), "a dict of dataset options"),
               "data_root": ((str,), "a folder path"), "img_size": ((int,), "a positive int"),
               "limit_train": ((int,), "a positive int"), "limit_test": ((int,), "a positive int")}


def _entry_error(path: Path, entry: str, value, expected: str) -> ValueError:
    shown = f"{type(value).__name__} {value!r}"[:80]
    return ValueError(f"{path}: the {entry!r} entry holds {shown}, but {expected} was expected")


def read_run_config(path: Path) -> dict:
    """The run's ``config.json`` at ``path``, every entry that ``eval`` reads checked: a ``ValueError``
    naming the file and the entry (invalid JSON, a list, a ``run`` or ``data_options`` of the wrong
    type, a non-positive ``img_size``, ...), never a traceback from deep inside."""
    try:
        config = json.loads(path.read_text())
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): it is not the config.json a run wrote") from None
    if not isinstance(config, dict):
        shown = f"{type(config).__name__} {config!r}"[:80]
        raise ValueError(f"{path} holds {shown}, but a run's config (a JSON object) was expected")
    for key, expected in (("run", "a dict"), ("recipe", "a dict")):
        if config.get(key) is not None and not isinstance(config[key], dict):
            raise _entry_error(path, key, config[key], expected)
    for key, (types, expected) in RUN_ENTRIES.items():
        value = (config.get("run") or {}).get(key)
        bad = value is not None and (not isinstance(value, types) or isinstance(value, bool)
                                     or (types == (int,) and value <= 0))
        if bad:
            raise _entry_error(path, f"run.{key}", value, expected)
    recipe = config.get("recipe") or {}
    if recipe.get("data") is not None and not isinstance(recipe["data"], dict):
        raise _entry_error(path, "recipe.data", recipe["data"], "a dict (name, options, fingerprint)")
    seed = recipe.get("seed")
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
        raise _entry_error(path, "recipe.seed", seed, "an int >= 0")
    if config.get("data") is not None and not isinstance(config["data"], str):
        raise _entry_error(path, "data", config["data"], "a dataset name")
    return config


def _trained_on(checkpoint: Path, state: dict) -> argparse.Namespace:
    """The dataset arguments of the run that wrote ``checkpoint``, from its ``config.json``."""
    config_path = checkpoint.parent / "config.json"
    if not config_path.is_file():
        raise ValueError(f"--data is needed: there is no config.json next to {checkpoint} to say which "
                         "dataset the run was trained on")
    config = read_run_config(config_path)
    run = config.get("run") or {}
    recipe = config.get("recipe") or {}
    data = run.get("data") or (recipe.get("data") or {}).get("name") or config.get("data")
    if not isinstance(data, str):
        raise ValueError(f"--data is needed: {config_path} names no dataset")
    seed = (state.get("recipe") or {}).get("seed", recipe.get("seed", 0))
    return argparse.Namespace(data=data, data_option=list((run.get("data_options") or {}).items()),
                              img_size=run.get("img_size"), data_root=run.get("data_root"),
                              limit_train=run.get("limit_train"), limit_test=run.get("limit_test"), seed=seed)


def _eval(args) -> int:
    from unifiedctx import train as T
    from unifiedctx.train import tasks
    from unifiedctx.train.recipe import upgrade_record
    from unifiedctx.validation import check_file_path

    check_file_path("--checkpoint", args.checkpoint, "checkpoint")
    model, state = T.load_checkpoint(args.checkpoint, ema=args.ema)
    if args.data is None:  # the data the run was trained and tested on, its subsets included
        trained = _trained_on(args.checkpoint, state)
        if args.data_root is not None:
            trained.data_root = args.data_root
        args.data = trained.data
        ds = _load_data(trained, trained.limit_train)
    else:
        ds = _load_data(args)
    task = upgrade_record(state.get("recipe") or {})["task"]  # the task the run trained for measures it
    result = T.evaluate(model, ds, batch_size=args.batch_size, device=args.device,
                        task=tasks.create(task["name"], **task["settings"]))
    print(json.dumps({"checkpoint": str(args.checkpoint), "data": args.data, "epoch": state.get("epoch"),
                      "task": task["name"], **result}))
    return 0


def _models(pattern, macs: bool) -> int:
    """A table of presets: parameters, image size, classes (and GMACs); built on the meta device."""
    import torch

    from unifiedctx.models import count_macs, count_params, create_model, list_models

    names = list_models(pattern)
    header = f"{'model':24s} {'params':>11s} {'img_size':>9s} {'classes':>7s}"
    print(header + (f" {'GMACs':>8s}" if macs else ""))
    for name in names:
        with torch.device("meta"):  # shapes only: no memory, no time
            model = create_model(name)
        size = "x".join(map(str, model.img_size))
        line = f"{name:24s} {count_params(model):11,d} {size:>9s} {model.num_classes:7d}"
        print(line + (f" {count_macs(model) / 1e9:8.3f}" if macs else ""))
    return 0


def _data() -> int:
    """A table of datasets: train/test sizes, image size, classes, and whether they are offline."""
    from unifiedctx import data as D

    print(f"{'dataset':12s} {'train':>6s} {'test':>6s} {'image':>9s} {'classes':>7s}  offline")
    unknown = f"{'-':>6s} {'-':>6s} {'-':>9s} {'-':>7s}"
    for name in D.available():
        if name in D.YOUR_FILES:  # nothing to load without the user's folder: say what the row needs
            print(f"{name:12s} {unknown}  your own files: --data-option path=FOLDER, {D.YOUR_FILES[name]}")
            continue
        downloads = "root" in inspect.signature(D.LOADERS[name]).parameters  # loaders that fetch files
        try:
            ds = D.load(name, download=False)
        except D.DatasetUnavailable:
            print(f"{name:12s} {unknown}  no: downloaded on first use")
            continue
        train, test = (len(getattr(ds, f"{split}_x", ())) for split in ("train", "test"))
        size = "x".join(map(str, (ds.channels, *ds.image_size)))
        where = "yes (downloaded, cached)" if downloads else "yes"
        print(f"{name:12s} {train:6d} {test:6d} {size:>9s} {ds.num_classes:7d}  {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Errors in the options, the names or the files are one line on stderr and ``SystemExit(2)``;
    a diverged run is ``SystemExit(1)``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "models":
        try:
            return _models(args.pattern, args.macs)
        except (TypeError, ValueError) as err:
            parser.error(str(err))
    if args.command == "data":
        return _data()
    from unifiedctx.data import DatasetUnavailable
    from unifiedctx.files import FolderInUse
    from unifiedctx.train import TrainingDiverged

    run = _train if args.command == "train" else _eval
    prefix = f"unifiedctx {args.command}: error:"
    try:
        return run(args)
    except TrainingDiverged as err:
        print(f"{prefix} {_one_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    except KeyboardInterrupt:
        where = f"; {args.out}/last.pt holds the last completed epoch (--resume continues)" \
            if args.command == "train" else ""
        print(f"unifiedctx {args.command}: interrupted{where}", file=sys.stderr)
        raise SystemExit(1) from None
    except (ValueError, TypeError, KeyError, DatasetUnavailable, FolderInUse) as err:
        parser.exit(2, f"{prefix} {as_options(_one_line(err), parser)}\n")
    except OSError as err:  # a read-only or full disk, a path under a file, no permission
        parser.exit(2, f"{prefix} {as_options(_os_error(err, args), parser)}\n")
    return 0


def flag_words(parser: argparse.ArgumentParser) -> dict[str, str]:
    """``{"resume=True": "--resume", "allow_foreign=True": "--allow-foreign", "augment=False":
    "--no-augment", ...}``: the library keyword setting of every on/off option of ``parser``'s
    subcommands, and the option that sets it on the command line."""
    words = {}
    commands = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for sub in (p for c in commands for p in c.choices.values()):
        for action in sub._actions:
            if isinstance(action, argparse.BooleanOptionalAction):
                on, off = action.option_strings[:2]
                words |= {f"{action.dest}=True": on, f"{action.dest}=False": off}
            elif isinstance(action, argparse._StoreTrueAction) and action.dest != "help":
                words[f"{action.dest}=True"] = action.option_strings[0]
    return words


def as_options(message: str, parser: argparse.ArgumentParser) -> str:
    """A library message names the way out in the API's words (``pass resume=True``); the command
    line's message names it in its own (``pass --resume``): each keyword setting of an on/off
    option (:func:`flag_words`) becomes that option."""
    for words, flag in flag_words(parser).items():
        message = re.sub(rf"(?<![\w-]){re.escape(words)}(?!\w)", flag, message)
    return message


def _one_line(err: BaseException) -> str:
    """The error's message on one line; for an error re-raised from a DataLoader worker (whose
    message carries the worker's traceback) only its last line, the original message."""
    text = str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)
    if "Original Traceback" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1].split(": ", 1)[-1] if lines else text
    return " ".join(text.split())


def _os_error(err: OSError, args) -> str:
    """``PATH: reason`` for an OSError (the output folder when the error names no file)."""
    if not err.errno:  # raised by us with a whole sentence (no checkpoint at ..., a foreign folder)
        return _one_line(err)
    reason = err.strerror or os.strerror(err.errno)
    if err.errno == errno.ENOSPC:
        reason += " (free some space, or choose another --out)"
    path = err.filename or getattr(args, "out", None) or getattr(args, "checkpoint", None)
    return f"{path}: {reason}" if path else reason
