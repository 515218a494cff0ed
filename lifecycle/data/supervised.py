"""Supervised prompt/completion examples: loss on the completion only, padded or packed.

A *supervised data spec* is a JSONL file, a task folder or a shared-data name, optionally with the
fields to read:

- ``file.jsonl`` with ``{"prompt", "completion"}`` rows; without those fields, the first of the
  pairs ``question``/``answer`` (GSM8K), ``sentence``/``label`` (the O-LoRA continual-learning tasks)
  and ``input``/``output`` that the first row has;
- ``file.jsonl#prompt=question,completion=answer`` names the fields (or pass ``prompt_field`` /
  ``completion_field``);
- a folder: its ``train.jsonl`` for training, ``validation.jsonl``/``valid.jsonl``/``dev.jsonl`` as
  the held-out split if present (never ``test.jsonl``: that is for scoring), ``instruction.txt`` as
  the instruction and ``labels.json`` as the label set (recorded in :meth:`describe`). That is the
  layout of ``shared/data/continual/<task>``;
- a name: ``gsm8k`` (``shared/data/eval/gsm8k_train.jsonl``) or a continual task (``agnews``,
  ``copa``, ... from ``shared/data/continual``), when no file or folder of that name exists.

The prompt is ``template`` rendered with ``{input}`` (the row's prompt field), ``{instruction}`` (the
given instruction, else the row's ``instruction`` field) and any other ``{field}`` of the row. The
default template is ``"{instruction}\\n{input}\\nAnswer:"`` when there is an instruction; without one,
``"{input}\\nAnswer:"`` for a task folder (the collection's usual form), ``"Question: {input}\\nAnswer:"``
for ``gsm8k`` (lm-eval's form) and ``"{input}"`` for a plain file (its prompts are taken as complete).
The completion is ``separator`` (a space by default) + the completion field, then EOS; the separator
belongs to the completion, as lm-eval's target delimiter does, so the model learns the ``" World"``
token it will have to generate after ``"Answer:"``.

Prompt and completion are tokenized separately, so the boundary is exact: ``labels`` are -100 on
every prompt token and on padding, and equal the input ids on the completion and its EOS (the model
shifts labels itself). A tokenizer that adds BOS by default (LLaMA-style) gets BOS before the prompt.
Too long an example keeps its completion and loses prompt tokens from the left (BOS stays); a
completion that leaves no room for even one prompt token is an error.

Layouts (``layout=``):

- ``padding``: one example per row, right-padded with ``pad_token_id`` (EOS when there is none),
  ``attention_mask`` 0 on pads. ``pad_to="longest"`` (default) pads each batch to its longest
  example, ``"max_length"`` to ``max_length``; pads carry no loss either way, so only speed differs.
- ``packing``: whole examples packed into blocks of ``max_length`` tokens (best-fit decreasing, so no
  example is ever split and each keeps its full prompt), the rest of a block padded. Labels stay
  masked per example. Examples in one block *can attend to the earlier examples of that block*:
  plain Hugging Face LLaMA attention takes a [B, T] mask, which cannot separate examples, and
  ``position_ids`` resets only isolate examples under flash-attention-2 (elsewhere they would restart
  RoPE positions while attention still crosses examples, which is neither isolation nor the usual
  practice). This is the simple packing of axolotl/TRL without flash-attention: EOS separates the
  examples, nothing else. Use ``padding`` when examples must not see each other.

Held-out split: a given ``validation`` file (or the folder's), else the last ``val_fraction`` of the
examples. Tokenized examples are cached under ``cache_dir()/supervised`` keyed by the content hash of
the files, tokenizer and settings, as safetensors (never pickles); the layout is applied on load.
Every input problem (invalid JSON, a row that is not an object, a missing or empty field, non-UTF-8
bytes, an empty file) is a one-line :class:`LifecycleError` naming the file and line.

:class:`SupervisedData` follows the batch protocol of :class:`lifecycle.data.packing.PackedData`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import safe_open

from lifecycle.data.examples import IGNORE_INDEX, Examples, pack_examples, pad_examples  # noqa: F401  (IGNORE_INDEX re-exported)
from lifecycle.data.packing import _save_cache, as_index, epoch_order, tokenizer_fingerprint
from lifecycle.data.sources import decode_utf8, iter_jsonl
from lifecycle.errors import LifecycleError
from lifecycle.paths import cache_dir, shared_data_dir

FIELD_PAIRS = (("prompt", "completion"), ("question", "answer"), ("sentence", "label"), ("input", "output"))
VALIDATION_NAMES = ("validation.jsonl", "valid.jsonl", "dev.jsonl", "val.jsonl")
INSTRUCTION_TEMPLATE = "{instruction}\n{input}\nAnswer:"
TASK_TEMPLATE = "{input}\nAnswer:"
GSM8K_TEMPLATE = "Question: {input}\nAnswer:"
PLAIN_TEMPLATE = "{input}"
SPEC_KEYS = ("prompt", "completion")
_PLACEHOLDER = re.compile(r"\{(\w+)\}")
_CACHE_VERSION = 1

Layout = Literal["padding", "packing"]


@dataclass
class SupervisedData:
    """Prompt/completion examples ready for training, in the padding or packing layout.

    ``num_train``/``num_validation`` count examples (padding) or blocks (packing); the batch methods
    return ``input_ids``, ``labels`` and ``attention_mask``, all LongTensor [B, T] with T at most
    ``block_size`` (= ``max_length``).
    """

    train_examples: Examples
    validation_examples: Examples
    block_size: int
    source: str
    fingerprint: str
    pad_id: int
    layout: Layout = "padding"
    pad_to: Literal["longest", "max_length"] = "longest"
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.layout not in ("padding", "packing"):
            raise LifecycleError(f"unknown supervised layout '{self.layout}' (padding or packing)")
        if self.pad_to not in ("longest", "max_length"):
            raise LifecycleError(f"unknown pad_to '{self.pad_to}' (longest or max_length)")
        self._blocks: dict[str, dict[str, torch.Tensor]] = {}
        if self.layout == "packing":
            self._blocks["train"] = pack_examples(self.train_examples, self.block_size, self.pad_id)
            self._blocks["validation"] = pack_examples(self.validation_examples, self.block_size, self.pad_id)

    # -- the batch protocol -------------------------------------------------------------------
    @property
    def num_train(self) -> int:
        return self._count("train")

    @property
    def num_validation(self) -> int:
        return self._count("validation")

    def train_batch(self, idx: Any) -> dict[str, torch.Tensor]:
        return self._batch("train", idx)

    def validation_batch(self, idx: Any) -> dict[str, torch.Tensor]:
        return self._batch("validation", idx)

    def epoch_order(self, seed: int, epoch: int) -> torch.Tensor:
        return epoch_order(self.num_train, seed, epoch)

    @property
    def train_tokens(self) -> int:
        """Real (non-pad) training tokens, prompts included."""
        return int(self.train_examples.ids.numel())

    def describe(self) -> dict[str, Any]:
        ex = self.train_examples
        out: dict[str, Any] = {
            "source": self.source,
            "fingerprint": self.fingerprint,
            "kind": "supervised",
            "layout": self.layout,
            "block_size": self.block_size,
            "train_examples": len(ex),
            "validation_examples": len(self.validation_examples),
            "train_tokens": self.train_tokens,
            "train_completion_tokens": int((ex.lengths - ex.prompt_lens).sum()),
        }
        if self.layout == "packing":
            out["train_blocks"] = self.num_train
            out["validation_blocks"] = self.num_validation
            real = int(self._blocks["train"]["attention_mask"].sum())
            out["packing_fill"] = round(real / max(self.num_train * self.block_size, 1), 4)
        else:
            out["pad_to"] = self.pad_to
        out.update(self.info)
        return out

    # -- internals ------------------------------------------------------------------------------
    def _examples(self, split: str) -> Examples:
        return self.train_examples if split == "train" else self.validation_examples

    def _count(self, split: str) -> int:
        if self.layout == "packing":
            return int(self._blocks[split]["input_ids"].shape[0])
        return len(self._examples(split))

    def _batch(self, split: str, idx: Any) -> dict[str, torch.Tensor]:
        idx = as_index(idx, self._count(split))
        if self.layout == "packing":
            return {k: v[idx] for k, v in self._blocks[split].items()}
        return pad_examples(self._examples(split), idx, self.pad_id,
                            self.block_size if self.pad_to == "max_length" else None)


@dataclass
class _Source:
    train: Path
    validation: Path | None
    instruction: str | None
    labels: list[str] | None
    default_template: str


def _parse_spec(spec: str | Path) -> tuple[str, dict[str, str]]:
    if isinstance(spec, Path):
        return str(spec), {}
    text = str(spec).strip()
    if not text:
        raise LifecycleError("no supervised data given")
    head, sep, tail = text.rpartition("#")
    if not sep or "=" not in tail:
        if sep and not Path(text).expanduser().exists():
            raise LifecycleError(f"supervised data spec '{text}': expected PATH#prompt=FIELD,completion=FIELD after '#'")
        return text, {}
    options: dict[str, str] = {}
    for item in tail.split(","):
        key, eq, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not eq or not key or not value:
            raise LifecycleError(f"supervised data spec '{text}': '{item}' is not KEY=VALUE")
        if key not in SPEC_KEYS:
            raise LifecycleError(f"supervised data spec '{text}': unknown option '{key}' (known: {', '.join(SPEC_KEYS)})")
        options[key] = value
    return head, options


def _resolve(path_str: str) -> _Source:
    path = Path(path_str).expanduser()
    template = PLAIN_TEMPLATE
    if not path.exists():
        shared = shared_data_dir(required=False)
        if shared is not None and path_str == "gsm8k" and (shared / "eval" / "gsm8k_train.jsonl").is_file():
            return _Source(shared / "eval" / "gsm8k_train.jsonl", None, None, None, GSM8K_TEMPLATE)
        if shared is not None and re.fullmatch(r"[\w-]+", path_str) and (shared / "continual" / path_str).is_dir():
            path = shared / "continual" / path_str
        else:
            raise LifecycleError(
                f"supervised data not found: {path_str} (not a JSONL file, a task folder, gsm8k or a task of shared/data/continual)"
            )
    if path.is_file():
        return _Source(path, None, None, None, template)
    train = path / "train.jsonl"
    if not train.is_file():
        raise LifecycleError(f"supervised data folder {path} has no train.jsonl")
    validation = next((path / n for n in VALIDATION_NAMES if (path / n).is_file()), None)
    instruction = None
    if (path / "instruction.txt").is_file():
        instruction = decode_utf8((path / "instruction.txt").read_bytes(), path / "instruction.txt").strip() or None
    labels = None
    if (path / "labels.json").is_file():
        try:
            loaded = json.loads(decode_utf8((path / "labels.json").read_bytes(), path / "labels.json"))
        except json.JSONDecodeError as exc:
            raise LifecycleError(f"{path / 'labels.json'} is not valid JSON ({exc.msg})") from None
        labels = [str(x) for x in loaded] if isinstance(loaded, list) else None
    return _Source(train, validation, instruction, labels, TASK_TEMPLATE)


def _choose_fields(path: Path, data: bytes, prompt_field: str | None, completion_field: str | None) -> tuple[str, str]:
    if prompt_field and completion_field:
        return prompt_field, completion_field
    first = next(iter_jsonl(path, data), None)
    if first is None:
        raise LifecycleError(f"{path} has no examples (the file is empty)")
    line_no, row = first
    for p, c in FIELD_PAIRS:
        if (prompt_field in (None, p)) and (completion_field in (None, c)) and p in row and c in row:
            return p, c
    want_p = prompt_field or "prompt"
    missing = want_p if want_p not in row else (completion_field or "completion")
    raise LifecycleError(
        f"{path}:{line_no} has no '{missing}' field (fields: {', '.join(row) or 'none'}); "
        "name them with PATH#prompt=FIELD,completion=FIELD"
    )


def _text(row: dict, name: str, path: Path, line_no: int) -> str:
    if name not in row:
        raise LifecycleError(f"{path}:{line_no} has no '{name}' field (fields: {', '.join(row) or 'none'})")
    value = row[name]
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        kind = "null" if value is None else type(value).__name__
        raise LifecycleError(f"{path}:{line_no}: field '{name}' is {kind}, not text")
    return str(value)


def _render(template: str, instruction: str | None, prompt: str, row: dict, path: Path, line_no: int) -> str:
    def fill(match: re.Match) -> str:
        name = match.group(1)
        if name == "input":
            return prompt
        if name == "instruction":
            if instruction is not None:
                return instruction
            if "instruction" in row:
                return _text(row, "instruction", path, line_no)
            raise LifecycleError(f"{path}:{line_no}: the template uses {{instruction}} but no instruction was given")
        if name in row:
            return _text(row, name, path, line_no)
        raise LifecycleError(
            f"{path}:{line_no}: template placeholder {{{name}}} is not {{instruction}}, {{input}} or a field of the row"
        )

    return _PLACEHOLDER.sub(fill, template)


def _bos_prefix(tokenizer: Any) -> list[int]:
    """[BOS] when the tokenizer adds it by default (LLaMA-style), else nothing."""
    bos = tokenizer.bos_token_id
    if bos is None:
        return []
    with_special = tokenizer("a", add_special_tokens=True)["input_ids"]
    plain = tokenizer("a", add_special_tokens=False)["input_ids"]
    return [bos] if with_special[:1] == [bos] and plain[:1] != [bos] else []


def _tokenize_file(
    path: Path,
    data: bytes,
    tokenizer: Any,
    max_length: int,
    fields: tuple[str, str],
    template: str,
    instruction: str | None,
    separator: str,
) -> tuple[Examples, int]:
    """All examples of one file, tokenized and truncated; returns them and the truncated count."""
    prompt_field, completion_field = fields
    prompts, completions, lines = [], [], []
    for line_no, row in iter_jsonl(path, data):
        prompt = _text(row, prompt_field, path, line_no)
        completion = _text(row, completion_field, path, line_no)
        if not completion.strip():
            raise LifecycleError(f"{path}:{line_no}: field '{completion_field}' is empty")
        prompts.append(_render(template, instruction, prompt, row, path, line_no))
        completions.append(separator + completion)
        lines.append(line_no)
    if not prompts:
        raise LifecycleError(f"{path} has no examples (the file is empty)")
    eos = tokenizer.eos_token_id
    if eos is None:
        raise LifecycleError("the tokenizer has no EOS token, which ends every completion")
    bos = _bos_prefix(tokenizer)
    rows: list[tuple[list[int], list[int]]] = []
    truncated = 0
    chunk = 256
    for start in range(0, len(prompts), chunk):
        p_ids = tokenizer(prompts[start:start + chunk], add_special_tokens=False)["input_ids"]
        c_ids = tokenizer(completions[start:start + chunk], add_special_tokens=False)["input_ids"]
        for k, (body, comp) in enumerate(zip(p_ids, c_ids)):
            line_no = lines[start + k]
            comp = list(comp) + [eos]
            if len(comp) >= max_length:
                raise LifecycleError(
                    f"{path}:{line_no}: the completion is {len(comp)} tokens with EOS, so max_length {max_length} "
                    "leaves no room for the prompt; raise max_length"
                )
            room = max_length - len(comp)
            prompt = bos + list(body)
            if len(prompt) > room:
                keep = room - len(bos)  # >= 0: room >= 1 and bos has at most one token
                prompt = bos + (list(body)[len(body) - keep:] if keep else [])
                truncated += 1
            if not prompt:
                raise LifecycleError(f"{path}:{line_no}: the prompt is empty")
            rows.append((prompt, comp))
    return Examples.build(rows), truncated


def check_supervised_file(spec: str | Path, *, what: str = "data") -> int:
    """Preflight for a supervised spec without a tokenizer: the file exists, and every row has non-empty
    prompt and completion fields (as :func:`load_supervised` reads them). Returns the number of rows."""
    try:
        path_str, options = _parse_spec(spec)
        source = _resolve(path_str)
        data = source.train.read_bytes()
        fields = _choose_fields(source.train, data, options.get("prompt"), options.get("completion"))
        count = 0
        for line_no, row in iter_jsonl(source.train, data):
            for name in fields:
                if not _text(row, name, source.train, line_no).strip():
                    raise LifecycleError(f"{source.train}:{line_no}: field '{name}' is empty")
            count += 1
        if count == 0:
            raise LifecycleError(f"{source.train} has no examples (the file is empty)")
        return count
    except LifecycleError as exc:
        raise LifecycleError(f"{what}: {exc}") from None


def load_supervised(
    spec: str | Path,
    tokenizer: Any,
    max_length: int,
    *,
    prompt_field: str | None = None,
    completion_field: str | None = None,
    template: str | None = None,
    instruction: str | None = None,
    separator: str = " ",
    layout: Layout = "padding",
    pad_to: Literal["longest", "max_length"] = "longest",
    validation: str | Path | None = None,
    val_fraction: float = 0.05,
    max_examples: int | None = None,
    use_cache: bool = True,
) -> SupervisedData:
    """Load prompt/completion examples (see the module docstring) ready for training.

    ``instruction=None`` takes a task folder's ``instruction.txt``; ``""`` means none.
    ``max_examples`` keeps the first training examples only (after the held-out split).
    """
    if max_length < 2:
        raise LifecycleError(f"max_length must be at least 2, got {max_length}")
    if not 0 <= val_fraction < 1:
        raise LifecycleError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if layout not in ("padding", "packing"):
        raise LifecycleError(f"unknown supervised layout '{layout}' (padding or packing)")
    path_str, options = _parse_spec(spec)
    for key, given in (("prompt", prompt_field), ("completion", completion_field)):
        if key in options and given is not None and options[key] != given:
            raise LifecycleError(f"the {key} field is '{options[key]}' in the data spec but '{given}' was also given")
    prompt_field = options.get("prompt", prompt_field)
    completion_field = options.get("completion", completion_field)
    source = _resolve(path_str)
    if validation is not None:
        source.validation = Path(validation).expanduser()
        if not source.validation.is_file():
            raise LifecycleError(f"validation file not found: {validation}")
    if instruction is None:
        instruction = source.instruction
    instruction = instruction or None
    if template is None:
        template = INSTRUCTION_TEMPLATE if instruction else source.default_template

    train_bytes = source.train.read_bytes()
    if not train_bytes.strip():
        raise LifecycleError(f"{source.train} has no examples (the file is empty)")
    val_bytes = source.validation.read_bytes() if source.validation else None
    fields = _choose_fields(source.train, train_bytes, prompt_field, completion_field)

    settings = {
        "train": hashlib.sha256(train_bytes).hexdigest(),
        "validation": hashlib.sha256(val_bytes).hexdigest() if val_bytes is not None else None,
        "fields": list(fields),
        "template": template,
        "instruction": instruction,
        "separator": separator,
        "tokenizer": tokenizer_fingerprint(tokenizer),
        "max_length": max_length,
        "val_fraction": None if val_bytes is not None else val_fraction,
        "max_examples": max_examples,
        "v": _CACHE_VERSION,
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:24]
    cache_file = cache_dir() / "supervised" / f"{key}.safetensors"
    loaded = _read_cache(cache_file) if use_cache else None
    if loaded is not None:
        train_ex, val_ex, truncated = loaded
    else:
        train_ex, truncated = _tokenize_file(source.train, train_bytes, tokenizer, max_length, fields,
                                             template, instruction, separator)
        if val_bytes is not None:
            val_ex, val_truncated = _tokenize_file(source.validation, val_bytes, tokenizer, max_length,  # type: ignore[arg-type]
                                                   fields, template, instruction, separator)
            truncated += val_truncated
        else:
            n = len(train_ex)
            n_val = int(n * val_fraction)
            if val_fraction > 0 and n >= 2:
                n_val = max(n_val, 1)
            val_ex = train_ex.subset(n - n_val, n)
            train_ex = train_ex.subset(0, n - n_val)
        if max_examples is not None:
            train_ex = train_ex.subset(0, min(max_examples, len(train_ex)))
        if len(train_ex) == 0:
            raise LifecycleError(f"supervised data {path_str} has no training examples left after the held-out split")
        if use_cache:
            _save_cache(cache_file, {
                "train_ids": train_ex.ids, "train_offsets": train_ex.offsets, "train_prompt_lens": train_ex.prompt_lens,
                "val_ids": val_ex.ids, "val_offsets": val_ex.offsets, "val_prompt_lens": val_ex.prompt_lens,
            }, metadata={"truncated": str(truncated)})

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    fingerprint = hashlib.sha256(f"{key}|{layout}|{pad_to if layout == 'padding' else ''}|{pad_id}".encode()).hexdigest()[:24]
    info: dict[str, Any] = {
        "train_file": str(source.train),
        "validation_file": str(source.validation) if source.validation else None,
        "fields": {"prompt": fields[0], "completion": fields[1]},
        "template": template,
        "instruction": instruction,
        "separator": separator,
        "truncated_prompts": truncated,
    }
    if source.labels is not None:
        info["labels"] = source.labels
    return SupervisedData(train_ex, val_ex, max_length, str(spec), fingerprint, pad_id, layout, pad_to, info)


def _read_cache(cache_file: Path) -> tuple[Examples, Examples, int] | None:
    if not cache_file.is_file():
        return None
    try:
        with safe_open(str(cache_file), framework="pt") as fh:
            t = {k: fh.get_tensor(k) for k in fh.keys()}
            meta = fh.metadata() or {}
        train = Examples(t["train_ids"], t["train_offsets"], t["train_prompt_lens"])
        val = Examples(t["val_ids"], t["val_offsets"], t["val_prompt_lens"])
        return train, val, int(meta.get("truncated", 0))
    except (OSError, KeyError, ValueError, RuntimeError):
        return None  # an unreadable cache is rebuilt, not an error
