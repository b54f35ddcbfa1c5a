"""What a run shows while it trains (rank 0 only): a tqdm bar per epoch, or one line per epoch.

``fit(progress=True)``: :class:`StepBar`, the epoch's steps with the mean loss so far, the task's
training metrics and images/s; ``progress="epoch"``: :func:`epoch_lines`, one line per epoch
(epoch, train loss, the task's best metric, seconds); ``False``: nothing.
"""

from __future__ import annotations

import time


def epoch_lines(callback, epochs: int, metric: str):
    """``callback`` that also prints one compact line per epoch: loss, the task's metric, time."""
    def report(info: dict) -> None:
        if info["event"] == "epoch":
            row = info["row"]
            print(f"epoch {row['epoch']}/{epochs}  train_loss {row['train_loss']:.4f}  "
                  f"{metric} {row.get(metric, float('nan')):.4f}  {row['epoch_time']:.1f}s", flush=True)
        if callback is not None:
            callback(info)
    return report


class StepBar:
    """A tqdm bar over the ``steps`` of one epoch (disabled unless ``show``)."""

    def __init__(self, show: bool, steps: int, desc: str):
        from tqdm.auto import tqdm

        self.show, self.t0 = show, time.perf_counter()
        self.bar = tqdm(total=steps, desc=desc, disable=not show, dynamic_ncols=True)

    def update(self, done: int, mean_loss: float, seen: int, metrics: dict[str, float]) -> None:
        """``done`` steps taken, ``seen`` images so far (all ranks), the task's training metrics."""
        if not self.show:
            return
        self.bar.update(done - self.bar.n)
        rate = seen / max(time.perf_counter() - self.t0, 1e-9)
        self.bar.set_postfix(loss=f"{mean_loss:.3f}", img_s=f"{rate:.0f}", refresh=False,
                             **{k.removeprefix("train_"): f"{v:.3f}" for k, v in metrics.items()})

    def close(self) -> None:
        self.bar.close()
