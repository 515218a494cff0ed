"""Pieces every merge method shares, with mergekit's semantics (read from arcee-ai/mergekit for facts).

* Parameter settings (:func:`evaluate_setting`): a scalar; a list of numbers, a *gradient*
  interpolated linearly over the decoder layers (``t = i / (layers - 1)`` for layer ``i``, ``t = 0``
  for embeddings, final norm and head); or a list of ``{filter, value}`` rules where the first rule
  whose ``filter`` is a substring of the tensor name (or is missing / ``*``) wins.
* Lookup order per tensor (:func:`resolve_parameters`): a model's own ``parameters`` first, then the
  top-level ``parameters``; a setting that evaluates to nothing (no filter matched) falls through.
* Sparsification (:func:`magnitude`, :func:`bernoulli`) and rescaling by **L1-norm matching**
  (:func:`rescale_l1`), TIES sign election by the sign of the summed weighted deltas
  (:func:`sign_consensus`), and the generalized task arithmetic step (:func:`task_arithmetic_merge`).
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from lifecycle.errors import LifecycleError
from lifecycle.methods.registry import register_method


class MergeWarning(UserWarning):
    """A merge finished but something about a tensor deserves a look (e.g. it came out all zeros)."""


@dataclass(frozen=True)
class ParamDef:
    name: str
    required: bool = False
    default: Any = None


@dataclass(frozen=True)
class MergeSpec:
    """What a merge method takes, as mergekit declares it: global and per-model (tensor) parameters."""

    name: str
    parameters: tuple[ParamDef, ...] = ()
    tensor_parameters: tuple[ParamDef, ...] = ()
    needs_base: bool = False
    two_models: bool = False  # slerp: exactly the base model and one other
    # A method that builds its output from whole inputs (logit MoE, LoRA fusion) rather than tensor by
    # tensor through the pipeline: ``run(opts)`` writes the output, ``check(opts)`` is its preflight.
    whole_model: bool = False
    check: Callable[[Any], None] | None = None
    adapter_inputs: bool = False  # the listed models are peft LoRA adapter folders (base_model is the model)

    @property
    def parameter_names(self) -> set[str]:
        return {p.name for p in self.parameters} | {p.name for p in self.tensor_parameters}


MERGE_SPECS: dict[str, MergeSpec] = {}


def merge_method(name: str, *, paper: str, summary: str = "", parameters: Sequence[ParamDef] = (),
                 tensor_parameters: Sequence[ParamDef] = (), needs_base: bool = False,
                 two_models: bool = False, whole_model: bool = False,
                 check: Callable[[Any], None] | None = None,
                 adapter_inputs: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a merge method with the method registry and record the parameters it takes."""

    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        MERGE_SPECS[name] = MergeSpec(name=name, parameters=tuple(parameters), tensor_parameters=tuple(tensor_parameters),
                                      needs_base=needs_base, two_models=two_models, whole_model=whole_model,
                                      check=check, adapter_inputs=adapter_inputs)
        return register_method("merge", name, paper=paper, summary=summary)(fn)

    return wrap


def merge_spec(name: str) -> MergeSpec:
    from lifecycle.methods.registry import canonical_name

    return MERGE_SPECS[canonical_name("merge", name)]


@dataclass
class TensorJob:
    """One output tensor: the inputs (one per source model, in source order) and resolved parameters."""

    name: str
    tensors: list[torch.Tensor]
    sources: list[str]
    base_index: int | None
    params: dict[str, Any]
    model_params: list[dict[str, Any]] = field(default_factory=list)


# -- parameter settings -------------------------------------------------------------------------------

_LAYER = re.compile(r"(?:^|\.)layers\.(\d+)\.")


def layer_t(tensor_name: str, num_layers: int) -> float:
    """mergekit's ``t`` for a tensor: ``i / (n - 1)`` in decoder layer ``i`` (1 with a single layer),
    0 outside the layers (embeddings, final norm, head)."""
    match = _LAYER.search(tensor_name)
    if match is None:
        return 0.0
    if num_layers <= 1:
        return 1.0
    return int(match.group(1)) / (num_layers - 1)


