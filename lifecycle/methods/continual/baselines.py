"""Baselines in the same harness: sequential fine-tuning, replay, the SLCA slow learner, multitask.

- ``seq-ft``: plain full fine-tuning on each task in turn (the forgetting reference).
- ``replay``: the first ``per_task`` training examples of every earlier task mixed into each task's
  training set (a small episodic memory; Chaudhry et al. 2019, "On Tiny Episodic Memories in CL").
- ``slca``: the backbone learns at ``backbone_lr_scale`` × the head's LR (Zhang et al. 2023, "SLCA:
  Slow Learner with Classifier Alignment", arXiv:2303.05118, Sec. 3.1, ``bcb_lrscale`` = 0.01). In a
  causal LM the head is ``lm_head``; with tied embeddings it is the embedding matrix too. SLCA's
  second part, classifier alignment from per-class feature statistics, has no counterpart in a
  generative head and is not implemented.
- ``multitask``: one joint run on every task's training data, for ``T × train.steps`` steps (the same
  examples as the sequence) — the upper reference; its matrix is one row.
"""

from __future__ import annotations

import hashlib

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from lifecycle.methods.continual.base import ContinualMethod, TaskContext
from lifecycle.methods.registry import register_method
from lifecycle.train.hooks import TrainHooks


def concat_data(train: list, validation: list, like, source: str):
    """One SupervisedData of the given Examples, with the settings of ``like`` (tokenizer, length, layout)."""
    from lifecycle.data.examples import Examples
    from lifecycle.data.supervised import SupervisedData

    def cat(exs: list[Examples]) -> Examples:
        offsets, base = [torch.zeros(1, dtype=torch.long)], 0
        for e in exs:
            offsets.append(e.offsets[1:] + base)
            base += int(e.offsets[-1])
        return Examples(torch.cat([e.ids for e in exs]), torch.cat(offsets), torch.cat([e.prompt_lens for e in exs]))

    digest = hashlib.sha256()
    for e in train + validation:
        digest.update(e.ids.numpy().tobytes())
        digest.update(e.offsets.numpy().tobytes())
    return SupervisedData(cat(train), cat(validation), like.block_size, source, digest.hexdigest()[:24], like.pad_id,
                          like.layout, like.pad_to)


class ReplayOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    per_task: int = Field(16, ge=1, description="examples kept from each earlier task")


class Replay(ContinualMethod):
    def train_data(self, ctx: TaskContext):
        if ctx.index == 0:
            return ctx.data
        memory = []
        for earlier in ctx.seen_data[:-1]:
            keep = min(self.group.per_task, len(earlier.train_examples))
            memory.append(earlier.train_examples.subset(0, keep))
        self.stats[ctx.task.name] = {"replayed_examples": sum(len(m) for m in memory)}
        return concat_data([ctx.data.train_examples, *memory], [ctx.data.validation_examples], ctx.data,
                           f"{ctx.data.source}+replay")


class SLCAOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    backbone_lr_scale: float = Field(0.01, gt=0, le=1, description="backbone LR / head LR (SLCA's bcb_lrscale)")


class SLCA(ContinualMethod):
    def begin_task(self, ctx: TaskContext) -> TrainHooks:
        scale = self.group.backbone_lr_scale

        def groups(model: nn.Module) -> list[dict]:
            head = {id(p) for p in model.get_output_embeddings().parameters()}
            params = [p for p in model.parameters() if p.requires_grad]
            return [{"params": [p for p in params if id(p) in head], "lr_scale": 1.0},
                    {"params": [p for p in params if id(p) not in head], "lr_scale": scale}]

        return TrainHooks(trainable_parameters=groups)


class Multitask(ContinualMethod):
    joint = True

    def train_data(self, ctx: TaskContext):
        return concat_data([d.train_examples for d in ctx.seen_data], [d.validation_examples for d in ctx.seen_data],
                           ctx.data, "+".join(t.name for t in ctx.tasks))

    def train_config(self, cfg, ctx):
        return cfg.model_copy(update={"steps": cfg.steps * len(ctx.tasks)})


@register_method("continual", "seq-ft", paper="sequential full fine-tuning (the forgetting baseline of every CL paper)",
                 summary="full fine-tuning on each task in turn", aliases=("sequential",))
def make_seq_ft(opts) -> ContinualMethod:
    return ContinualMethod(opts)


@register_method("continual", "replay", paper="Chaudhry et al. 2019, On Tiny Episodic Memories in CL (arXiv:1902.10486)",
                 options=ReplayOptions, summary="a few examples of every earlier task mixed into each task")
def make_replay(opts) -> Replay:
    return Replay(opts)


@register_method("continual", "slca", paper="Zhang et al. 2023, SLCA (arXiv:2303.05118), Sec. 3.1 (slow learner only)",
                 options=SLCAOptions, summary="backbone LR scaled down relative to the head (lm_head)")
def make_slca(opts) -> SLCA:
    return SLCA(opts)


@register_method("continual", "multitask", paper="joint training on every task (the upper reference)",
                 summary="one run on all tasks together, T × steps")
def make_multitask(opts) -> Multitask:
    return Multitask(opts)


__all__ = ["Multitask", "Replay", "SLCA", "concat_data"]
