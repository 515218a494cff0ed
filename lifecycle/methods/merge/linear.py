"""``linear``: the weighted average of the models (Wortsman et al. 2022, model soups).

mergekit semantics: ``Σ w_i θ_i``, divided by ``Σ w_i`` when ``normalize`` (default true). Every
source takes part, ``base_model`` too when it is given (it then needs a ``weight`` like the others).
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
    stacked = torch.stack([t.to(job.tensors[0].dtype) for t in job.tensors], dim=0)
    w = torch.tensor([float(x) for x in weights], dtype=stacked.dtype, device=stacked.device)
    while w.dim() < stacked.dim():
        w = w.unsqueeze(-1)
    out = (w * stacked).sum(dim=0)
    if job.params["normalize"]:
        out = out / w.sum(dim=0)
    return out
