"""Planning a growth run: resolve the source, target depth, layer map and token budget before any work.

:func:`resolve_growth` does every input check of ``lifecycle grow`` (source model, layer map, depth,
the G_stack growth plan and its budget) and returns a :class:`GrowthSetup`; the methods
(:mod:`.gstack`, :mod:`.layerwise`) then train and finish from it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from lifecycle.errors import LifecycleError
from lifecycle.methods.grow.options import GrowOptions


def tokens_per_step(opts: GrowOptions) -> int:
    return opts.train.micro_batch_size * opts.train.grad_accum * opts.block_size


def check_common(opts: GrowOptions) -> None:
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


class GrowthSetup:
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


def resolve_growth(opts: GrowOptions) -> GrowthSetup:
    from lifecycle.data import build_tokenizer, load_corpus
    from lifecycle.methods.grow.gstack import DEFAULT_FACTOR, growth_plan, layer_order, steps_for_tokens
    from lifecycle.model.adapter import adapter_for
    from lifecycle.model.presets import build_model, make_config

    check_common(opts)
    s = GrowthSetup()
    g = opts.factor if opts.factor is not None else DEFAULT_FACTOR
    tps = tokens_per_step(opts)
    if opts.model is not None:
        from lifecycle.model.io import load_model

        if opts.plan:  # the plan needs only the source's shape: built on the meta device, no weights read
            from lifecycle.model.inspect import inspect_model

            info = inspect_model(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
            s.model, s.parent, s.parent_lineage = _meta_model(info.config), info.source, info.lineage
        else:
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
            if s.target_layers == s.source_layers:
                rounding = f" (factor {opts.factor:g} × {s.source_layers} layers rounds to {s.target_layers})" if opts.factor else ""
                raise LifecycleError(f"target depth {s.target_layers} equals the source's {s.source_layers} layers{rounding}: "
                                     "growth must add layers")
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


def source_seen_tokens(opts: GrowOptions, s: GrowthSetup, data) -> tuple[int, str]:
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


def move_into(out: Path, pieces: dict[str, Path]) -> None:
    """Move finished intermediate checkpoints into the output (same filesystem: renames)."""
    for name, folder in pieces.items():
        if folder.is_dir():
            dest = out / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(dest, ignore_errors=True)
            os.replace(folder, dest)


def print_plan(plan) -> None:
    from rich.console import Console

    console = Console()
    console.print(
        "[bold]G_stack growth plan[/bold] (Du et al. 2024: log10(d) = 0.88·log10(N) + 163.27/log10(C) − 5.74)", soft_wrap=True
    )
    for line in plan.lines():
        console.print(line, highlight=False, soft_wrap=True)


def pack_data(opts: GrowOptions, s: GrowthSetup):
    from lifecycle.data import pack

    return pack(s.corpus, s.tokenizer, opts.block_size, val_fraction=opts.val_fraction, max_train_tokens=opts.max_train_tokens)


def grow_lineage(opts: GrowOptions, s: GrowthSetup, data, tokens_seen: int, growth: dict) -> dict:
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
