"""Weight-merge methods, mergekit-compatible: linear, task_arithmetic, ties, dare_linear, dare_ties, slerp.

One module per method over shared pieces in :mod:`.common` (parameter settings with gradients and
filters resolved per tensor, mergekit's sparsification and TIES sign consensus); the tensor-by-tensor
pipeline and the Python entry point :func:`lifecycle.methods.merge.pipeline.merge_models` live in
:mod:`.pipeline`; the options (a mergekit YAML plus lifecycle's output fields) in :mod:`.options`.

Calling convention: a merge method is registered with
:func:`lifecycle.methods.merge.common.merge_method`, which also records which parameters it takes,
and is called once per tensor as ``run(job: TensorJob) -> torch.Tensor`` (see
:class:`lifecycle.methods.merge.common.TensorJob`).
"""
