"""Tokenized prompt/completion examples and their two batch layouts: padded and packed.

Examples are stored ragged (one flat id tensor with offsets), so a dataset of any size costs its
tokens and no padding until a batch is built.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass

import torch

IGNORE_INDEX = -100  # labels of tokens that carry no loss (prompts, padding), as Hugging Face models expect


@dataclass
class Examples:
    """Tokenized examples stored ragged: example ``i`` is ``ids[offsets[i]:offsets[i+1]]``, of which
    the first ``prompt_lens[i]`` tokens are prompt (no loss) and the rest completion + EOS."""

    ids: torch.Tensor
    offsets: torch.Tensor
    prompt_lens: torch.Tensor

    def __len__(self) -> int:
        return int(self.offsets.numel()) - 1

    @property
    def lengths(self) -> torch.Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def subset(self, start: int, stop: int) -> Examples:
        lo, hi = int(self.offsets[start]), int(self.offsets[stop])
        return Examples(self.ids[lo:hi].clone(), self.offsets[start:stop + 1] - lo, self.prompt_lens[start:stop].clone())

    @staticmethod
    def build(rows: list[tuple[list[int], list[int]]]) -> Examples:
        flat: list[int] = []
        offsets = [0]
        prompt_lens = []
        for prompt, completion in rows:
            flat.extend(prompt)
            flat.extend(completion)
            offsets.append(len(flat))
            prompt_lens.append(len(prompt))
        return Examples(
            torch.tensor(flat, dtype=torch.long),
            torch.tensor(offsets, dtype=torch.long),
            torch.tensor(prompt_lens, dtype=torch.long),
        )


def pad_examples(ex: Examples, idx: torch.Tensor, pad_id: int, length: int | None = None) -> dict[str, torch.Tensor]:
    """Examples ``idx`` right-padded to ``length`` (default: the longest of them)."""
    lengths = ex.lengths[idx]
    width = int(lengths.max()) if length is None and idx.numel() else (length or 0)
    input_ids = torch.full((idx.numel(), width), pad_id, dtype=torch.long)
    labels = torch.full((idx.numel(), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((idx.numel(), width), dtype=torch.long)
    for row, i in enumerate(idx.tolist()):
        lo, hi = int(ex.offsets[i]), int(ex.offsets[i + 1])
        n, p = hi - lo, int(ex.prompt_lens[i])
        input_ids[row, :n] = ex.ids[lo:hi]
        labels[row, p:n] = ex.ids[lo + p:hi]
        mask[row, :n] = 1
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


def pack_examples(ex: Examples, block_size: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Whole examples packed into [N, block_size] blocks by best-fit decreasing.

    Each example goes, longest first, into the open block with the least room that still fits it
    (a new block when none does); within a block, examples keep their data order. Deterministic.
    """
    lengths = ex.lengths.tolist()
    bins: list[list[int]] = []
    room: list[tuple[int, int]] = []  # sorted (free tokens, block) of blocks that still have room
    for i in sorted(range(len(lengths)), key=lambda j: (-lengths[j], j)):
        n = lengths[i]
        pos = bisect.bisect_left(room, (n, -1))
        if pos < len(room):
            free, b = room.pop(pos)
        else:
            free, b = block_size, len(bins)
            bins.append([])
        bins[b].append(i)
        if free - n > 0:
            bisect.insort(room, (free - n, b))
    shape = (len(bins), block_size)
    input_ids = torch.full(shape, pad_id, dtype=torch.long)
    labels = torch.full(shape, IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros(shape, dtype=torch.long)
    for row, members in enumerate(bins):
        at = 0
        for i in sorted(members):
            lo, hi = int(ex.offsets[i]), int(ex.offsets[i + 1])
            n, p = hi - lo, int(ex.prompt_lens[i])
            input_ids[row, at:at + n] = ex.ids[lo:hi]
            labels[row, at + p:at + n] = ex.ids[lo + p:hi]
            mask[row, at:at + n] = 1
            at += n
    return {"input_ids": input_ids, "labels": labels, "attention_mask": mask}


# -- reading the spec ------------------------------------------------------------------------------
