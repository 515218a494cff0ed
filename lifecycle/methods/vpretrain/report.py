"""V-Pretraining's records: the designer beside the checkpoint, its metrics over time as JSON and a PNG."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

DESIGNER_WEIGHTS = "designer/model.safetensors"
DESIGNER_CONFIG = "designer/config.json"


def save_designer(designer: nn.Module, folder: Path, tokenizer_fingerprint: str) -> None:
    """The designer as safetensors plus its sizes and the learner tokenizer it was built for."""
    from safetensors.torch import save_file

    (folder / "designer").mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in designer.state_dict().items()}
    save_file(tensors, str(folder / DESIGNER_WEIGHTS))
    config = {**designer.describe(), "tokenizer": tokenizer_fingerprint}
    (folder / DESIGNER_CONFIG).write_text(json.dumps(config, indent=2))


def load_designer(folder: str | Path, tokenizer_fingerprint: str, alpha_max: float, max_positions: int) -> nn.Module:
    """The designer saved in an earlier output, refused when it was built for another tokenizer."""
    from safetensors.torch import load_file

    from lifecycle.errors import LifecycleError
    from lifecycle.methods.vpretrain.designer import DesignerConfig, TaskDesigner

    root = Path(folder).expanduser()
    config_file, weights_file = root / DESIGNER_CONFIG, root / DESIGNER_WEIGHTS
    if not config_file.is_file() or not weights_file.is_file():
        raise LifecycleError(f"designer_init {root}: no {DESIGNER_CONFIG} and {DESIGNER_WEIGHTS} (an output of lifecycle vpretrain)")
    config = json.loads(config_file.read_text())
    if config.get("tokenizer") != tokenizer_fingerprint:
        raise LifecycleError(f"designer_init {root}: the designer was built for another tokenizer than the learner's "
                             f"({config.get('tokenizer')} vs {tokenizer_fingerprint}); candidate ids would not match")
    sizes = {k: config[k] for k in DesignerConfig.model_fields if k in config}
    designer = TaskDesigner(int(config["vocab_size"]), alpha_max, DesignerConfig(**sizes), max_positions=max_positions)
    designer.load_state_dict(load_file(str(weights_file)), strict=True)
    return designer


def metrics_document(rows: list[dict]) -> dict:
    """Per designer update (alignment value V, cosine, meta loss) and per learner step (gate, mass off y_t)."""
    return {"designer_updates": [r for r in rows if r.get("kind") == "designer"],
            "targets": [r for r in rows if r.get("kind") == "targets"]}


def plot_metrics(rows: list[dict], path: Path, title: str) -> Path | None:
    doc = metrics_document(rows)
    if not doc["targets"]:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(12, 3.5), dpi=110)
    updates = doc["designer_updates"]
    if updates:
        axes[0].plot([r["step"] for r in updates], [r["cosine"] for r in updates], marker=".")
    axes[0].set_title("alignment cos(g_down, g_pre)")
    steps = [r["step"] for r in doc["targets"]]
    axes[1].plot(steps, [r["gate_mean"] for r in doc["targets"]])
    axes[1].set_title("gate mean α")
    axes[2].plot(steps, [r["mass_off_true"] for r in doc["targets"]])
    axes[2].set_title("mass moved off the true token")
    for ax in axes:
        ax.set_xlabel("learner step")
        ax.grid(alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


__all__ = ["DESIGNER_CONFIG", "DESIGNER_WEIGHTS", "load_designer", "metrics_document", "plot_metrics", "save_designer"]
