"""The command line: ``python -m unifiedctx {train,eval,models,data}`` (also ``unifiedctx ...``).

    unifiedctx train --model container_light_cifar --data cifar10 --epochs 30 --out runs/cl [--resume]
    unifiedctx eval --checkpoint runs/cl/last.pt --data cifar10
    unifiedctx models '*_nano'
    unifiedctx data

Under ``torchrun --nproc_per_node=K`` the same ``train`` command runs DistributedDataParallel
(``--batch-size`` is per process). A bad option is one line on stderr and exit code 2; a run whose
loss becomes NaN stops with one line and exit code 1, its last good checkpoint kept.
"""

from __future__ import annotations

import argparse
import difflib
import inspect
import json
import os
import sys
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


def _nonneg_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text}")
    return value


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (``3``, ``0.1``, ``true``), else a string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    key, raw = text.split("=", 1)
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line on stderr (``prog: error: ...``) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(str(message).split())} (see {self.prog} --help)\n")


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
    t.add_argument("--epochs", required=True, type=_positive_int, help="number of epochs (> 0)")
    t.add_argument("--out", required=True, type=Path, help="output folder of the run")
    t.add_argument("--task", default="classify",
                   help="what to train for: classify, segment or dino (classify)")
    t.add_argument("--task-option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="an option of the task, e.g. out_dim=1024 for dino (repeatable)")
    t.add_argument("--resume", action="store_true",
                   help="continue from OUT/last.pt (same settings); without it an existing run is an error")
    t.add_argument("--batch-size", type=_positive_int, default=128, help="images per step per process (128)")
    t.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate (1e-3)")
    t.add_argument("--weight-decay", type=_nonneg_float, default=0.05,
                   help="AdamW weight decay, not applied to norms and biases (0.05)")
    t.add_argument("--warmup-epochs", type=_nonneg_float, default=1.0,
                   help="linear warmup epochs before the cosine decay (1)")
    t.add_argument("--label-smoothing", type=_nonneg_float, default=0.0, help="label smoothing in [0, 1) (0)")
    t.add_argument("--clip-grad", type=float, default=None, help="clip the gradient norm to this value (off)")
    t.add_argument("--ema", type=float, default=None, help="EMA decay of the weights, e.g. 0.999 (off)")
    t.add_argument("--mixup", type=_nonneg_float, default=0.0, help="mixup Beta(a, a) parameter (0: off)")
    t.add_argument("--cutmix", type=_nonneg_float, default=0.0, help="cutmix Beta(a, a) parameter (0: off)")
    t.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    t.add_argument("--seed", type=int, default=0, help="seed of the weights, data order and augmentation (0)")
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
    t.add_argument("--max-steps-per-epoch", type=_positive_int, default=None, help="cut every epoch short")
    t.add_argument("--no-progress", action="store_true", help="no progress bars")
    t.add_argument("--save-rank-weights", action="store_true",
                   help="every process also writes OUT/rank{R}.pt with its final weights (DDP checks)")

    e = sub.add_parser("eval", help="evaluate a checkpoint on a dataset's test split",
                       description="Print the test loss and accuracy of CHECKPOINT on DATA as one JSON line.")
    e.add_argument("--checkpoint", required=True, type=Path, help="a .pt file written by `train`")
    e.add_argument("--data", required=True, help="dataset name (see `unifiedctx data`)")
    e.add_argument("--ema", action="store_true", help="evaluate the EMA weights")
    e.add_argument("--batch-size", type=_positive_int, default=256, help="test batch size (256)")
    e.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (auto)")
    e.add_argument("--img-size", type=_positive_int, default=None, help="as for train")
    e.add_argument("--data-root", default=None, help="folder of downloaded datasets (default: data/)")
    e.add_argument("--data-option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a dataset option (repeatable)")
    e.add_argument("--limit-test", type=_positive_int, default=None, help="test on a random subset")

    m = sub.add_parser("models", help="list model presets", description="List model presets.")
    m.add_argument("pattern", nargs="?", default=None, help="an fnmatch pattern such as '*_nano'")
    sub.add_parser("data", help="list datasets", description="List the dataset names --data accepts.")
    return parser


# ------------------------------------------------------------------------------------ helpers
def _check_model_name(name: str) -> None:
    from unifiedctx.models import list_models

    names = list_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `unifiedctx models` lists them"
        raise ValueError(f"unknown model {name!r}{hint}")


def _load_data(args, limit_train=None):
    from unifiedctx import data as D

    if args.data not in D.available():
        raise ValueError(f"unknown dataset {args.data!r}; available: {', '.join(D.available())}")
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

    _check_model_name(args.model)
    if args.task == "classify":
        task = T.tasks.create("classify", label_smoothing=args.label_smoothing, **dict(args.task_option))
    elif args.label_smoothing:
        raise ValueError(f"--label-smoothing is a classification option, not one of --task {args.task}")
    else:
        task = T.tasks.create(args.task, **dict(args.task_option))
    ds = _load_data(args, args.limit_train)
    model = task.build_model(args.model, ds, seed=args.seed, **dict(args.model_option))
    run_info = {"command": "train", "task": args.task, "model": args.model, "data": args.data,
                "data_options": dict(args.data_option),
                "img_size": args.img_size, "limit_train": args.limit_train, "limit_test": args.limit_test,
                "model_options": dict(args.model_option)}
    history = T.fit(model, ds, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                    weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs,
                    task=task, clip_grad=args.clip_grad, ema=args.ema,
                    mixup=args.mixup, cutmix=args.cutmix, augment=not args.no_augment, device=args.device,
                    amp=args.amp, compile=args.compile, channels_last=args.channels_last, out=args.out,
                    resume=args.resume, seed=args.seed, progress=not args.no_progress,
                    eval_batch_size=args.eval_batch_size, max_steps_per_epoch=args.max_steps_per_epoch,
                    run_info=run_info, save_rank_weights=args.save_rank_weights)
    if int(os.environ.get("RANK", 0)) == 0 and history:
        metric = task.best_metric
        best = history.best(metric)
        print(f"{args.model} on {args.data}: {len(history)} epochs, {metric} {history[-1][metric]:.4f} "
              f"(best {best[metric]:.4f} at epoch {best['epoch']}); wrote {args.out}/")
    return 0


def _eval(args) -> int:
    from unifiedctx import train as T

    if not args.checkpoint.is_file():
        raise FileNotFoundError(f"no checkpoint at {args.checkpoint}")
    model, state = T.load_checkpoint(args.checkpoint, ema=args.ema)
    ds = _load_data(args)
    cfg = state.get("model_config") or {}
    if cfg.get("num_classes") not in (None, ds.num_classes) or cfg.get("in_chans") not in (None, ds.channels):
        raise ValueError(f"{args.checkpoint} was trained for {cfg.get('num_classes')} classes of "
                         f"{cfg.get('in_chans')}-channel images, {args.data} has {ds.num_classes} of "
                         f"{ds.channels}")
    result = T.evaluate(model, ds, batch_size=args.batch_size, device=args.device)
    print(json.dumps({"checkpoint": str(args.checkpoint), "data": args.data, "epoch": state.get("epoch"),
                      **result}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); return the exit code.

    Errors in the options, the names or the files are one line on stderr and ``SystemExit(2)``;
    a diverged run is ``SystemExit(1)``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "models":
        from unifiedctx.models import list_models

        try:
            print("\n".join(list_models(args.pattern)))
        except (TypeError, ValueError) as err:
            parser.error(str(err))
        return 0
    if args.command == "data":
        from unifiedctx.data import available

        print("\n".join(available()))
        return 0
    from unifiedctx.data import DatasetUnavailable
    from unifiedctx.train import TrainingDiverged

    run = _train if args.command == "train" else _eval
    try:
        return run(args)
    except TrainingDiverged as err:
        print(f"unifiedctx {args.command}: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except (ValueError, TypeError, FileNotFoundError, FileExistsError, DatasetUnavailable) as err:
        parser.exit(2, f"unifiedctx {args.command}: error: {' '.join(str(err).split())}\n")
    return 0
