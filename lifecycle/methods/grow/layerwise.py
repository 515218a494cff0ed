"""Layer-wise growth on a frozen substrate.

Bochkov 2025, "Growing Transformers: Modular Composition and Layer-wise Expansion on a Frozen
Substrate" (arXiv:2507.07129; models abs-bvv-1..6). The protocol, and where this file implements it:

1. The token embedding is a *frozen substrate*: it is never trained (:func:`freeze_substrate`). The
   paper builds it deterministically from the tokenizer (Unicode-glyph images, L2-normalised). Here
   it is either the model's own embedding (``embedding="model"``: for a trained source model, its
   learned table; for a model built from a config, its seeded random init) or a table derived from
   the tokenizer alone (``embedding="hashed"``, :func:`hashed_embedding`).
2. The deep model is built by adding one layer — or a block of ``k`` — at a time *before the final
   norm* (:func:`add_layers`) and training only the new layer(s); everything below is frozen
   (:func:`set_trainable`). abs-bvv-5/6 additionally LoRA-tune the old layers; here ``lora_rank > 0``
   puts peft LoRA adapters on every old layer for the stage and merges them into the weights at the
   end of the stage, so every checkpoint is a plain model (:func:`grow_layerwise`).
3. Every stage is a checkpoint that loads with ``AutoModelForCausalLM.from_pretrained`` (the caller's
   ``on_stage`` callback writes it).

Choices the paper leaves open or that differ, and why:

* ``hashed`` embedding instead of glyph images: each token's vector is drawn from a Gaussian seeded by
  a SHA-256 of the token's *text* (not its id), then scaled to the model's init scale
  (``initializer_range`` per component). Like the glyph table it needs no training, is fully
  deterministic, and gives the same string the same vector in any vocabulary; it needs no font
  renderer. It carries no similarity between related tokens (glyph images carry some).
* The final norm is trained in every stage (it rescales the new top layer's output, a few hundred
  parameters). The LM head is trained too when it is not tied to the embedding; with
  ``head="train"`` a tied head is first untied (the config's ``tie_word_embeddings`` becomes false,
  so reloading keeps them separate). With ``head="frozen"`` a tied head stays the frozen embedding.
* New layers start as ``identity`` by default: a fresh random layer (normal(0, initializer_range),
  norms at 1) with its two residual-branch outputs (``o_proj``, ``down_proj``) zeroed, so adding it
  leaves the model's function — and its loss — exactly where the previous stage ended; training then
  moves it away from identity. ``random`` keeps the plain random init (the paper's description).
* Each stage gets a fresh AdamW and a restarted warmup + cosine schedule (only the new parameters are
  optimised, so there is no state to carry), and the data stream continues where the previous stage
  stopped (``skip_tokens``), as in one pass over the data.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.methods.grow.options import LayerwiseOptions
from lifecycle.methods.registry import register_method
from lifecycle.model.adapter import adapter_for

EmbeddingKind = Literal["model", "hashed", "unit"]
HeadMode = Literal["train", "frozen"]
NewLayerInit = Literal["identity", "random"]
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------------------------------------
# step 1: the frozen substrate


def hashed_embedding(tokenizer: Any, vocab_size: int, hidden_size: int, *, std: float = 0.02, seed: int = 0,
                     unit_norm: bool = False) -> torch.Tensor:
    """A ``[vocab_size, hidden_size]`` table built from the tokenizer without training.

    Row ``i`` is a Gaussian vector seeded by ``sha256(f"{seed}|{token text}")`` with per-component RMS
    ``std`` (the model's init scale), or, with ``unit_norm``, the same direction scaled to L2 norm 1
    (Bochkov's glyph vectors are L2-normalised). Ids past the tokenizer's vocabulary (padding rows)
    use their id.
    """
    table = torch.empty(vocab_size, hidden_size, dtype=torch.float32)
    id_to_token = {i: t for t, i in tokenizer.get_vocab().items()} if tokenizer is not None else {}
    for i in range(vocab_size):
        text = id_to_token.get(i, f"<id:{i}>")
        digest = hashlib.sha256(f"{seed}|{text}".encode("utf-8")).digest()
        g = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))
        row = torch.randn(hidden_size, generator=g)
        scale = 1.0 / row.norm().clamp_min(1e-12) if unit_norm else std / row.pow(2).mean().sqrt().clamp_min(1e-12)
        table[i] = row * scale
    return table


def freeze_substrate(model: nn.Module, *, embedding: EmbeddingKind = "model", head: HeadMode = "train", tokenizer: Any = None, seed: int = 0) -> None:
    """Make the token embedding a frozen substrate (optionally replacing it by the hashed table).

    With ``head="train"`` and tied embeddings, the head is untied first (a trainable copy), so that
    training the head never moves the embedding.
    """
    adapter = adapter_for(model)
    emb = adapter.embed_tokens
    if embedding in ("hashed", "unit"):
        std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
        table = hashed_embedding(tokenizer, emb.weight.shape[0], emb.weight.shape[1], std=std, seed=seed,
                                 unit_norm=embedding == "unit")
        with torch.no_grad():
            emb.weight.copy_(table)
    elif embedding != "model":
        raise LifecycleError(f"unknown embedding '{embedding}' (use model, hashed or unit)")
    if head == "train" and adapter.tied_embeddings:
        adapter.lm_head.weight = nn.Parameter(emb.weight.detach().clone())
        model.config.tie_word_embeddings = False
        text_config = getattr(model.config, "get_text_config", lambda: None)()
        if text_config is not None and text_config is not model.config:
            text_config.tie_word_embeddings = False
    emb.weight.requires_grad_(False)


# ------------------------------------------------------------------------------------------------
# step 2: add layers before the final norm, train only them


def _init_layer(layer: nn.Module, std: float, generator: torch.Generator, init: NewLayerInit) -> None:
    with torch.no_grad():
        for name, module in layer.named_modules():
            if isinstance(module, nn.Linear):
                module.weight.copy_(torch.randn(module.weight.shape, generator=generator) * std)
                if module.bias is not None:
                    module.bias.zero_()
            elif "RMSNorm" in type(module).__name__ and getattr(module, "weight", None) is not None:
                module.weight.fill_(1.0)
        if init == "identity":
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        elif init != "random":
            raise LifecycleError(f"unknown new-layer init '{init}' (use identity or random)")


def add_layers(model: nn.Module, k: int, *, init: NewLayerInit = "identity", seed: int = 0) -> list[int]:
    """Append ``k`` freshly initialised decoder layers on top of the stack (before the final norm).

    A new layer is made by copying the current top layer's module (so its class, per-layer
    attention type and GQA shape match the architecture) and re-initialising all its weights.
    Returns the indices of the new layers.
    """
    if k < 1:
        raise LifecycleError(f"layers per stage must be at least 1, got {k}")
    adapter = adapter_for(model)
    n = len(adapter.layers)
    if n == 0:
        raise LifecycleError("the model has no decoder layer to take the layer shape from")
    std = float(getattr(model.config, "initializer_range", 0.02) or 0.02)
    generator = torch.Generator().manual_seed(seed * 7919 + n)
    new = []
    for _ in range(k):
        layer = adapter.copy_layer(n - 1)
        _init_layer(layer, std, generator, init)
        new.append(layer)
    adapter.set_layers([*adapter.layers, *new])
    return list(range(n, n + k))


def set_trainable(model: nn.Module, trainable_layers: list[int]) -> None:
    """Freeze everything except the given layers, the final norm and an untied head."""
    adapter = adapter_for(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for i in trainable_layers:
        for p in adapter.layers[i].parameters():
            p.requires_grad_(True)
    for p in adapter.final_norm.parameters():
        p.requires_grad_(True)
    if not adapter.tied_embeddings:
        adapter.lm_head.weight.requires_grad_(True)
    adapter.embed_tokens.weight.requires_grad_(False)


def stage_flops_per_token(model: nn.Module, trainable_layers: list[int], *, lora: bool = False) -> float:
    """Training FLOPs per token of one stage, charging each weight only for the passes it needs.

    A weight matrix of ``n`` entries costs ``2n`` per token in the forward pass, ``2n`` more in the
    backward pass when the gradient must flow *through* it to reach something trainable below
    (the activation gradient), and ``2n`` more when it is itself trained (its weight gradient). So:

    * a trained weight: ``6n`` (the usual ``6·N``);
    * a frozen weight on the backward path (above the lowest trainable layer, or every old layer
      under LoRA, whose adapters sit in all of them): ``4n`` — forward plus activation gradient,
      no weight gradient;
    * a frozen weight below everything trainable: ``2n`` (forward only).

    ``model`` must already have its trainable parameters marked (:func:`set_trainable`). Under LoRA
    pass the model that carries the adapters (peft's base model): the old layers' base weights are
    frozen and on the path (``4n``), the adapters inside them are trained (``6`` per parameter). The embedding lookup is free (a tied embedding is charged as
    the head, which is a matmul). Until issue #13 the LoRA case charged every old frozen weight
    ``6n``, as if it were trained.
    """
    adapter = adapter_for(model)
    layers = list(adapter.layers)
    lowest = 0 if lora or not trainable_layers else min(trainable_layers)

    def cost(params, on_path: bool) -> float:
        total = 0.0
        for p in params:
            total += (2.0 + (2.0 if on_path else 0.0) + (2.0 if p.requires_grad else 0.0)) * p.numel()
        return total

    flops = sum(cost(layer.parameters(), i >= lowest) for i, layer in enumerate(layers))
    flops += cost(adapter.final_norm.parameters(), True) + cost([adapter.lm_head.weight], True)
    return flops


# ------------------------------------------------------------------------------------------------
# per-stage stopping rule


class PlateauStop:
    """Held-out plateau rule for one stage (``should_stop`` of :class:`TrainHooks`).

    At every held-out evaluation (every ``train.eval_every`` steps) the loss counts as an
    improvement when it is below the best counted loss by more than ``min_delta``; the stage stops at
    the ``patience``-th evaluation in a row without one. The first evaluation sets the best and
    never stops. Bochkov trains every stage to convergence; this is the cheap stand-in for
    "converged" on a budget. The stage's LR schedule is planned for its full ``steps``, so a stage
    that stops early ends before its cosine has decayed.
    """

    def __init__(self, patience: int, min_delta: float = 0.0):
        if patience < 1:
            raise LifecycleError(f"stopping patience must be at least 1 evaluation, got {patience}")
        if min_delta < 0:
            raise LifecycleError(f"stopping min_delta must be non-negative, got {min_delta}")
        self.patience = patience
        self.min_delta = min_delta
        self.best: float | None = None
        self.bad = 0
        self.stopped_at: int | None = None

    def __call__(self, row: dict) -> bool:
        loss = float(row["val_loss"])
        if self.best is None or loss < self.best - self.min_delta:
            self.best, self.bad = loss, 0
            return False
        self.bad += 1  # the best stays where the last counted improvement left it (no slow drift)
        if self.bad >= self.patience:
            self.stopped_at = int(row["step"])
            return True
        return False


# ------------------------------------------------------------------------------------------------
# the stage loop


@dataclass
class StageReport:
    stage: int
    layers: int  # depth after this stage
    new_layers: list[int]
    trainable_params: int
    steps: int
    stopped_early: bool
    tokens: int
    flops: float
    seconds: float
    final_val_loss: float | None
    final_train_loss: float | None
    history: list[dict] = field(default_factory=list)


@dataclass
class LayerwiseRun:
    model: nn.Module
    stages: list[StageReport]
    history: list[dict]  # all stages, tokens counted from the start of stage 1

    @property
    def tokens_seen(self) -> int:
        return sum(s.tokens for s in self.stages)

    @property
    def train_flops(self) -> float:
        return sum(s.flops for s in self.stages)


def _apply_lora(model: nn.Module, old_layers: list[int], rank: int, alpha: float):
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(
        r=rank,
        lora_alpha=alpha,
        lora_dropout=0.0,
        target_modules=list(LORA_TARGETS),
        layers_to_transform=old_layers,
        layers_pattern="layers",
        bias="none",
    )
    return get_peft_model(model, config)


def grow_layerwise(
    model: nn.Module,
    data,
    cfg,
    run_dir: str | Path,
    *,
    target_layers: int,
    layers_per_stage: int = 1,
    train_initial: bool = False,
    lora_rank: int = 0,
    lora_alpha: float | None = None,
    new_layer_init: NewLayerInit = "identity",
    stop_patience: int = 0,
    stop_min_delta: float = 0.0,
    seen_tokens: int = 0,
    on_stage: Callable[[StageReport, nn.Module], None] | None = None,
    train_fn: Callable | None = None,
    progress: bool = True,
) -> LayerwiseRun:
    """Grow ``model`` (its substrate already frozen) to ``target_layers``, ``layers_per_stage`` at a time.

    ``train_initial``: first train the model's existing layers as stage 1 (growing from a config:
    the first block is trained from scratch on the substrate). Every stage trains with ``cfg`` (a
    :class:`TrainConfig`; ``cfg.steps`` steps per stage, at most, when ``stop_patience > 0`` turns on
    :class:`PlateauStop`) and continues the data stream. ``on_stage``
    is called with each stage's report and the plain (LoRA-merged) model.
    """
    from lifecycle.train.engine import TrainHooks, train

    train_fn = train_fn or train
    run_dir = Path(run_dir)
    adapter = adapter_for(model)
    if target_layers < len(adapter.layers):
        raise LifecycleError(f"target depth {target_layers} is smaller than the source's {len(adapter.layers)} layers")
    if not train_initial and target_layers == len(adapter.layers):
        raise LifecycleError(f"the source already has {target_layers} layers: nothing to grow")
    if (target_layers - len(adapter.layers)) % layers_per_stage:
        raise LifecycleError(
            f"cannot reach {target_layers} layers from {len(adapter.layers)} in blocks of {layers_per_stage}"
        )
    plan: list[list[int] | None] = []
    if train_initial:
        plan.append(list(range(len(adapter.layers))))
    plan += [None] * ((target_layers - len(adapter.layers)) // layers_per_stage)

    stages: list[StageReport] = []
    history: list[dict] = []
    tokens_so_far = 0
    for number, existing in enumerate(plan, start=1):
        started = time.perf_counter()
        if existing is None:
            new = add_layers(model, layers_per_stage, init=new_layer_init, seed=cfg.seed + number)
        else:
            new = existing
        old = [i for i in range(len(adapter_for(model).layers)) if i not in new]
        set_trainable(model, new)
        use_lora = lora_rank > 0 and bool(old)
        trainee = _apply_lora(model, old, lora_rank, lora_alpha or 2 * lora_rank) if use_lora else model
        if use_lora:
            # get_peft_model freezes everything but the adapters; the new layers train in full.
            set_trainable(trainee.get_base_model(), new)
            for name, p in trainee.named_parameters():
                if "lora_" in name:
                    p.requires_grad_(True)
        # After the adapters are in place, so they are charged as trained and the base weights as frozen.
        flops_per_token = stage_flops_per_token(trainee.get_base_model() if use_lora else model, new, lora=use_lora)
        trainable = sum(p.numel() for p in trainee.parameters() if p.requires_grad)
        stage_cfg = cfg.model_copy(update={"skip_tokens": seen_tokens + tokens_so_far})
        rule = PlateauStop(stop_patience, stop_min_delta) if stop_patience > 0 else None
        result = train_fn(
            trainee,
            data,
            stage_cfg,
            run_dir / f"stage-{number}",
            hooks=TrainHooks(should_stop=rule),
            description=f"layer-wise stage {number}",
            progress=progress,
        )
        trained = result.model
        model = trained.merge_and_unload() if use_lora else trained
        for p in model.parameters():
            p.requires_grad_(False)
        report = StageReport(
            stage=number,
            layers=len(adapter_for(model).layers),
            new_layers=new,
            trainable_params=trainable,
            steps=result.steps,
            # the rule may fire at the stage's last evaluation, which saves nothing
            stopped_early=rule is not None and rule.stopped_at is not None and result.steps < stage_cfg.steps,
            tokens=result.tokens_seen,
            flops=flops_per_token * result.tokens_seen,
            seconds=time.perf_counter() - started,
            final_val_loss=result.final_val_loss,
            final_train_loss=result.final_train_loss,
            history=[dict(r, stage=number, tokens=r["tokens"] + tokens_so_far) for r in result.history],
        )
        tokens_so_far += result.tokens_seen
        history.extend(report.history)
        stages.append(report)
        if on_stage is not None:
            on_stage(report, model)
    # Hand back a plain model: everything trainable again except the substrate.
    for p in model.parameters():
        p.requires_grad_(True)
    adapter_for(model).embed_tokens.weight.requires_grad_(False)
    return LayerwiseRun(model=model, stages=stages, history=history)


@register_method("grow", "layerwise", paper="Bochkov 2025, Growing Transformers on a Frozen Substrate (arXiv:2507.07129)",
                 summary="freeze the embedding and trained layers, add and train new layers stage by stage",
                 options=LayerwiseOptions, aliases=("layer-wise", "frozen-substrate"))
def grow_layerwise_command(opts: Any, s: Any, out: Path) -> Path:
    """The ``grow`` method ``layerwise``: stages of new layers on the frozen substrate, then finish."""
    from lifecycle.finish import default_run_dir, finish_run, tidy_run_dir
    from lifecycle.methods.grow.planner import grow_lineage, move_into, pack_data, source_seen_tokens
    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import save_checkpoint
    from lifecycle.train.engine import TrainResult

    lw = opts.layerwise
    data = pack_data(opts, s)
    run_dir = default_run_dir(out)
    seen, seen_why = (0, "from scratch") if opts.config else source_seen_tokens(opts, s, data)
    freeze_substrate(s.model, embedding=lw.embedding, head=lw.head, tokenizer=s.tokenizer, seed=opts.train.seed)
    pieces: dict[str, Path] = {}
    stage_rows: list[dict] = []

    def on_stage(report, model) -> None:
        row = {k: v for k, v in report.__dict__.items() if k != "history"}
        row["seconds"] = round(row["seconds"], 1)
        stage_rows.append(row)
        if report.layers == s.target_layers:
            return  # the last stage is the output itself
        lineage = new_lineage(
            command="grow", method="layerwise-stage", parents=[s.parent] if s.parent else [],
            parent_lineages=[s.parent_lineage], options=opts.model_dump(mode="json"), seed=opts.train.seed,
            data=data.describe(), tokens_seen=sum(r["tokens"] for r in stage_rows),
        )
        lineage["growth"] = {"stage": report.stage, "layers": report.layers, "new_layers": report.new_layers}
        pieces[f"stages/stage-{report.stage}"] = save_checkpoint(
            model, s.tokenizer, run_dir / "stages" / f"stage-{report.stage}", lineage=lineage, overwrite=True
        )

    cfg = opts.train.model_copy(update={"steps": s.stage_steps})
    run = grow_layerwise(
        s.model,
        data,
        cfg,
        run_dir,
        target_layers=s.target_layers,
        layers_per_stage=lw.layers_per_stage,
        train_initial=opts.config is not None,
        lora_rank=lw.lora_rank,
        lora_alpha=lw.lora_alpha,
        new_layer_init=lw.new_layer_init,
        stop_patience=lw.stop_patience,
        stop_min_delta=lw.stop_min_delta,
        seen_tokens=seen if opts.skip_seen_tokens else 0,
        on_stage=on_stage,
    )
    source_tokens = int((s.parent_lineage or {}).get("tokens_seen") or 0) if opts.model else 0
    growth = {
        "method": "layerwise",
        "paper": "Bochkov 2025, Growing Transformers on a Frozen Substrate (arXiv:2507.07129)",
        "source": s.parent or "built from config",
        "source_layers": s.source_layers if opts.model else 0,
        "target_layers": s.target_layers,
        "factor_given": opts.factor,
        "layers_per_stage": lw.layers_per_stage,
        "embedding": lw.embedding,
        "head": lw.head,
        "new_layer_init": lw.new_layer_init,
        "lora_rank": lw.lora_rank,
        "stop_patience": lw.stop_patience,
        "stop_min_delta": lw.stop_min_delta,
        "skip_tokens": seen,
        "skip_reason": seen_why,
        "source_tokens": source_tokens,
        "stages": stage_rows,
        "train_flops": run.train_flops,
    }
    lineage = grow_lineage(opts, s, data, run.tokens_seen + source_tokens, growth)
    last = run.stages[-1]
    result = TrainResult(
        model=run.model,
        steps=sum(st.steps for st in run.stages),
        tokens_seen=run.tokens_seen,
        final_train_loss=last.final_train_loss,
        final_val_loss=last.final_val_loss,
        history=run.history,
        seconds=sum(st.seconds for st in run.stages),
    )
    finish_run(run.model, s.tokenizer, out, lineage, overwrite=opts.overwrite, eval_after=opts.eval, result=result)
    move_into(out, pieces)
    tidy_run_dir(run_dir, opts.run_folder, resumable=False)  # grow has no --resume
    return out
