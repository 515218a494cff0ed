"""Options of ``lifecycle merge``: a mergekit YAML (its fields, unchanged) plus lifecycle's output fields.

mergekit fields: ``merge_method``, ``models: [{model, parameters}]`` (or plain model specs),
``base_model``, ``parameters``, ``dtype``, ``out_dtype``, ``tokenizer_source`` / ``tokenizer: {source}``,
``chat_template`` (only unset); ``slices:`` only as one slice over all layers (read as ``models:``).
``modules:``, frankenmerge slices and any other unknown field are one-line errors. lifecycle's own: ``output``, ``overwrite``, ``random_seed`` (mergekit's
``--random-seed``), ``out_shard_size`` (mergekit's ``--out-shard-size``), ``eval``, and ``config``:
a mergekit YAML file whose fields fill everything not given otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lifecycle.errors import LifecycleError
from lifecycle.options import CommandOptions, EvalAfter, TextDataOptions, RunFolder, run_folder_field
from lifecycle.train.engine import TrainConfig

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
          "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def dtype_from_name(name: str | None) -> torch.dtype | None:
    if name is None:
        return None
    key = str(name).lower().removeprefix("torch.")
    if key not in DTYPES:
        raise ValueError(f"unknown dtype '{name}' (known: float32, float16, bfloat16)")
    return DTYPES[key]


def _check_setting(value: Any, where: str) -> None:
    """A mergekit ParameterSetting: scalar, list of scalars (a gradient), or list of {filter, value} rules."""
    if isinstance(value, (int, float, bool, str)):
        return
    if isinstance(value, dict):
        value = [value]
    if isinstance(value, list) and value:
        if all(isinstance(e, (int, float, bool, str)) for e in value):
            return
        for rule in value:
            if not isinstance(rule, dict):
                raise ValueError(f"{where}: a list mixing values and {{filter, value}} rules")
            extra = set(rule) - {"filter", "value"}
            if extra:
                raise ValueError(f"{where}: unknown field '{sorted(extra)[0]}' in a rule (rules have filter and value)")
            if "value" not in rule:
                raise ValueError(f"{where}: a rule without value")
            inner = rule["value"]
            if not (isinstance(inner, (int, float, bool, str)) or
                    (isinstance(inner, list) and inner and all(isinstance(e, (int, float, bool, str)) for e in inner))):
                raise ValueError(f"{where}: a rule's value must be a number or a list of numbers")
        return
    raise ValueError(f"{where}: expected a number, a list of numbers (gradient) or a list of {{filter, value}} rules")


class InputModel(BaseModel):
    """One entry of ``models:``: the model (folder, .gguf file, built-in name) and its parameters."""

    model_config = ConfigDict(extra="forbid")
    model: str
    parameters: dict[str, Any] | None = None


class PostTrain(CommandOptions):
    """``post_train:`` (logit_moe only): train the merged model further on the engine, as the paper's
    released MoE was, and record its held-out loss (and ``eval.tasks`` scores) with and without it.
    The data fields are ``lifecycle train``'s (the merged model brings its tokenizer)."""

    data: str = Field(..., description=TextDataOptions.model_fields["data"].description)
    block_size: int = Field(256, ge=8)
    val_fraction: float = Field(0.05, gt=0, lt=1, description="held-out share; the with/without loss is measured on it")
    max_train_tokens: int | None = Field(None, ge=1)
    train: TrainConfig = Field(default_factory=lambda: TrainConfig(steps=30))


