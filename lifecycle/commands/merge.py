"""``lifecycle merge``: merge the weights of models of one architecture, from a mergekit YAML.

Methods (``merge_method``, registered in :mod:`lifecycle.methods.merge`; ``lifecycle ls`` lists them):
``linear``, ``task_arithmetic``, ``ties``, ``dare_linear``, ``dare_ties``, ``slerp``, with mergekit's
semantics and defaults; ``logit_moe`` (one checkpoint running every expert, logits averaged); and
``lora_concat`` / ``lora_svd`` and the EXPERIMENTAL ``icm_fusion`` (``models:`` are peft LoRA adapter folders, ``base_model`` the model
they adapt; the output is one adapter). The last three write their output themselves
(``MergeSpec.whole_model``) and bring their own preflight (``MergeSpec.check``). ``lifecycle merge --config merge.yml -o OUT`` runs a mergekit config unchanged;
in a recipe, ``models: [steps.a, steps.b]`` takes earlier steps' outputs.

This module only checks the inputs (the preflight) and calls
:func:`lifecycle.methods.merge.pipeline.merge_models`, which reads and writes tensor by tensor (the
merged model is never whole in memory, so the output is written by ``ShardedWriter`` rather than
``finish_run``); with ``eval.tasks`` the written checkpoint is then loaded and scored into its card.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.commands import register
from lifecycle.methods.merge.options import MergeOptions


def preflight_merge(opts: MergeOptions, *, pending_models: bool = False) -> None:
    from lifecycle import preflight as pf
    from lifecycle.methods.merge.common import merge_spec
    from lifecycle.methods.merge.pipeline import _open_readers, check_compatible, check_layer_ranges, check_sources, checked_tokenizers

    pf.check_output(opts.output, overwrite=opts.overwrite)
    check_sources(opts)
    pf.check_eval(opts.eval)
    if opts.post_train is not None:
        pf.check_data(opts.post_train.data, what="post_train.data")
    if pending_models:
        return
    spec = merge_spec(opts.merge_method)
    if spec.whole_model:  # logit MoE, LoRA fusion: the method knows what its inputs must agree on
        for source in opts.sources():
            if not spec.adapter_inputs or source == opts.base_model:
                info = pf.model_info(source)
                if opts.post_train is not None:
                    pf.check_positions(opts.post_train.block_size, info.max_positions, option="post_train.block_size")
        spec.check(opts)
        return
    sources = opts.sources()
    for source in sources:
        pf.model_info(source)
    readers = _open_readers(sources)
    try:
        check_compatible(readers)
        checked_tokenizers(sources, [])
        check_layer_ranges(opts, readers)
    finally:
        for reader in readers.values():
            reader.close()


@register("merge", MergeOptions, help="Merge models from a mergekit YAML: weights (linear, task_arithmetic, ties, dare_linear, dare_ties, slerp), a logit-averaging MoE (logit_moe), or peft LoRA adapters exactly (lora_concat, lora_svd); icm_fusion is EXPERIMENTAL (a reconstruction, see docs/merge.md).",
          model_field=None, models_field="models", preflight=preflight_merge,
          paper="mergekit's YAML and semantics (Goddard et al. 2024, arXiv:2403.13257)")
def run_merge(opts: MergeOptions) -> Path:
    from lifecycle.methods.merge.pipeline import merge_models

    out = merge_models(opts)
    if opts.eval.tasks and opts.post_train is None:  # post_train scores before and after itself
        from lifecycle.eval.harness import evaluate_folder

        evaluate_folder(out, opts.eval.tasks, opts.eval.limit, batch_size=opts.eval.batch_size,
                        max_length=opts.eval.max_length, include_path=opts.eval.include_path)
    return out


__all__ = ["MergeOptions", "run_merge"]
