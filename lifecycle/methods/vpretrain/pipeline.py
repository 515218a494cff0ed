"""The vpretrain pipeline every method runs in: data, feedback, LoRA, the method's hooks, the engine.

A vpretrain method is registered with :func:`lifecycle.methods.registry.register_method`
(``"vpretrain"``) and called as ``run(ctx: VPretrainContext) -> VPretrainHooks | None``: it returns the
hooks that shape the learner's targets (``None`` for the plain next-token loss). Everything else is
shared, so the arms of a comparison differ only in their targets: same data order, same steps, same
tokens (equal learner budget, as the paper's v1 compares them).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from torch import nn

from lifecycle.errors import LifecycleError
from lifecycle.methods.registry import get_method
from lifecycle.methods.vpretrain.options import VPretrainOptions



def is_supervised_spec(spec: str, data_format: str = "auto") -> bool:
    """Prompt/completion data (loss on completions) or plain text (packed blocks)?"""
    if data_format != "auto":
        return data_format == "supervised"
    head = spec.rpartition("#")[0] if "#" in spec and "=" in spec.rpartition("#")[2] else spec
    path = Path(head).expanduser()
    return head == "gsm8k" or head.endswith(".jsonl") or (path.is_dir() and (path / "train.jsonl").is_file())


def load_stream(opts: VPretrainOptions, tokenizer: Any, feedback: Any = None) -> Any:
    """The pretraining stream in the engine's batch protocol: a prompt/completion stream loses the
    feedback examples (``exclude_feedback``) and gains the general corpus ``mix``."""
    if is_supervised_spec(opts.data, opts.data_format):
        from lifecycle.data import load_supervised
        from lifecycle.methods.vpretrain.mixing import drop_feedback_examples, mix_general_corpus

        data = load_supervised(opts.data, tokenizer, opts.block_size, val_fraction=opts.val_fraction)
        if feedback is not None and opts.exclude_feedback:
            data = drop_feedback_examples(data, feedback)
        return data if opts.mix is None else mix_general_corpus(data, opts.mix, tokenizer, opts.mix_weight)
    from lifecycle.data import pack

    return pack(opts.data, tokenizer, opts.block_size, val_fraction=opts.val_fraction,
                max_train_tokens=opts.max_train_tokens)


def load_feedback(spec: str, tokenizer: Any, max_length: int, max_examples: int | None = None) -> Any:
    """The feedback set: every example (or the first ``max_examples``), no held-out split, loss on the answers."""
    from lifecycle.data import load_supervised

    return load_supervised(spec, tokenizer, max_length, val_fraction=0.0, max_examples=max_examples)


def apply_lora(model: nn.Module, opts: VPretrainOptions) -> nn.Module:
    """peft LoRA on the learner's linears (the paper's LoRA branch); rank 0 leaves it full-parameter."""
    if opts.lora.rank == 0:
        return model
    from peft import LoraConfig, get_peft_model

    present = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, nn.Linear)}
    targets = [t for t in opts.lora.target_modules if t in present]
    if not targets:
        raise LifecycleError(f"lora.target_modules {opts.lora.target_modules} match no linear of the model")
    config = LoraConfig(r=opts.lora.rank, lora_alpha=opts.lora.alpha, lora_dropout=opts.lora.dropout,
                        target_modules=targets, bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, config)


@dataclass
class VPretrainContext:
    """What a vpretrain method receives."""

    opts: VPretrainOptions
    model: nn.Module  # the learner (LoRA-wrapped when lora.rank > 0)
    tokenizer: Any
    data: Any
    feedback: Any  # SupervisedData or None
    log: Callable[[str], None] = print


@dataclass
class VPretrainResult:
    model: nn.Module  # plain learner, LoRA merged
    designer: nn.Module | None
    history: list[dict]
    rows: list[dict]  # designer and target metrics over time
    report: dict
    data: Any
    feedback: Any
    train_result: Any


def vpretrain_model(opts: VPretrainOptions, loaded: Any, run_dir: str | Path, *,
                    log: Callable[[str], None] = print, progress: bool = True) -> VPretrainResult:
    """Train an already loaded learner with the chosen method; usable from Python."""
    from lifecycle.train.engine import train

    method = get_method("vpretrain", opts.method)
    tokenizer = loaded.tokenizer
    vocab = loaded.model.get_output_embeddings().weight.shape[0]
    group = opts.method_options
    k = getattr(group, "k", None)
    if k is not None and k > vocab:
        raise LifecycleError(f"{opts.method}.k = {k} is larger than the vocabulary ({vocab} tokens)")
    feedback = None
    if opts.feedback is not None:
        feedback = load_feedback(opts.feedback, tokenizer, opts.feedback_length, opts.feedback_examples)
        if feedback.num_train == 0:
            raise LifecycleError(f"feedback set {opts.feedback} has no examples")
    data = load_stream(opts, tokenizer, feedback)
    from lifecycle.methods.vpretrain.resume import check_run_settings, method_settings, write_run_settings

    settings = method_settings(opts, feedback.fingerprint if feedback is not None else None)
    if opts.resume:
        check_run_settings(run_dir, settings)
    write_run_settings(run_dir, settings)
    model = apply_lora(loaded.model, opts)
    ctx = VPretrainContext(opts=opts, model=model, tokenizer=tokenizer, data=data, feedback=feedback, log=log)
    state = method.run(ctx)
    hooks = state.hooks() if state is not None else None
    started = time.perf_counter()
    result = train(model, data, opts.train, run_dir, hooks=hooks, resume=opts.resume,
                   description=f"vpretrain ({opts.method})", progress=progress)
    seconds = time.perf_counter() - started
    learner = result.model
    if hasattr(learner, "merge_and_unload"):
        learner = learner.merge_and_unload()
    designer = getattr(state, "designer", None)
    rows = list(getattr(state, "rows", []))
    report = {"method": opts.method, "steps": result.steps, "tokens_seen": result.tokens_seen,
              "seconds": round(seconds, 2), "lora_rank": opts.lora.rank,
              "final_train_loss": result.final_train_loss, "final_val_loss": result.final_val_loss,
              "designer_updates": getattr(state, "updates", 0),
              "designer_updated_at": list(getattr(state, "updated_at", [])),
              "designer": designer.describe() if designer is not None else None}
    return VPretrainResult(learner, designer, result.history, rows, report, data, feedback, result)


__all__ = ["VPretrainContext", "VPretrainResult", "apply_lora", "is_supervised_spec",
           "load_feedback", "load_stream", "vpretrain_model"]