def evaluate_setting(tensor_name: str | None, setting: Any, t: float = 0.0) -> Any:
    """The value of a parameter setting for one tensor at gradient position ``t`` (None: no rule matched)."""
    if isinstance(setting, (int, float, bool, str)):
        return setting
    if isinstance(setting, dict):  # a single {filter, value} rule
        setting = [setting]
    if isinstance(setting, list):
        if setting and all(isinstance(e, (int, float)) for e in setting):
            scaled = t * (len(setting) - 1)
            i0 = int(scaled)
            i1 = min(len(setting) - 1, i0 + 1)
            frac = scaled - i0
            return (1 - frac) * setting[i0] + frac * setting[i1]
        if setting and all(isinstance(e, (int, float, bool, str)) for e in setting):
            return setting[int(t * (len(setting) - 1))]
        for rule in setting:
            if not isinstance(rule, dict):
                raise LifecycleError(f"parameter setting {setting!r} mixes rules and values")
            filt = rule.get("filter")
            if filt is None or filt == "*" or (tensor_name and filt in tensor_name):
                return evaluate_setting(tensor_name, rule.get("value"), t)
        return None
    if setting is None:
        return None
    raise LifecycleError(f"unexpected parameter setting {setting!r}")


def resolve_parameters(spec: MergeSpec, tensor_name: str, t: float, sources: list[str], base_index: int | None,
                       model_settings: list[dict | None], global_settings: dict | None) -> tuple[dict, list[dict]]:
    """Global and per-model parameter values for one tensor, in mergekit's lookup order."""
    global_settings = global_settings or {}

    def lookup(name: str, own: dict | None) -> Any:
        for settings in (own, global_settings):
            if settings and name in settings:
                value = evaluate_setting(tensor_name, settings[name], t)
                if value is not None:
                    return value
        return None

    params: dict[str, Any] = {}
    for p in spec.parameters:
        value = lookup(p.name, None)
        if value is None:
            if p.required:
                raise LifecycleError(f"merge {spec.name}: missing required parameter {p.name} for {tensor_name}")
            value = p.default
        params[p.name] = value
    per_model: list[dict] = []
    for index, source in enumerate(sources):
        values: dict[str, Any] = {}
        for p in spec.tensor_parameters:
            value = lookup(p.name, model_settings[index])
            if value is None:
                if p.required and index != base_index:
                    raise LifecycleError(f"merge {spec.name}: missing required parameter {p.name} for {source}.{tensor_name}")
                value = p.default
            values[p.name] = value
        per_model.append(values)
    return params, per_model


# -- sparsification and consensus (mergekit's sparsify.py / generalized_task_arithmetic.py) -------------


def rescale_l1(tensor: torch.Tensor, mask: torch.Tensor, rescale: bool, eps: float = 1e-7) -> torch.Tensor:
    """``tensor * mask``; with ``rescale``, scaled so its L1 norm equals the unmasked tensor's."""
    masked = tensor * mask
    if not rescale:
        return masked
    before = tensor.abs().sum()
    after = masked.abs().sum()
    if before < eps or after < eps:
        return masked
    return masked * (before / after)


def magnitude(tensor: torch.Tensor, density: float, rescale: bool = False, name: str = "") -> torch.Tensor:
    """TIES trim: keep the ``int(density * numel)`` entries of largest magnitude."""
    if density >= 1:
        return tensor
    k = int(density * tensor.numel())
    if k <= 0:
        raise LifecycleError(f"density {density} keeps no entry of {name or 'a tensor'} ({tensor.numel()} entries)")
    mask = torch.zeros_like(tensor)
    w = tensor.abs().reshape(-1)
    if w.device.type == "cpu":
        w = w.float()
    top = torch.argsort(w, descending=True)[:k]
    mask.view(-1)[top] = 1
    return rescale_l1(tensor, mask, rescale)


