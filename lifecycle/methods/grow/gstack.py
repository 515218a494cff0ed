"""G_stack: grow a trained small model into a deeper one by stacking its layers.

Du et al. 2024, "Stacking Your Transformers: A Closer Look at Model Growth for Efficient LLM
Pre-Training" (NeurIPS 2024, arXiv:2405.15319); reference code tongxuluo/prts,
``prts_lit/scaling/stackingpt.py``. The paper's recipe, and where this file implements each step:

1. Train a small model of ``L`` layers for ``d`` tokens (:func:`run_gstack`, phase 1).
2. Grow it depthwise by a factor ``g`` (the paper fixes ``g = 4``): block ``i`` of the grown model is a
   copy of block ``stacking_list[i]`` of the small one, with ``stacking_list = [0..L-1] * g`` — the
   whole stack repeated, ``0123 0123 0123 0123``, not each layer repeated. Token embedding, final
   norm and LM head are copied unchanged; width is unchanged; no rescaling, no noise
   (:func:`layer_order`, :func:`stack_layers`).
   Growth point: the small model is taken mid-schedule, at its LR peak, not annealed (prts resumes
   from iteration 5,000 of a 300k-step schedule); :func:`phase_configs`, ``growth_point="peak"``.
3. Continue training the grown model with a *fresh* AdamW (no optimizer state is inherited) and a
   *restarted* warmup + cosine schedule, on the data the small model has not seen yet: the
   reference run resumes the data loader at the small model's last batch (``--resume_id``), i.e.
   it skips the ``d`` tokens already consumed (:func:`run_gstack`, phase 2, ``skip_tokens``). prts
   runs this phase at a lower peak LR than the small model's (3e-4 vs 1e-3): ``grown_lr``.
4. Growth timing (the paper's Eq. for ``d``, README "guidelines"): for a target of ``N`` parameters
   and a compute budget of ``C`` FLOPs,
   ``log10(d) = 0.88·log10(N) + 163.27/log10(C) − 5.74`` (:func:`growth_tokens`, :func:`growth_plan`).

Extensions beyond the paper (documented choices, not from the reference code):

* ``order="interleave"`` repeats each layer in place (``0000 1111 ...``), the other depthwise
  operator the paper compares against.
* A target depth that is not a multiple of ``L``: ``order="stack"`` stacks ``T // L`` whole copies
  and then the *top* ``T % L`` layers of one more copy (``L=4, T=10 → 0123 0123 23``), so the grown
  model still ends with the small model's last layer, the one its final norm and head were trained
  on (cutting the sequence instead, ``... 01``, would feed the head from layer 1). With
  ``order="interleave"`` target position ``j`` takes layer ``floor(j·L/T)``, which spreads the extra
  copies evenly and keeps the layers in order.
* An explicit ``layer_map`` gives the source layer of every target position.

The surgery itself is done by :class:`lifecycle.model.adapter.DecoderAdapter`, so GQA (layers are
copied whole, the KV head count is unchanged), tied embeddings (the head stays the embedding),
``self_attn.layer_idx`` (re-indexed 0..T-1, or the KV cache of two copies would collide),
``num_hidden_layers`` and per-layer config fields (``layer_types`` follows each copy's source,
``max_window_layers``) are right for every LLaMA-family model lifecycle supports.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.methods.registry import register_method
from lifecycle.model.adapter import adapter_for

Order = Literal["stack", "interleave"]

DEFAULT_FACTOR = 4  # the paper: "we fix g = 4"

# Constants of the growth-timing fit (paper guideline, tongxuluo/prts README).
D_COEF_N = 0.88
D_COEF_C = 163.27
D_CONST = -5.74
# The fit was made on runs of roughly 1e20..1e23 FLOPs (410M..7B parameters, up to 750B tokens).
FIT_LOG10_C_RANGE = (19.0, 24.0)
# Paper headline used as the outside reference for the expected saving: the 7B G_stack model reaches
# the loss of a 7B model trained on 300B tokens after 194B tokens ("54.6% speedup").
PAPER_SPEEDUP = 300 / 194


# ------------------------------------------------------------------------------------------------
# step 2: which source layer goes where


def layer_order(
    num_source: int,
    *,
    target_layers: int | None = None,
    factor: float | None = None,
    order: Order = "stack",
    layer_map: Sequence[int] | None = None,
) -> list[int]:
    """Source layer index for every layer of the grown model (the paper's ``stacking_list``).

    Exactly one of ``layer_map``, ``target_layers`` and ``factor`` decides the depth (``factor``
    defaults to 4). Raises :class:`LifecycleError` for a factor below 1, a target shallower than the
    source, or a map naming a layer the source lacks.
    """
    if num_source < 1:
        raise LifecycleError("the source model has no decoder layers")
    if layer_map is not None:
        mapping = [int(i) for i in layer_map]
        if not mapping:
            raise LifecycleError("layer map is empty")
        bad = [i for i in mapping if not 0 <= i < num_source]
        if bad:
            raise LifecycleError(
                f"layer map names layer {bad[0]}, but the source has {num_source} layers (0..{num_source - 1})"
            )
        if target_layers is not None and target_layers != len(mapping):
            raise LifecycleError(f"layer map has {len(mapping)} entries but target_layers is {target_layers}")
        return mapping
    if factor is not None and target_layers is not None:
        raise LifecycleError("give either a growth factor or a target depth, not both")
    if target_layers is None:
        factor = DEFAULT_FACTOR if factor is None else factor
        if not math.isfinite(factor) or factor < 1:
            raise LifecycleError(f"growth factor must be at least 1, got {factor}")
        target_layers = int(round(factor * num_source))
    if target_layers < num_source:
        raise LifecycleError(
            f"target depth {target_layers} is smaller than the source's {num_source} layers (growth only adds layers)"
        )
    if order == "stack":
        whole, rest = divmod(target_layers, num_source)
        return list(range(num_source)) * whole + list(range(num_source - rest, num_source))
    if order == "interleave":
        return [j * num_source // target_layers for j in range(target_layers)]
    raise LifecycleError(f"unknown layer order '{order}' (use stack or interleave)")


def parse_layer_map(value: Any) -> list[int] | None:
    """``"0,1,2,3,0,1"`` / ``[0, 1, ...]`` / None → list of ints (one-line error otherwise)."""
    if value is None or value == "":
        return None
    items = value.split(",") if isinstance(value, str) else list(value) if isinstance(value, (list, tuple)) else [value]
    try:
        return [int(str(i).strip()) for i in items if str(i).strip() != ""]
    except ValueError:
        raise LifecycleError(f"layer map must be comma-separated layer numbers, got {value!r}") from None


def stack_layers(
    model: nn.Module,
    target_layers: int | None = None,
    *,
    factor: float | None = None,
    order: Order = "stack",
    layer_map: Sequence[int] | None = None,
) -> nn.Module:
    """Grow ``model`` in place to the depth given by :func:`layer_order` and return it.

    Every new layer is a deep copy of its source layer; embeddings, final norm and head are left as
    they are (tied ones stay tied). ``layer_idx`` is re-indexed and the config updated by
    :meth:`DecoderAdapter.set_layers`. Call :func:`layer_order` with the same arguments to get the
    stacking list for a lineage record.
    """
    adapter = adapter_for(model)
    mapping = layer_order(len(adapter.layers), target_layers=target_layers, factor=factor, order=order, layer_map=layer_map)
    # Copy every source layer once per use; the originals are dropped when the stack is replaced.
    adapter.set_layers([adapter.copy_layer(i) for i in mapping])
    adapter.retie_embeddings()
    return model


# ------------------------------------------------------------------------------------------------
# step 4: growth timing


def flops_budget(num_params: float, tokens: float) -> float:
    """Training compute ``C ≈ 6·N·D`` (forward 2N + backward 4N FLOPs per token)."""
    return 6.0 * float(num_params) * float(tokens)


def growth_tokens(target_params: float, compute_flops: float) -> float:
    """The paper's growth timing ``d`` in tokens: ``log10(d) = 0.88·log10(N) + 163.27/log10(C) − 5.74``.

    Worked example (prts README): Llama2-7B, N = 7e9 trained on D = 2T tokens, so
    C = 6·N·D = 8.4e22 FLOPs, gives d ≈ 11.11B tokens.
    """
    if target_params <= 1 or compute_flops <= 10:
        raise LifecycleError("growth plan needs a positive parameter count and a compute budget above 10 FLOPs")
    log_d = D_COEF_N * math.log10(target_params) + D_COEF_C / math.log10(compute_flops) + D_CONST
    return 10.0**log_d


@dataclass
class GrowthPlan:
    """What the G_stack guideline says for one target, plus the cost accounting of following it."""

    target_params: int
    target_layers: int | None
    budget_tokens: float
    compute_flops: float
    growth_tokens: float  # d: tokens for the small model
    growth_tokens_source: str  # "formula" or "given"
    g: float
    small_layers: int | None
    small_params: int
    grown_tokens: float  # D - d, trained after stacking
    plan_flops: float  # 6·N_small·d + 6·N·(D - d)
    flops_saved_fraction: float  # 1 - plan_flops / C: compute saved at equal tokens
    paper_speedup: float = PAPER_SPEEDUP
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return asdict(self)

    def lines(self) -> list[str]:
        """Human-readable plan, one fact per line."""
        out = [
            f"target: {self.target_params / 1e6:.3f}M parameters"
            + (f", {self.target_layers} layers" if self.target_layers else ""),
            f"budget: D = {self.budget_tokens:,.0f} tokens, C = 6·N·D = {self.compute_flops:.3e} FLOPs",
            f"growth factor g = {self.g:g}; small model: "
            + (f"{self.small_layers} layers, " if self.small_layers else "")
            + f"{self.small_params / 1e6:.3f}M parameters",
            f"d = {self.growth_tokens:,.0f} tokens for the small model ({self.growth_tokens_source}; "
            f"{100 * self.growth_tokens / self.budget_tokens:.1f}% of D), then {self.grown_tokens:,.0f} tokens after stacking",
            f"compute: {self.plan_flops:.3e} FLOPs, {100 * self.flops_saved_fraction:.1f}% less than training the target "
            "for D tokens (the first d tokens run on the small model)",
            f"expected saving (paper, 7B/300B tokens: same loss after 194B tokens, {self.paper_speedup:.3f}x): the target's "
            f"from-scratch loss at D after about {self.budget_tokens / self.paper_speedup:,.0f} tokens; "
            "an outside reference, not a prediction for this size",
        ]
        out.extend(f"warning: {w}" for w in self.warnings)
        return out


def growth_plan(
    target_params: int,
    compute_flops: float | None = None,
    g: float = DEFAULT_FACTOR,
    *,
    budget_tokens: float | None = None,
    target_layers: int | None = None,
    small_params: int | None = None,
    growth_tokens_override: float | None = None,
) -> GrowthPlan:
    """The G_stack plan for a target of ``target_params`` parameters.

    Give the budget as ``compute_flops`` (C) or ``budget_tokens`` (D, then C = 6·N·D). ``small_params``
    is the exact size of the small model when the caller knows its config; otherwise it is estimated
    as ``N / g`` (embeddings are not divided by ``g``, so this under-estimates slightly). ``d`` comes
    from :func:`growth_tokens` unless ``growth_tokens_override`` is given. A budget smaller than ``d``
    is an error: there would be nothing left to train after growing.
    """
    if g < 1:
        raise LifecycleError(f"growth factor must be at least 1, got {g}")
    if compute_flops is None and budget_tokens is None:
        raise LifecycleError("a growth plan needs a budget: budget_tokens (D) or compute FLOPs (C)")
    if compute_flops is None:
        compute_flops = flops_budget(target_params, budget_tokens)
    if budget_tokens is None:
        budget_tokens = compute_flops / (6.0 * target_params)
    warnings: list[str] = []
    if growth_tokens_override is not None:
        d, source = float(growth_tokens_override), "given"
    else:
        d, source = growth_tokens(target_params, compute_flops), "formula"
        lo, hi = FIT_LOG10_C_RANGE
        if not lo <= math.log10(compute_flops) <= hi:
            warnings.append(
                f"C = {compute_flops:.2e} FLOPs is outside the range the formula was fitted on (1e{lo:g}..1e{hi:g}); "
                "at small C its 163.27/log10(C) term explodes, so give d yourself (growth_tokens)"
            )
    if d > budget_tokens:
        hint = (
            f"; the formula was fitted at 1e{FIT_LOG10_C_RANGE[0]:g}..1e{FIT_LOG10_C_RANGE[1]:g} FLOPs and C is {compute_flops:.1e}"
            if warnings else ""
        )
        raise LifecycleError(
            f"budget of {budget_tokens:,.0f} tokens is smaller than the growth point d = {d:,.0f} tokens ({source}{hint}); "
            "raise the budget or set growth_tokens"
        )
    small = int(small_params) if small_params is not None else int(round(target_params / g))
    small_layers = max(1, int(round(target_layers / g))) if target_layers else None
    plan_flops = flops_budget(small, d) + flops_budget(target_params, budget_tokens - d)
    return GrowthPlan(
        target_params=int(target_params),
        target_layers=target_layers,
        budget_tokens=float(budget_tokens),
        compute_flops=float(compute_flops),
        growth_tokens=d,
        growth_tokens_source=source,
        g=g,
        small_layers=small_layers,
        small_params=small,
        grown_tokens=float(budget_tokens - d),
        plan_flops=plan_flops,
        flops_saved_fraction=1.0 - plan_flops / compute_flops,
        warnings=warnings,
    )


# ------------------------------------------------------------------------------------------------
# steps 1-3: the whole procedure on the shared engine


def count_parameters(model: nn.Module) -> int:
    return adapter_for(model).num_parameters()


def steps_for_tokens(tokens: float, tokens_per_step: int) -> int:
    """Optimizer steps that consume at least ``tokens`` (never 0 for a positive token count)."""
    return max(1, math.ceil(tokens / tokens_per_step)) if tokens > 0 else 0


@dataclass
class GStackRun:
    """Everything :func:`run_gstack` did, for the command's lineage and for the bench."""

    model: nn.Module
    small_result: Any  # TrainResult of phase 1 (None when starting from a trained small model)
    grown_result: Any  # TrainResult of phase 2
    layer_map: list[int]
    small_params: int
    grown_params: int
    small_tokens: int
    grown_tokens: int
    skip_tokens: int
    history: list[dict]  # phase 1 then phase 2, tokens counted from the start of phase 1

    @property
    def tokens_seen(self) -> int:
        return self.small_tokens + self.grown_tokens

    @property
    def train_flops(self) -> float:
        return flops_budget(self.small_params, self.small_tokens) + flops_budget(self.grown_params, self.grown_tokens)


GrowthPoint = Literal["peak", "annealed"]


def phase_configs(
    train_cfg,
    small_steps: int,
    grown_steps: int,
    *,
    growth_point: GrowthPoint = "peak",
    small_lr: float | None = None,
    grown_lr: float | None = None,
):
    """The two phases' :class:`TrainConfig` from one base config: ``(small_cfg, grown_cfg)``.

    ``growth_point="peak"`` (default) follows prts: the small model is a checkpoint taken early in a
    long schedule (``base_model.sh``: warmup 3,000 of 300,000 cosine steps; ``g_stack.sh`` resumes
    from iteration 5,000, where the cosine is still at 99.99% of its 1e-3 peak), so it is stacked
    *without* an anneal. Here the small phase warms up and then holds its peak LR (schedule
    ``constant``), which is that situation exactly whatever ``d/D`` is; a cosine over the whole
    budget, cut at ``d``, would already have decayed to 87% of the peak at ``d = D/4``.
    ``growth_point="annealed"`` is the earlier lifecycle default, kept as an option: the small phase
    runs its own full warmup + decay to ``min_lr_ratio`` over its ``d`` tokens, so the small model
    is a finished run (its loss is lower at the moment of stacking; the grown phase then restarts
    the LR at the peak anyway).

    LRs: the small phase at ``small_lr`` (default ``train_cfg.lr``); the grown phase at ``grown_lr``
    (default ``train_cfg.lr``: the target's own LR, the one its from-scratch baseline uses). prts
    lowers the grown phase's peak to 0.3× the small model's (1e-3 → 3e-4, ``g_stack.sh``), which is
    ``grown_lr = 0.3 * small_lr`` here. The grown phase always gets a restarted warmup and the base
    config's schedule over its own steps.
    """
    if growth_point not in ("peak", "annealed"):
        raise LifecycleError(f"unknown growth point '{growth_point}' (use peak or annealed)")
    small_update: dict[str, Any] = {"steps": small_steps, "lr": small_lr or train_cfg.lr}
    if growth_point == "peak":
        small_update.update(schedule="constant", step_offset=0, schedule_steps=None)
    small_cfg = train_cfg.model_copy(update=small_update)
    grown_cfg = train_cfg.model_copy(update={"steps": grown_steps, "lr": grown_lr or train_cfg.lr})
    return small_cfg, grown_cfg


def joined_history(small_history: list[dict], grown_history: list[dict], small_tokens: int) -> list[dict]:
    """One loss curve over both phases, tokens counted from the start of the small model's training."""
    rows = [dict(r, phase="small") for r in small_history]
    rows += [dict(r, phase="grown", tokens=r["tokens"] + small_tokens) for r in grown_history]
    return rows


def run_gstack(
    *,
    small_model: nn.Module,
    data,
    grown_cfg,
    run_dir: str | Path,
    small_cfg=None,
    target_layers: int | None = None,
    factor: float | None = None,
    order: Order = "stack",
    layer_map: Sequence[int] | None = None,
    seen_tokens: int = 0,
    train_fn: Callable | None = None,
    on_small_trained: Callable | None = None,
    progress: bool = True,
) -> GStackRun:
    """The G_stack procedure on the shared training engine.

    Phase 1 (only when ``small_cfg`` is given): train ``small_model`` from its current weights for
    ``small_cfg.steps`` steps. Phase 2: stack it (:func:`stack_layers`) and train the grown model with
    ``grown_cfg``: :func:`lifecycle.train.engine.train` builds a new AdamW and runs a new warmup +
    cosine schedule over ``grown_cfg.steps``, so nothing of the small run's optimizer carries over.
    The data stream skips the tokens the small model consumed (``skip_tokens``, the paper's
    ``--resume_id``); with the same seed and data this is exactly where phase 1 stopped. When the
    small model was trained elsewhere, ``seen_tokens`` says how many tokens of this data it saw.
    ``on_small_trained(result)`` is called after phase 1, before stacking edits the small model in place.
    """
    from lifecycle.train.engine import train

    train_fn = train_fn or train
    run_dir = Path(run_dir)
    small_result = None
    small_tokens = 0
    small_history: list[dict] = []
    # The stacking list first, so a bad map or factor fails before any training.
    num_source = len(adapter_for(small_model).layers)
    mapping = layer_order(num_source, target_layers=target_layers, factor=factor, order=order, layer_map=layer_map)
    if small_cfg is not None and small_cfg.steps > 0:
        small_result = train_fn(small_model, data, small_cfg, run_dir / "small", description="G_stack small", progress=progress)
        small_model = small_result.model
        small_tokens = small_result.tokens_seen
        small_history = small_result.history
        if on_small_trained is not None:
            on_small_trained(small_result)
    small_params = count_parameters(small_model)
    grown = stack_layers(small_model, layer_map=mapping)
    skip = small_tokens + seen_tokens
    cfg = grown_cfg.model_copy(update={"skip_tokens": skip})
    grown_result = None
    grown_tokens = 0
    grown_history: list[dict] = []
    if cfg.steps > 0:
        grown_result = train_fn(grown, data, cfg, run_dir / "grown", description="G_stack grown", progress=progress)
        grown = grown_result.model
        grown_tokens = grown_result.tokens_seen
        grown_history = grown_result.history
    return GStackRun(
        model=grown,
        small_result=small_result,
        grown_result=grown_result,
        layer_map=mapping,
        small_params=small_params,
        grown_params=count_parameters(grown),
        small_tokens=small_tokens,
        grown_tokens=grown_tokens,
        skip_tokens=skip,
        history=joined_history(small_history, grown_history, small_tokens),
    )


@register_method("grow", "gstack", paper="Du et al. 2024, Stacking Your Transformers (NeurIPS 2024, arXiv:2405.15319)",
                 summary="train a small model, stack its layers g times, train on", aliases=("g_stack", "stack"))
def grow_gstack(opts: Any, s: Any, out: Path) -> Path:
    """The ``grow`` method ``gstack``: (small phase,) stack, train, finish; ``s`` is a planner.GrowthSetup."""
    from lifecycle.finish import default_run_dir, finish_run, tidy_run_dir
    from lifecycle.methods.grow.planner import grow_lineage, move_into, pack_data, source_seen_tokens
    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import save_checkpoint
    from lifecycle.train.engine import TrainResult

    data = pack_data(opts, s)
    run_dir = default_run_dir(out)
    pieces: dict[str, Path] = {}
    if opts.config is not None:
        small_cfg, grown_cfg = phase_configs(opts.train, s.small_steps, s.grown_steps, growth_point=opts.growth_point,
                                             small_lr=opts.small_lr, grown_lr=opts.grown_lr)
        seen, seen_why = 0, "the small model's own tokens (phase 1)"
    else:
        small_cfg = None
        grown_cfg = opts.train.model_copy(update={"lr": opts.grown_lr or opts.train.lr})
        seen, seen_why = source_seen_tokens(opts, s, data)

    def save_small(result: Any) -> None:
        # Saved before stacking, which edits the small model in place.
        lineage = new_lineage(
            command="grow", method="gstack-small", options=opts.model_dump(mode="json"),
            seed=small_cfg.seed, data=data.describe(), tokens_seen=result.tokens_seen,
        )
        lineage["growth"] = {"role": "small model of G_stack", "layers": s.source_layers}
        pieces["small"] = save_checkpoint(result.model, s.tokenizer, run_dir / "small-model", lineage=lineage, overwrite=True)

    run = run_gstack(
        small_model=s.model,
        data=data,
        grown_cfg=grown_cfg,
        small_cfg=small_cfg,
        run_dir=run_dir,
        layer_map=s.mapping,
        seen_tokens=seen if opts.skip_seen_tokens else 0,
        on_small_trained=save_small,
    )
    source_tokens = int((s.parent_lineage or {}).get("tokens_seen") or 0)
    growth = {
        "method": "gstack",
        "paper": "Du et al. 2024, Stacking Your Transformers (arXiv:2405.15319)",
        "source": s.parent or "small model trained from scratch (small/)",
        "source_layers": s.source_layers,
        "target_layers": s.target_layers,
        "factor": round(s.target_layers / s.source_layers, 4),
        "factor_given": opts.factor,
        "order": opts.order if opts.layer_map is None else "layer_map",
        "layer_map": run.layer_map,
        "small_params": run.small_params,
        "grown_params": run.grown_params,
        "small_tokens": run.small_tokens if opts.config else source_tokens,
        "grown_tokens": run.grown_tokens,
        "skip_tokens": run.skip_tokens,
        "skip_reason": seen_why,
        "growth_point": opts.growth_point if opts.config else "given source",
        "small_lr": small_cfg.lr if small_cfg is not None else None,
        "grown_lr": grown_cfg.lr,
        "train_flops": run.train_flops + (6.0 * run.small_params * source_tokens if opts.model else 0.0),
    }
    if s.plan is not None:
        growth["plan"] = s.plan.as_dict()
    tokens_seen = run.tokens_seen + (source_tokens if opts.model else 0)
    lineage = grow_lineage(opts, s, data, tokens_seen, growth)
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
    move_into(out, {"small": pieces["small"]} if "small" in pieces else {})
    tidy_run_dir(run_dir, opts.run_folder, resumable=False)  # grow has no --resume
    return out
