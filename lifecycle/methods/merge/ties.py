"""``ties``: TIES-merging (Yadav et al. 2023): trim each task vector to its top-``density`` magnitudes,
elect a sign per entry (the sign of the summed weighted deltas), merge the agreeing entries.

mergekit defaults: ``normalize`` true (divide by the summed weights of the agreeing models per entry),
``rescale`` false, ``lambda`` 1, ``density`` 1.
"""

from __future__ import annotations

from lifecycle.methods.merge.common import GTA_TENSOR_PARAMETERS, TensorJob, gta_parameters, merge_method, task_arithmetic_merge


@merge_method("ties", paper="Yadav et al. 2023, TIES-Merging (arXiv:2306.01708)",
              summary="trim task vectors to top-density magnitudes, elect signs, average the agreeing entries",
              parameters=gta_parameters(normalize=True, rescale=False), tensor_parameters=GTA_TENSOR_PARAMETERS,
              needs_base=True)
def merge_ties(job: TensorJob):
    return task_arithmetic_merge(job, sparsify="magnitude", consensus=True)
