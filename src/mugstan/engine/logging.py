"""What a training run writes for people to read: metrics.jsonl, TensorBoard scalars, curves.png."""

from __future__ import annotations

import json
import time
from pathlib import Path

from mugstan.files import atomic_file


class MetricsLogger:
    """Scalars to ``metrics.jsonl`` and TensorBoard (``tb/``); events (validation results,
    skipped videos) to ``metrics.jsonl``; ``plot()`` draws loss and validation curves to curves.png.
    Does nothing on processes other than the main one."""

    def __init__(self, out_dir, enabled: bool = True, resume: bool = False, resume_step: int = 0):
        """resume: keep the records up to ``resume_step`` (the checkpoint's step) and drop those
        after it, which the resumed run logs again (a line cut short by a crash is dropped too);
        TensorBoard drops its events after that step likewise. Otherwise start afresh."""
        self.enabled = enabled
        self.out = Path(out_dir)
        self.writer = None
        if not enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        self.path = self.out / "metrics.jsonl"
        if not resume and self.path.exists():
            self.path.unlink()
        if resume and self.path.exists():
            kept = [line for line in map(_record, self.path.read_text().splitlines())
                    if line is not None and line.get("step", 0) <= resume_step]
            with atomic_file(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.out / "tb"), purge_step=resume_step + 1 if resume else None)

    def _write(self, record: dict) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")

    def scalars(self, step: int, values: dict) -> None:
        if not self.enabled:
            return
        self._write({"time": time.time(), "step": step, **values})
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def event(self, kind: str, **fields) -> None:
        if self.enabled:
            self._write({"time": time.time(), "event": kind, **fields})

    def plot(self) -> None:
        if not self.enabled or not self.path.exists():
            return
        plot_curves(self.path, self.out / "curves.png")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _record(line: str):
    """One metrics.jsonl line as a dict; None for a blank or broken line (a write cut short)."""
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def plot_curves(metrics_path, png_path) -> None:
    """Training loss (left) and every validation metric (right) against the step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    records = [r for r in map(_record, Path(metrics_path).read_text().splitlines()) if r is not None]
    loss = [(r["step"], r["train/loss"]) for r in records if "train/loss" in r]
    val = {}
    for r in records:
        for k, v in r.items():
            if k.startswith("val/"):
                val.setdefault(k[4:], []).append((r["step"], v))
            elif k.startswith("test/"):  # eval.select_on=test validates on the test split
                val.setdefault(k + " (selection on test)", []).append((r["step"], v))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    if loss:  # a short run's few points get markers: a line through one point draws nothing
        axes[0].plot(*zip(*loss, strict=True), color="tab:blue", marker="o" if len(loss) <= 50 else None, markersize=4)
    axes[0].set(title="training loss", xlabel="step")
    for name, points in val.items():
        axes[1].plot(*zip(*points, strict=True), marker="o", label=name)
    axes[1].set(title="validation", xlabel="step")
    if val:
        axes[1].legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
