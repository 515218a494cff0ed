"""Loss curves as PNG files."""

from __future__ import annotations

from pathlib import Path


def plot_loss_curve(history: list[dict], path: str | Path, title: str = "loss") -> Path | None:
    """Train and held-out loss against tokens, as a PNG."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    tokens = [r["tokens"] for r in history]
    ax.plot(tokens, [r["train_loss"] for r in history], label="train", alpha=0.7)
    val = [(r["tokens"], r["val_loss"]) for r in history if r.get("val_loss") is not None]
    if val:
        ax.plot(*zip(*val), marker="o", label="held-out")
    ax.set_xlabel("tokens")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)
