"""The accuracy matrix of a task sequence and what is read from it: AA, BWT, FWT, forgetting.

``R[i][j]`` is the accuracy on task ``j`` after training task ``i`` (0-based; ``None`` where task ``j``
was not scored, i.e. ``j > i`` unless every task is scored after every task). ``zero_shot[j]`` is the
untrained model's accuracy on task ``j``. With T tasks (Lopez-Paz & Ranzato 2017, GEM, Sec. 2;
Chaudhry et al. 2018 for forgetting; the definitions the OSFT and O-LoRA papers report):

- ``AA  = 1/T · Σ_j R[T-1][j]``
- ``BWT = 1/(T-1) · Σ_{j<T-1} (R[T-1][j] - R[j][j])``
- ``FWT = 1/(T-1) · Σ_{j>0} (R[j-1][j] - zero_shot[j])`` (needs the off-diagonal scores and the zero shot)
- ``forgetting = 1/(T-1) · Σ_{j<T-1} (max_{l<T-1} R[l][j] - R[T-1][j])``
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

Matrix = list[list[float | None]]


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def average_accuracy(R: Matrix) -> float | None:
    last = R[-1] if R else []
    return None if not last or any(v is None for v in last) else _mean(last)  # type: ignore[arg-type]


def backward_transfer(R: Matrix) -> float | None:
    T = len(R)
    if T < 2:
        return None
    return _mean([R[-1][j] - R[j][j] for j in range(T - 1)])  # type: ignore[operator]


def forward_transfer(R: Matrix, zero_shot: list[float | None] | None) -> float | None:
    T = len(R)
    if T < 2 or not zero_shot:
        return None
    gains = [R[j - 1][j] - zero_shot[j] for j in range(1, T) if R[j - 1][j] is not None and zero_shot[j] is not None]
    return _mean(gains) if len(gains) == T - 1 else None  # type: ignore[operator]


def forgetting(R: Matrix) -> float | None:
    T = len(R)
    if T < 2:
        return None
    return _mean([max(R[l][j] for l in range(j, T - 1)) - R[-1][j] for j in range(T - 1)])  # type: ignore[type-var,operator]


def summary(R: Matrix, zero_shot: list[float | None] | None = None) -> dict[str, float | None]:
    return {"AA": average_accuracy(R), "BWT": backward_transfer(R), "FWT": forward_transfer(R, zero_shot),
            "forgetting": forgetting(R)}


def matrix_table(tasks: list[str], R: Matrix, zero_shot: list[float | None] | None, title: str,
                 joint: bool = False) -> Any:
    """A rich table: one row per training stage (one row, ``joint``, for multitask), one column per task."""
    from rich.table import Table

    table = Table(title=title)
    table.add_column("after training")
    for name in tasks:
        table.add_column(name, justify="right")

    def cells(row: list[float | None]) -> list[str]:
        return [f"{v:.3f}" if v is not None else "" for v in row]

    if zero_shot:
        table.add_row("(zero-shot)", *cells(zero_shot), style="dim")
    for i, row in enumerate(R):
        table.add_row("all (joint)" if joint else tasks[i], *cells(row))
    return table


def heatmap_png(tasks: list[str], R: Matrix, path: str | Path, title: str, joint: bool = False) -> Path:
    """The matrix as a heatmap PNG (rows: after training task i; columns: tested on task j)."""
    import matplotlib.pyplot as plt

    fig = heatmap_figure(tasks, R, title, joint=joint)
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def heatmap_figure(tasks: list[str], R: Matrix, title: str, joint: bool = False) -> Any:
    """The heatmap as a matplotlib figure (the caller saves and closes it): ``lifecycle report`` embeds
    the same picture as the continual command writes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.array([[np.nan if v is None else v for v in row] for row in R], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(tasks), 1.0 + 0.7 * len(R)))
    image = ax.imshow(values, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
    rows = ["all (joint)"] if joint else tasks[: len(R)]
    ax.set_yticks(range(len(R)), rows)
    ax.set_xlabel("tested on")
    ax.set_ylabel("after training")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            if not np.isnan(values[i, j]):
                ax.text(j, i, f"{values[i, j]:.2f}", ha="center", va="center",
                        color="black" if values[i, j] > 0.6 else "white", fontsize=8)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


__all__ = ["average_accuracy", "backward_transfer", "forgetting", "forward_transfer", "heatmap_figure", "heatmap_png", "matrix_table",
           "summary"]