class MergeOptions(CommandOptions):
    """Merge the weights of several models of one architecture (mergekit YAML fields, plus output)."""

    config: str | None = Field(None, description="a mergekit YAML file; its fields fill every option not given otherwise")
    merge_method: str = Field(..., description="linear, task_arithmetic, ties, dare_linear, dare_ties, slerp, logit_moe, lora_concat, lora_svd or icm_fusion (experimental)")
    models: list[InputModel] = Field(..., description="models to merge: [{model: PATH, parameters: {weight: 0.5}}] or plain specs")
    base_model: str | None = Field(None, description="the model task vectors are taken against (slerp: t = 0)")
    parameters: dict[str, Any] | None = Field(None, description="global parameters (scalars, gradients, filter rules)")
    dtype: str | None = Field(None, description="dtype the inputs are cast to and merged in (mergekit's dtype)")
    out_dtype: str | None = Field(None, description="dtype of the written checkpoint (default: dtype, else the first model's)")
    tokenizer_source: str | None = Field(None, description="base, or one of the input models (default: base model, else first)")
    tokenizer: dict[str, Any] | None = Field(None, description="mergekit's tokenizer: {source: ...}; only source is supported")
    chat_template: str | None = Field(None, description="not supported yet (must be unset)")
    output: str = Field(..., description="folder to write the merged checkpoint to")
    overwrite: bool = False
    run_folder: RunFolder = run_folder_field()
    random_seed: int | None = Field(None, description="seeds torch before merging (DARE's random drop), as mergekit's --random-seed")
    out_shard_size: str = Field("2B", description="largest output shard, e.g. 500M, 2B (bytes), as mergekit's --out-shard-size")
    eval: EvalAfter = Field(default_factory=EvalAfter)
    post_train: PostTrain | None = Field(None, description="logit_moe: train the merged model further (data, block_size, train.steps, ...); the card records scores with and without it")
    layer_ranges: dict[str, list[int]] | None = Field(None, description="set from a one-slice `slices:` config: each model's layer_range (must be all its layers)")

    @model_validator(mode="before")
    @classmethod
    def _read_config_and_refuse(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        data = dict(data)
        path = data.get("config")
        if path:
            from lifecycle.options import deep_merge, read_options_file

            try:
                loaded = read_options_file(Path(str(path)).expanduser())
            except LifecycleError as exc:
                raise ValueError(str(exc)) from None
            if "config" in loaded:
                raise ValueError(f"{path}: a merge config cannot name another config")
            data = deep_merge(loaded, data)
        if "modules" in data:
            raise ValueError("'modules:' (per-module merges) is not supported; use models:")
        if "slices" in data:
            data = _single_slice_as_models(data)
        return data

    @field_validator("merge_method", mode="before")
    @classmethod
    def _known_method(cls, value: Any) -> Any:
        from lifecycle.methods.registry import canonical_name

        try:
            return canonical_name("merge", str(value))
        except LifecycleError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("models", mode="before")
    @classmethod
    def _plain_specs(cls, value: Any) -> Any:
        if isinstance(value, list):
            return [{"model": item} if isinstance(item, (str, Path)) else item for item in value]
        return value

    @field_validator("dtype", "out_dtype")
    @classmethod
    def _dtype(cls, value: Any) -> Any:
        dtype_from_name(value)
        return value

    @field_validator("out_shard_size")
    @classmethod
    def _shard_size(cls, value: Any) -> Any:
        parse_size(value)
        return value

    @field_validator("chat_template")
    @classmethod
    def _no_chat_template(cls, value: Any) -> Any:
        if value is not None:
            raise ValueError("chat_template is not supported yet; leave it unset (the tokenizer's own template is kept)")
        return value

    @field_validator("tokenizer")
    @classmethod
    def _tokenizer(cls, value: Any) -> Any:
        if value is not None:
            extra = set(value) - {"source"}
            if extra:
                raise ValueError(f"tokenizer.{sorted(extra)[0]} is not supported (only tokenizer.source)")
        return value

    @model_validator(mode="after")
    def _check_parameters(self) -> "MergeOptions":
        from lifecycle.methods.merge.common import merge_spec

        spec = merge_spec(self.merge_method)
        known = spec.parameter_names
        tensor_names = {p.name for p in spec.tensor_parameters}
        shown = ", ".join(sorted(known)) or "none"
        for name, value in (self.parameters or {}).items():
            if name not in known:
                raise ValueError(f"parameters.{name}: not a parameter of {self.merge_method} (it takes: {shown})")
            _check_setting(value, f"parameters.{name}")
        for index, entry in enumerate(self.models):
            for name, value in (entry.parameters or {}).items():
                if name not in tensor_names:
                    takes = ", ".join(sorted(tensor_names)) or "no per-model parameters"
                    raise ValueError(f"models.{index}.parameters.{name}: not a per-model parameter of {self.merge_method} "
                                     f"(it takes: {takes})")
                _check_setting(value, f"models.{index}.parameters.{name}")
        if self.post_train is not None and self.merge_method != "logit_moe":
            raise ValueError(f"post_train: only logit_moe trains after merging, not {self.merge_method} "
                             "(train the merged checkpoint with lifecycle train)")
        source = (self.tokenizer or {}).get("source") if self.tokenizer else None
        if source is not None and self.tokenizer_source is not None:
            raise ValueError("give tokenizer_source or tokenizer.source, not both")
        if (source or self.tokenizer_source) == "union":
            raise ValueError("tokenizer_source union is not supported: the models must share one tokenizer")
        return self

    def sources(self) -> list[str]:
        """Every model the merge reads, in order: the listed models, then base_model if not among them."""
        listed = [m.model for m in self.models]
        if self.base_model is not None and self.base_model not in listed:
            listed.append(self.base_model)
        return listed

    def model_settings(self) -> list[dict | None]:
        settings: list[dict | None] = [m.parameters for m in self.models]
        if self.base_model is not None and self.base_model not in [m.model for m in self.models]:
            settings.append(None)
        return settings

    @property
    def tokenizer_choice(self) -> str | None:
        return (self.tokenizer or {}).get("source") or self.tokenizer_source


def _single_slice_as_models(data: dict) -> dict:
    """mergekit's ``slices:`` with one slice whose sources each cover all their layers is the same merge
    as ``models:`` (the usual way slerp configs are written); anything else is a frankenmerge."""
    slices = data.pop("slices")
    if "models" in data:
        raise ValueError("give models: or slices:, not both")
    if not isinstance(slices, list) or len(slices) != 1 or not isinstance(slices[0], dict):
        raise ValueError("'slices:' with several slices (frankenmerges) is not supported; one slice over all layers, or models:")
    extra = set(slices[0]) - {"sources", "parameters", "base_model"}
    if extra:
        raise ValueError(f"slices.0.{sorted(extra)[0]}: not supported in a slice")
    sources = slices[0].get("sources")
    if not isinstance(sources, list) or not sources:
        raise ValueError("slices.0.sources: a list of {model, layer_range} is needed")
    models, ranges = [], {}
    for index, source in enumerate(sources):
        if not isinstance(source, dict) or "model" not in source:
            raise ValueError(f"slices.0.sources.{index}: needs model")
        unknown = set(source) - {"model", "layer_range", "parameters"}
        if unknown:
            raise ValueError(f"slices.0.sources.{index}.{sorted(unknown)[0]}: unknown option")
        entry = {"model": source["model"]}
        if source.get("parameters") is not None:
            entry["parameters"] = source["parameters"]
        models.append(entry)
        if source.get("layer_range") is not None:
            ranges[str(source["model"])] = list(source["layer_range"])
    data["models"] = models
    if slices[0].get("base_model") is not None:
        if data.get("base_model") not in (None, slices[0]["base_model"]):
            raise ValueError("slices.0.base_model differs from base_model")
        data["base_model"] = slices[0]["base_model"]
    slice_params = slices[0].get("parameters") or {}
    if slice_params:
        both = set(slice_params) & set(data.get("parameters") or {})
        if both:
            raise ValueError(f"parameter {sorted(both)[0]} is set both in the slice and globally; set it in one place")
        data["parameters"] = {**(data.get("parameters") or {}), **slice_params}
    if ranges:
        data["layer_ranges"] = ranges
    return data


def parse_size(value: Any) -> int:
    """``2B`` (billion bytes), ``500M``, ``64K`` or a plain number of bytes."""
    text = str(value).strip().upper()
    scale = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12}
    try:
        if text and text[-1] in scale:
            size = int(float(text[:-1]) * scale[text[-1]])
        else:
            size = int(float(text))
    except ValueError:
        raise ValueError(f"out_shard_size '{value}' is not a size like 500M or 2B") from None
    if size <= 0:
        raise ValueError("out_shard_size must be positive")
    return size


__all__ = ["InputModel", "MergeOptions", "PostTrain", "dtype_from_name", "parse_size"]
