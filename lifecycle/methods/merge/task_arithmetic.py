"""``task_arithmetic``: base + Σ w_i (θ_i − θ_base) (Ilharco et al. 2023, editing models with task arithmetic).

mergekit defaults: ``normalize`` false, ``rescale`` false, ``lambda`` 1, ``density`` 1 (no sparsification).
"""

from __future__ import annotations

from lifecycle.methods.merge.common import GTA_TENSOR_PARAMETERS, TensorJob, gta_parameters, merge_method, task_arithmetic_merge


@merge_method("task_arithmetic", paper="Ilharco et al. 2023, Editing models with task arithmetic (arXiv:2212.04089)",
              summary="base plus the weighted sum of task vectors (θ_i − θ_base), times lambda",
              parameters=gta_parameters(normalize=False, rescale=False), tensor_parameters=GTA_TENSOR_PARAMETERS,
              needs_base=True)
def merge_task_arithmetic(job: TensorJob):
    return task_arithmetic_merge(job, sparsify=None, consensus=False)
