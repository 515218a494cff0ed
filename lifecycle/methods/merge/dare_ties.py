"""``dare_ties``: DARE's random drop and L1 rescale (as mergekit does it), then TIES sign election.

Defaults (mergekit): ``normalize`` false, ``rescale`` true, ``lambda`` 1, ``density`` 1.
"""

from __future__ import annotations

from lifecycle.methods.merge.common import GTA_TENSOR_PARAMETERS, TensorJob, gta_parameters, merge_method, task_arithmetic_merge


@merge_method("dare_ties", paper="Yu et al. 2024, DARE (arXiv:2311.03099) with TIES sign election (arXiv:2306.01708)",
              summary="random drop with L1 rescale, sign election, sum of the agreeing entries",
              parameters=gta_parameters(normalize=False, rescale=True), tensor_parameters=GTA_TENSOR_PARAMETERS,
              needs_base=True)
def merge_dare_ties(job: TensorJob):
    return task_arithmetic_merge(job, sparsify="random", consensus=True)
