"""What fit and evaluate check before a run folder is made: the model against the data and the task.

:func:`prepare` runs, in order: ``task.check_data(data)``; the model to the device; the model's
dtype, channels and image size against the data's images (:func:`check_model_takes_data`, one
forward pass of a zero ``(1, C, H, W)`` image); ``task.setup(model, data, device)``; the task's
modules to the device. :func:`check_network` holds a task to its ``network(model)`` contract.
"""

from __future__ import annotations

import torch
from torch import nn

from .checkpoint import model_config
from .tasks import Task


def data_shape(data) -> tuple[int, int, int] | None:
    """``(C, H, W)`` of the data's images, or ``None`` when the data does not say."""
    x = getattr(data, "train_x", None)
    if isinstance(x, torch.Tensor) and x.dim() == 4:
        return tuple(int(n) for n in x.shape[1:])
    channels, size = getattr(data, "channels", None), getattr(data, "image_size", None)
    if isinstance(channels, int) and isinstance(size, (tuple, list)) and len(size) == 2:
        return channels, int(size[0]), int(size[1])
    return None


@torch.no_grad()
def check_model_takes_data(model: nn.Module, data, device: torch.device) -> None:
    """The model's dtype, channels and image size against the data's, by its config and one
    forward pass of a zero image ``(1, C, H, W)`` in eval mode (RNG, mode and statistics untouched)."""
    floats = [p.dtype for p in model.parameters() if p.is_floating_point()]
    if floats and floats[0] != torch.float32:
        raise TypeError(f"the model's parameters are {floats[0]}, but fit feeds it float32 images "
                        "(autocast does the rest): call model.float() first")
    shape = data_shape(data)
    if shape is None:
        return
    config = model_config(model) or {}
    chans = config.get("in_chans")
    if isinstance(chans, int) and chans != shape[0]:
        raise ValueError(f"the model takes {chans}-channel images but the data has {shape[0]} channels: "
                         f"build it with in_chans={shape[0]} (or load the data with channels={chans})")
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model(torch.zeros(1, *shape, device=device))
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        built = f" (it was built for img_size={config['img_size']!r})" if "img_size" in config else ""
        reason = " ".join(str(err).split())[:300]
        raise ValueError(f"the model cannot take the data's {shape[0]}x{shape[1]}x{shape[2]} images{built}: "
                         f"{reason}") from err
    finally:
        model.train(was_training)


def prepare(model: nn.Module, data, task: Task, device: torch.device, fmt=torch.contiguous_format) -> None:
    """Everything checked before a run folder is made: the data for the task, the model against
    the data (its images, then the task's own checks), the task's modules built."""
    task.check_data(data)
    model.to(device, memory_format=fmt)
    check_model_takes_data(model, data, device)
    task.setup(model, data, device)
    task.modules().to(device)


def check_network(task: Task, model: nn.Module, net: nn.Module) -> None:
    """``net = task.network(model)`` must hold every parameter of the model and of ``task.modules()``
    (they are what DDP wraps and the optimizer steps); ``ValueError`` otherwise."""
    inside = {id(q) for q in net.parameters()}
    if any(id(q) not in inside for q in [*model.parameters(), *task.modules().parameters()]):
        raise ValueError(f"task {task.name!r}: network(model) must hold the model and every module of "
                         "modules() (they are what DDP wraps and the optimizer steps)")
