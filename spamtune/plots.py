"""``curves.png``: training and validation loss and accuracy against examples seen.

Drawn like the book's figures 6.16 and 6.17 (examples seen below, epochs on a second axis
above), with matplotlib's Agg canvas directly: no pyplot, no display, no global backend state.
"""

from __future__ import annotations

from pathlib import Path

from spamtune.fsutil import atomic_path


def plot_curves(records: list[dict], n_train: int, path: str | Path) -> Path:
    """Write the two panels for ``metrics.jsonl`` records (one per evaluation)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    seen = [r["examples_seen"] for r in records]
    for ax, key, title in zip(fig.subplots(1, 2), ("loss", "acc"), ("Loss", "Accuracy")):
        ax.plot(seen, [r[f"train_{key}"] for r in records], marker="o", label=f"Training {title.lower()}")
        ax.plot(seen, [r[f"val_{key}"] for r in records], marker="o", linestyle="-.", label=f"Validation {title.lower()}")
        ax.set_xlabel("Examples seen")
        ax.set_ylabel(title)
        ax.legend()
        epochs = ax.secondary_xaxis("top", functions=(lambda x: x / n_train, lambda e: e * n_train))
        epochs.set_xlabel("Epochs")
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return Path(path)