def bernoulli(tensor: torch.Tensor, density: float, rescale: bool = True) -> torch.Tensor:
    """DARE drop: keep each entry with probability ``density`` (torch's global generator, as mergekit),
    then rescale by L1-norm matching (mergekit's rescale, not 1/density)."""
    if density >= 1:
        return tensor
    work = tensor.dtype if (tensor.device.type != "cpu" or tensor.dtype == torch.bfloat16) else torch.float32
    mask = torch.bernoulli(torch.full_like(tensor, density, dtype=work))
    return rescale_l1(tensor.to(work), mask, rescale).to(tensor.dtype)


def sign_consensus(weighted_deltas: torch.Tensor, mask_dtype: torch.dtype | None = None) -> torch.Tensor:
    """TIES election ('sum'): the sign of the summed weighted deltas (0 counts as +); an entry takes part
    where its own sign equals it (a zero delta never does)."""
    mask_dtype = mask_dtype or weighted_deltas.dtype
    sign = weighted_deltas.sign().to(mask_dtype)
    majority = (weighted_deltas.sum(dim=0) >= 0).to(mask_dtype) * 2 - 1
    return sign == majority


def task_arithmetic_merge(job: TensorJob, *, sparsify: str | None, consensus: bool) -> torch.Tensor:
    """mergekit's generalized task arithmetic for one tensor.

    ``δ_i = θ_i − θ_base`` → sparsify each (``magnitude`` / ``random``, at its ``density``; L1 rescale when
    ``rescale``) → × ``weight`` → with ``consensus`` keep the entries agreeing with the elected sign →
    sum, divided by the summed (masked) weights when ``normalize`` → × ``lambda`` → ``θ_base + ·``.
    """
    if job.base_index is None:
        raise LifecycleError(f"merge: {job.name}: this method needs base_model")
    base = job.tensors[job.base_index]
    normalize, rescale = bool(job.params["normalize"]), bool(job.params["rescale"])
    lam = float(job.params["lambda"])
    deltas, weights = [], []
    for index, tensor in enumerate(job.tensors):
        if index == job.base_index:
            continue
        delta = tensor.to(base.dtype) - base
        p = job.model_params[index]
        if sparsify == "magnitude":
            delta = magnitude(delta, float(p["density"]), rescale, name=job.name)
        elif sparsify == "random":
            delta = bernoulli(delta, float(p["density"]), rescale)
        deltas.append(delta)
        weights.append(float(p["weight"]))
    if not deltas:
        return base
    stacked = torch.stack(deltas, dim=0)
    w = torch.tensor(weights, dtype=stacked.dtype, device=stacked.device)
    while w.dim() < stacked.dim():
        w = w.unsqueeze(-1)
    # stacked, weighted and mixed are this function's own temporaries: updated in place, which saves
    # a full-size allocation per step on large tensors
    weighted = stacked.mul_(w)
    if consensus:
        mask = sign_consensus(weighted, torch.int8 if job.params.get("int8_mask") else base.dtype)
        mixed = weighted.mul_(mask).sum(dim=0)
        divisor = (w * mask).sum(dim=0) if normalize else None
        if divisor is not None:
            divisor[divisor == 0] = 1
    else:
        mixed = weighted.sum(dim=0)
        divisor = w.sum(dim=0)
        divisor[divisor.abs() < 1e-8] = 1
    if normalize:
        mixed.div_(divisor)
    if lam != 1:
        mixed.mul_(lam)
    return mixed.add_(base).to(base.dtype)


def gta_parameters(normalize: bool, rescale: bool) -> tuple[ParamDef, ...]:
    return (ParamDef("int8_mask", default=False), ParamDef("normalize", default=normalize),
            ParamDef("rescale", default=rescale), ParamDef("lambda", default=1.0))


GTA_TENSOR_PARAMETERS = (ParamDef("weight", required=True), ParamDef("density", default=1.0))


def warn(message: str) -> None:
    warnings.warn(message, MergeWarning, stacklevel=2)


__all__ = ["GTA_TENSOR_PARAMETERS", "MERGE_SPECS", "MergeSpec", "MergeWarning", "ParamDef", "TensorJob", "bernoulli",
           "evaluate_setting", "gta_parameters", "layer_t", "magnitude", "merge_method", "merge_spec", "rescale_l1",
           "resolve_parameters", "sign_consensus", "task_arithmetic_merge"]
