"""``linear``: the weighted average of the models (Wortsman et al. 2022, model soups).

mergekit semantics: ``Σ w_i θ_i``, divided by ``Σ w_i`` when ``normalize`` (default true), accumulated
in float32 (float64 for float64 inputs) and cast back to the inputs' dtype, as mergekit 0.1.5 does.
Every source takes part, ``base_model`` too when it is given (it then needs a ``weight``).
"""

from __future__ import annotations

import torch

from lifecycle.methods.merge.common import ParamDef, TensorJob, merge_method


@merge_method("linear", paper="Wortsman et al. 2022, Model soups (arXiv:2203.05482)",
              summary="weighted average of the weights; normalize (default true) divides by the weight sum",
              parameters=(ParamDef("normalize", default=True),),
              tensor_parameters=(ParamDef("weight", required=True),))
def merge_linear(job: TensorJob) -> torch.Tensor:
    weights = [p["weight"] for p in job.model_params]
    if any(w is None for w in weights):
        missing = job.sources[weights.index(None)]
        from lifecycle.errors import LifecycleError

        raise LifecycleError(f"merge linear: missing required parameter weight for {missing}.{job.name}")
    # mergekit 0.1.5: accumulate in float32 (float64 for float64 inputs) with addcmul, divide, cast back
    first = job.tensors[0]
    dtype = torch.float64 if first.dtype == torch.float64 else torch.float32
    w = torch.tensor([float(x) for x in weights], dtype=dtype)
    result = torch.zeros_like(first, dtype=dtype)
    for tensor, coefficient in zip(job.tensors, w.unbind(0)):
        result.addcmul_(tensor.to(dtype), coefficient)
    if job.params["normalize"]:
        result.div_(w.sum())
    return result.to(first.dtype)
