"""What a training run records in its folder besides the weights: ``metrics.csv``, ``timing.json``, the
checkpoint metadata and the loss and AUC curves. Only rank 0 calls these; every file is written atomically."""

from __future__ import annotations

import csv
import io
import json
import math
import time
from pathlib import Path
from typing import Any

from pneumoscan import __version__
from pneumoscan.config import Config
from pneumoscan.constants import CLASS_NAMES
from pneumoscan.preprocessing import Preprocessing
from pneumoscan.utils import atomic_path, atomic_write_text

__all__ = ["CAUSE_AUC_COLUMN", "METRICS_COLUMNS", "RAW_AUC_COLUMN", "checkpoint_meta", "plot_curves", "write_metrics_csv",
           "write_timing"]

METRICS_COLUMNS = ["epoch", "lr", "train_loss", "train_auc", "val_loss", "val_auc", "val_sensitivity", "val_specificity"]
#: Extra column when weight averaging (EMA) is on: validation AUC of the raw, non-averaged weights.
RAW_AUC_COLUMN = "val_auc_raw"
#: Extra column with a cause output: its validation AUC, bacterial vs viral, on the films whose cause is known.
CAUSE_AUC_COLUMN = "val_cause_auc"


def write_metrics_csv(path: Path, history: list[dict[str, Any]]) -> None:
    """One row per epoch of ``history``, floats with 6 decimals; ``val_auc_raw`` and ``val_cause_auc`` only when
    some row has them."""
    # Every cell is a number (no text to neutralise for spreadsheets: a negative number must stay a number).
    buf = io.StringIO()
    columns = METRICS_COLUMNS + [c for c in (RAW_AUC_COLUMN, CAUSE_AUC_COLUMN) if any(c in row for row in history)]
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{row[k]:.6f}" if isinstance(row.get(k), float) else row.get(k, "")) for k in columns})
    atomic_write_text(path, buf.getvalue())


def write_timing(path: Path, times: list[float]) -> None:
    """``timing.json``: wall seconds of every epoch and their total (kept out of metrics.csv, which is
    reproducible, because wall time is not)."""
    atomic_write_text(path, json.dumps({"epoch_seconds": times, "total_seconds": sum(times)}, indent=2) + "\n")


def checkpoint_meta(cfg: Config, spec: Preprocessing, epoch: int, row: dict[str, Any], n_train: int,
                    n_val: int, validation: dict[str, Any] | None = None) -> dict[str, Any]:
    """The metadata stored with the weights of ``epoch`` (``row`` is its metrics.csv row; ``validation`` says how
    the validation images were chosen, :attr:`~.inputs.RunData.validation`)."""
    return {
        "model": cfg.model.name,
        "config": cfg.to_dict(),
        "preprocessing": spec.to_dict(),
        "classes": list(CLASS_NAMES),
        "outputs": ["pneumonia", "viral"] if cfg.model.cause_head else ["pneumonia"],
        "epoch": epoch,
        "val_metrics": {k: row[k] for k in ("val_loss", "val_auc", "val_sensitivity", "val_specificity",
                                            CAUSE_AUC_COLUMN) if k in row},
        "n_train_images": n_train,
        "n_val_images": n_val,
        **({"validation": validation} if validation else {}),
        "pneumoscan_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def plot_curves(run_dir: Path, history: list[dict[str, Any]]) -> None:
    """``loss.png`` and ``auc.png``: train against validation per epoch, with the best epoch marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not history:
        return
    epochs = [r["epoch"] for r in history]
    best = max(history, key=lambda r: -math.inf if math.isnan(r["val_auc"]) else r["val_auc"])
    specs = [
        ("loss.png", "Loss (weighted BCE)", [("train", "train_loss"), ("validation", "val_loss")]),
        ("auc.png", "ROC AUC", [("train (augmented, during the epoch)", "train_auc"), ("validation", "val_auc")]),
    ]
    for name, title, series in specs:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, key in series:
            ax.plot(epochs, [r[key] for r in history], marker="o", label=label)
        ax.axvline(best["epoch"], color="grey", linestyle="--", linewidth=1, label=f"best epoch ({best['epoch']})")
        ax.set_xlabel("epoch")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        with atomic_path(run_dir / name) as tmp:
            fig.savefig(tmp, format="png", dpi=110)
        plt.close(fig)
