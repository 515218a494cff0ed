"""``lifecycle grow``: make a model deeper by G_stack stacking or layer-wise frozen-substrate growth.

Two starting points, like ``lifecycle train``:

* ``model``: a trained (small) checkpoint. G_stack stacks it and trains on for ``train.steps``;
  layer-wise growth freezes its embedding and layers and adds new layers stage by stage.
* ``config``: a *target* config and a token budget; the whole procedure runs from scratch. For
  G_stack: a small model of ``target/g`` layers is trained for ``d`` tokens (``growth_tokens``, or the
  paper's formula), stacked to the target depth, and trained on the rest of the budget. The budget
  defaults to ``train.steps`` steps of the target, so ``lifecycle train --config X train.steps=S`` is
  the from-scratch baseline for exactly the same number of tokens. For layer-wise growth: the first
  block is trained on the frozen substrate, then a block is added per stage.

``plan: true`` (``--plan``) prints the G_stack growth plan (d, the small model, the expected saving)
and writes nothing. The output checkpoint's lineage records the source, the method, the layer map
and every token seen, the small model's included; ``small/`` (G_stack from scratch) and
``stages/stage-N/`` (layer-wise) inside the output are checkpoints of the intermediate models.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from lifecycle.commands import CommandOptions, register
from lifecycle.commands.common import EvalAfter, default_run_dir, finish_run
from lifecycle.errors import LifecycleError
from lifecycle.train.engine import TrainConfig


class LayerwiseOptions(CommandOptions):
    """Settings of layer-wise growth (method: layerwise)."""

    layers_per_stage: int = Field(1, ge=1, description="layers added (and trained) per stage")
    embedding: Literal["model", "hashed"] = Field(
        "model", description="frozen substrate: the model's own embedding, or one hashed from the tokenizer's token strings"
    )
    head: Literal["train", "frozen"] = Field("train", description="train the LM head (untied from the embedding) or keep it frozen")
    new_layer_init: Literal["identity", "random"] = Field(
        "identity", description="identity: random layer with zeroed output projections (adding it changes nothing)"
    )
    lora_rank: int = Field(0, ge=0, description="LoRA rank on the old layers during each stage (0 = old layers frozen)")
    lora_alpha: float | None = Field(None, gt=0, description="LoRA alpha (default 2 × rank)")


class GrowOptions(CommandOptions):
    method: Literal["gstack", "layerwise"] = "gstack"
    model: str | None = Field(None, description="trained source checkpoint to grow (folder, Hub id, .gguf)")
    config: str | None = Field(None, description="target config to grow from scratch: micro, tiny, small or a .json")
    data: str = Field("shakespeare", description="data spec: built-in corpus, file, folder or hf:NAME")
    tokenizer: str = Field("bpe:4096", description="for --config: bpe:N (trained on the data) or a model spec")
    block_size: int = Field(256, ge=8)
    val_fraction: float = Field(0.05, ge=0, lt=1)
    max_train_tokens: int | None = Field(None, ge=1)
    output: str = Field(..., description="folder for the grown checkpoint")
    overwrite: bool = False
    plan: bool = Field(False, description="print the G_stack growth plan and exit; nothing is trained or written")
    target_layers: int | None = Field(None, ge=1, description="depth of the grown model")
    factor: float | None = Field(None, description="growth factor g (target = g × source depth); default 4")
    order: Literal["stack", "interleave"] = Field("stack", description="G_stack layer order: 0123 0123 or 0011 2233")
    layer_map: list[int] | None = Field(None, description="explicit source layer for every target layer: 0,1,2,3,0,1,2,3")
    budget_tokens: int | None = Field(None, ge=1, description="total token budget D (default: train.steps × tokens per step)")
    growth_tokens: int | None = Field(None, ge=1, description="d: tokens for the small model (default: the paper's formula)")
    small_lr: float | None = Field(None, gt=0, description="peak LR of the small model's phase (default train.lr)")
    skip_seen_tokens: bool = Field(True, description="skip the tokens the source already saw of this data")
    seen_tokens: int | None = Field(None, ge=0, description="tokens of this data the source saw (default: from its lineage)")
    allow_pickle: bool = False
    trust_remote_code: bool = False
    train: TrainConfig = Field(default_factory=TrainConfig)
    layerwise: LayerwiseOptions = Field(default_factory=LayerwiseOptions)
    eval: EvalAfter = Field(default_factory=EvalAfter)

    @field_validator("layer_map", mode="before")
    @classmethod
    def _parse_map(cls, value: Any) -> Any:
        from lifecycle.methods.grow.gstack import parse_layer_map

        return parse_layer_map(value)

    @model_validator(mode="after")
    def _one_source(self) -> "GrowOptions":
        if (self.model is None) == (self.config is None):
            raise ValueError("give exactly one of model (a trained source to grow) or config (grow from scratch)")
        return self


# --------------------------------------------------------------------------------------------------


def _tokens_per_step(opts: GrowOptions) -> int:
    return opts.train.micro_batch_size * opts.train.grad_accum * opts.block_size


def _check_common(opts: GrowOptions) -> None:
    if opts.factor is not None and opts.factor < 1:
        raise LifecycleError(f"growth factor must be at least 1, got {opts.factor:g}")
    if opts.method == "layerwise" and (opts.layer_map is not None or opts.order != "stack"):
        raise LifecycleError("layer_map and order apply to method gstack only (layer-wise growth adds new layers)")
    if opts.factor is not None and opts.target_layers is not None:
        raise LifecycleError("give either factor or target_layers, not both")


def _layer_params(model) -> list[int]:
    from lifecycle.model.adapter import adapter_for

    return [sum(p.numel() for p in layer.parameters()) for layer in adapter_for(model).layers]


def _meta_model(config):
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        return AutoModelForCausalLM.from_config(config)


class _Setup:
    """Everything resolved before any training or writing: models, data, layer map, plan."""

    model = None  # the model training starts from (small model or source)
    tokenizer = None
    corpus = None
    parent: str | None = None
    parent_lineage: dict = {}
    mapping: list[int] | None = None
    source_layers: int = 0
    target_layers: int = 0
    target_params: int = 0
    small_params: int = 0
    plan = None
    small_steps: int = 0
    grown_steps: int = 0
    stage_steps: int = 0


def _resolve(opts: GrowOptions) -> _Setup:
    from lifecycle.data import build_tokenizer, load_corpus
    from lifecycle.methods.grow.gstack import DEFAULT_FACTOR, growth_plan, layer_order, steps_for_tokens
    from lifecycle.model.adapter import adapter_for
    from lifecycle.model.presets import build_model, make_config

    _check_common(opts)
    s = _Setup()
    g = opts.factor if opts.factor is not None else DEFAULT_FACTOR
    tps = _tokens_per_step(opts)
    if opts.model is not None:
        from lifecycle.model.io import load_model

        loaded = load_model(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
        s.model, s.tokenizer, s.parent, s.parent_lineage = loaded.model, loaded.tokenizer, loaded.source, loaded.lineage
        s.source_layers = len(adapter_for(s.model).layers)
        per_layer = _layer_params(s.model)
        s.small_params = adapter_for(s.model).num_parameters()
        if opts.method == "gstack":
            s.mapping = layer_order(
                s.source_layers, target_layers=opts.target_layers, factor=opts.factor, order=opts.order, layer_map=opts.layer_map
            )
            s.target_layers = len(s.mapping)
            s.target_params = s.small_params - sum(per_layer) + sum(per_layer[i] for i in s.mapping)
        else:
            s.target_layers = opts.target_layers or int(round(g * s.source_layers))
            if s.target_layers <= s.source_layers:
                raise LifecycleError(f"target depth {s.target_layers} must exceed the source's {s.source_layers} layers")
            s.target_params = s.small_params + (s.target_layers - s.source_layers) * per_layer[-1]
        s.corpus = None if opts.plan else load_corpus(opts.data)
        s.grown_steps = opts.train.steps
    else:
        s.corpus = load_corpus(opts.data)
        s.tokenizer = build_tokenizer(opts.tokenizer, s.corpus)
        target_cfg = make_config(opts.config, vocab_size=len(s.tokenizer), eos_token_id=s.tokenizer.eos_token_id)
        if opts.target_layers is not None:
            target_cfg.num_hidden_layers = opts.target_layers
            if getattr(target_cfg, "layer_types", None):
                target_cfg.layer_types = [target_cfg.layer_types[0]] * opts.target_layers
        if opts.block_size > target_cfg.max_position_embeddings:
            raise LifecycleError(
                f"block size {opts.block_size} exceeds the model's max_position_embeddings {target_cfg.max_position_embeddings}"
            )
        s.target_layers = target_cfg.num_hidden_layers
        s.target_params = adapter_for(_meta_model(target_cfg)).num_parameters()
        if opts.method == "gstack":
            if opts.layer_map is not None:
                s.source_layers = max(opts.layer_map) + 1
            else:
                s.source_layers = max(1, int(round(s.target_layers / g)))
            s.mapping = layer_order(s.source_layers, target_layers=s.target_layers, order=opts.order, layer_map=opts.layer_map)
        else:
            s.source_layers = opts.layerwise.layers_per_stage
            if (s.target_layers - s.source_layers) % opts.layerwise.layers_per_stage:
                raise LifecycleError(
                    f"target depth {s.target_layers} is not a multiple of layers_per_stage {opts.layerwise.layers_per_stage}"
                )
        small_cfg = make_config(
            opts.config,
            vocab_size=len(s.tokenizer),
            eos_token_id=s.tokenizer.eos_token_id,
            num_hidden_layers=s.source_layers,
        )
        s.small_params = adapter_for(_meta_model(small_cfg)).num_parameters()
        if not opts.plan:
            s.model = build_model(small_cfg, seed=opts.train.seed)

    budget = opts.budget_tokens or opts.train.steps * tps
    if opts.method == "gstack" and (opts.plan or opts.config is not None):
        s.plan = growth_plan(
            s.target_params,
            budget_tokens=budget,
            g=s.target_layers / s.source_layers,
            target_layers=s.target_layers,
            small_params=s.small_params,
            growth_tokens_override=opts.growth_tokens,
        )
        if opts.config is not None:
            s.small_steps = steps_for_tokens(s.plan.growth_tokens, tps)
            s.grown_steps = max(0, budget // tps - s.small_steps)
            if s.grown_steps == 0 and not opts.plan:
                raise LifecycleError(
                    f"budget of {budget:,} tokens leaves no steps after the small model's {s.small_steps * tps:,} tokens"
                )
    if opts.method == "layerwise":
        stages = (s.target_layers - s.source_layers) // opts.layerwise.layers_per_stage + (1 if opts.config else 0)
        s.stage_steps = max(1, budget // tps // stages) if opts.budget_tokens else opts.train.steps
    return s


def _source_seen_tokens(opts: GrowOptions, s: _Setup, data) -> tuple[int, str]:
    """Tokens of *this* data stream the source already consumed, and why that number."""
    if opts.seen_tokens is not None:
        return opts.seen_tokens, "given"
    if not opts.skip_seen_tokens or not s.parent_lineage:
        return 0, "not skipped" if not opts.skip_seen_tokens else "source has no lineage"
    lineage = s.parent_lineage
    same_data = (lineage.get("data") or {}).get("fingerprint") == data.fingerprint
    same_seed = lineage.get("seed") == opts.train.seed
    if same_data and same_seed and lineage.get("tokens_seen"):
        return int(lineage["tokens_seen"]), "source lineage (same data, block size and seed)"
    return 0, "source trained on other data or seed"


def _move_into(out: Path, pieces: dict[str, Path]) -> None:
    """Move finished intermediate checkpoints into the output (same filesystem: renames)."""
    for name, folder in pieces.items():
        if folder.is_dir():
            dest = out / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(folder, dest)


def _print_plan(plan) -> None:
    from rich.console import Console

    console = Console()
    console.print(
        "[bold]G_stack growth plan[/bold] (Du et al. 2024: log10(d) = 0.88·log10(N) + 163.27/log10(C) − 5.74)", soft_wrap=True
    )
    for line in plan.lines():
        console.print(line, highlight=False, soft_wrap=True)


@register("grow", GrowOptions, help="Grow a model deeper: G_stack layer stacking or layer-wise growth on a frozen substrate.")
def run_grow(opts: GrowOptions) -> Path | None:
    from lifecycle.model.io import prepare_output_dir

    if opts.plan and opts.method != "gstack":
        raise LifecycleError("--plan prints the G_stack growth plan; use it with method gstack")
    if not opts.plan and Path(opts.output).expanduser().exists() and not opts.overwrite:
        raise LifecycleError(f"output folder {Path(opts.output).expanduser().resolve()} exists (pass --overwrite to replace it)")
    s = _resolve(opts)  # every input check (source, layer map, plan budget) happens here, before any write
    if opts.plan:
        if s.plan is None:  # pragma: no cover - _resolve always plans for gstack
            raise LifecycleError("no plan")
        _print_plan(s.plan)
        return None
    out = prepare_output_dir(opts.output, opts.overwrite)
    if opts.method == "gstack":
        return _run_gstack(opts, s, out)
    return _run_layerwise(opts, s, out)


def _pack(opts: GrowOptions, s: _Setup):
    from lifecycle.data import pack

    return pack(s.corpus, s.tokenizer, opts.block_size, val_fraction=opts.val_fraction, max_train_tokens=opts.max_train_tokens)


def _lineage(opts: GrowOptions, s: _Setup, data, tokens_seen: int, growth: dict) -> dict:
    from lifecycle.model.card import new_lineage

    lineage = new_lineage(
        command="grow",
        method=opts.method,
        parents=[s.parent] if s.parent else [],
        parent_lineages=[s.parent_lineage],
        options=opts.model_dump(mode="json"),
        seed=opts.train.seed,
        data=data.describe(),
        tokens_seen=tokens_seen,
        relation="finetune" if s.parent else None,
    )
    lineage["growth"] = growth
    return lineage


def _run_gstack(opts: GrowOptions, s: _Setup, out: Path) -> Path:
    from lifecycle.methods.grow.gstack import run_gstack
    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import save_checkpoint
    from lifecycle.train.engine import TrainResult

    data = _pack(opts, s)
    run_dir = default_run_dir(out)
    pieces: dict[str, Path] = {}
    if opts.config is not None:
        small_cfg = opts.train.model_copy(update={"steps": s.small_steps, "lr": opts.small_lr or opts.train.lr})
        grown_cfg = opts.train.model_copy(update={"steps": s.grown_steps})
        seen, seen_why = 0, "the small model's own tokens (phase 1)"
    else:
        small_cfg = None
        grown_cfg = opts.train
        seen, seen_why = _source_seen_tokens(opts, s, data)

    from lifecycle.train.engine import train as engine_train

    def train_fn(model, data_, cfg, run_dir_, **kw):
        result = engine_train(model, data_, cfg, run_dir_, **kw)
        if Path(run_dir_).name == "small":
            # Save the small model before it is stacked (stacking edits it in place).
            lineage = new_lineage(
                command="grow", method="gstack-small", options=opts.model_dump(mode="json"),
                seed=cfg.seed, data=data.describe(), tokens_seen=result.tokens_seen,
            )
            lineage["growth"] = {"role": "small model of G_stack", "layers": s.source_layers}
            pieces["small"] = save_checkpoint(result.model, s.tokenizer, run_dir / "small-model", lineage=lineage, overwrite=True)
        return result

    run = run_gstack(
        small_model=s.model,
        data=data,
        grown_cfg=grown_cfg,
        small_cfg=small_cfg,
        run_dir=run_dir,
        layer_map=s.mapping,
        seen_tokens=seen if opts.skip_seen_tokens else 0,
        train_fn=train_fn,
    )
    source_tokens = int((s.parent_lineage or {}).get("tokens_seen") or 0)
    growth = {
        "method": "gstack",
        "paper": "Du et al. 2024, Stacking Your Transformers (arXiv:2405.15319)",
        "source": s.parent or "small model trained from scratch (small/)",
        "source_layers": s.source_layers,
        "target_layers": s.target_layers,
        "order": opts.order if opts.layer_map is None else "layer_map",
        "layer_map": run.layer_map,
        "small_params": run.small_params,
        "grown_params": run.grown_params,
        "small_tokens": run.small_tokens if opts.config else source_tokens,
        "grown_tokens": run.grown_tokens,
        "skip_tokens": run.skip_tokens,
        "skip_reason": seen_why,
        "train_flops": run.train_flops + (6.0 * run.small_params * source_tokens if opts.model else 0.0),
    }
    if s.plan is not None:
        growth["plan"] = s.plan.as_dict()
    tokens_seen = run.tokens_seen + (source_tokens if opts.model else 0)
    lineage = _lineage(opts, s, data, tokens_seen, growth)
    last = run.grown_result or run.small_result
    result = None
    if last is not None:
        result = TrainResult(
            model=run.model,
            steps=(run.small_result.steps if run.small_result else 0) + (run.grown_result.steps if run.grown_result else 0),
            tokens_seen=run.tokens_seen,
            final_train_loss=last.final_train_loss,
            final_val_loss=last.final_val_loss,
            history=run.history,
            seconds=(run.small_result.seconds if run.small_result else 0) + (run.grown_result.seconds if run.grown_result else 0),
        )
    finish_run(run.model, s.tokenizer, out, lineage, overwrite=opts.overwrite, eval_after=opts.eval, result=result)
    _move_into(out, {"small": pieces["small"]} if "small" in pieces else {})
    return out


def _run_layerwise(opts: GrowOptions, s: _Setup, out: Path) -> Path:
    from lifecycle.methods.grow.layerwise import freeze_substrate, grow_layerwise
    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import save_checkpoint
    from lifecycle.train.engine import TrainResult

    lw = opts.layerwise
    data = _pack(opts, s)
    run_dir = default_run_dir(out)
    seen, seen_why = (0, "from scratch") if opts.config else _source_seen_tokens(opts, s, data)
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
        "layers_per_stage": lw.layers_per_stage,
        "embedding": lw.embedding,
        "head": lw.head,
        "new_layer_init": lw.new_layer_init,
        "lora_rank": lw.lora_rank,
        "skip_tokens": seen,
        "skip_reason": seen_why,
        "source_tokens": source_tokens,
        "stages": stage_rows,
        "train_flops": run.train_flops,
    }
    lineage = _lineage(opts, s, data, run.tokens_seen + source_tokens, growth)
    last = run.stages[-1]
    result = TrainResult(
        model=run.model,
        steps=s.stage_steps * len(run.stages),
        tokens_seen=run.tokens_seen,
        final_train_loss=last.final_train_loss,
        final_val_loss=last.final_val_loss,
        history=run.history,
        seconds=sum(st.seconds for st in run.stages),
    )
    finish_run(run.model, s.tokenizer, out, lineage, overwrite=opts.overwrite, eval_after=opts.eval, result=result)
    _move_into(out, pieces)
    return out
