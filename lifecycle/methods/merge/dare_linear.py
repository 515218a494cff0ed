"""``dare_linear``: DARE (Yu et al. 2024): drop task-vector entries at random, keep ``density`` of them,
rescale, then task arithmetic.

As mergekit does it: a Bernoulli(``density``) mask from torch's global generator (``random_seed``
seeds it), and the rescale matches the **L1 norm** of the task vector before the drop (not the
paper's 1/density). Defaults: ``normalize`` false, ``rescale`` true, ``lambda`` 1, ``density`` 1.
"""

from __future__ import annotations

from lifecycle.methods.merge.common import GTA_TENSOR_PARAMETERS, TensorJob, gta_parameters, merge_method, task_arithmetic_merge


@merge_method("dare_linear", paper="Yu et al. 2024, Language models are Super Mario (DARE, arXiv:2311.03099)",
              summary="random drop of task-vector entries with L1 rescale, then task arithmetic",
              parameters=gta_parameters(normalize=False, rescale=True), tensor_parameters=GTA_TENSOR_PARAMETERS,
              needs_base=True)
def merge_dare_linear(job: TensorJob):
    return task_arithmetic_merge(job, sparsify="random", consensus=False)
