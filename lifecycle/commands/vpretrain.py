"""``lifecycle vpretrain``: continued pretraining with targets shaped by a learned task designer.

Methods (``--method``, registered in :mod:`lifecycle.methods.vpretrain`): ``v-pretraining`` (Ke & Fanti
2026) and the baselines ``ntp``, ``uniform-topk``, ``self-topk`` at the same learner budget. This module
checks the inputs, loads the learner, calls :func:`lifecycle.methods.vpretrain.pipeline.vpretrain_model`
and finishes: the learner as a plain HF checkpoint (LoRA merged), the designer beside it in
``designer/`` (safetensors), ``vpretrain_metrics.json`` and ``vpretrain.png``.
"""

from __future__ import annotations

from pathlib import Path

from lifecycle.commands import register
from lifecycle.errors import LifecycleError
from lifecycle.finish import default_run_dir, finish_run, tidy_run_dir
from lifecycle.methods.vpretrain.options import VPretrainOptions


def preflight_vpretrain(opts: VPretrainOptions, *, pending_models: bool = False) -> None:
    from lifecycle import preflight as pf
    from lifecycle.data.supervised import check_supervised_file
    from lifecycle.methods.vpretrain.pipeline import is_supervised_spec

    pf.check_output(opts.output, overwrite=opts.overwrite or opts.resume)
    if is_supervised_spec(opts.data, opts.data_format):
        check_supervised_file(opts.data, what="data")
        pf.check_data(opts.mix, what="mix")
    else:
        pf.check_data(opts.data)
        if opts.mix is not None:
            raise LifecycleError("mix adds a general corpus to a prompt/completion stream; a text stream mixes "
                                 "corpora in its spec (a:0.3+b:0.7)")
    if opts.method == "v-pretraining" and opts.feedback is None:
        raise LifecycleError("v-pretraining needs --feedback FEEDBACK.jsonl (prompt/completion rows of verified answers)")
    if opts.feedback is not None:
        check_supervised_file(opts.feedback, what="feedback")
    if not pending_models:
        info = pf.model_info(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
        vocab = getattr(info.config, "vocab_size", None) if info.config is not None else None
        k = getattr(opts.method_options, "k", None)
        if vocab is not None and k is not None and k > vocab:
            raise LifecycleError(f"{opts.method}.k = {k} is larger than the vocabulary ({vocab} tokens)")
        pf.check_positions(opts.block_size, info.max_positions, option="block_size")
    pf.check_eval(opts.eval)
    if opts.resume:
        from lifecycle.finish import default_run_dir
        from lifecycle.methods.vpretrain.resume import check_run_settings, method_settings

        pf.check_resume(opts.output, opts.train)
        check_run_settings(default_run_dir(opts.output), method_settings(opts))  # the feedback set: at load


@register("vpretrain", VPretrainOptions, help="Continued pretraining with designer-shaped targets (V-Pretraining).",
          preflight=preflight_vpretrain)
def run_vpretrain(opts: VPretrainOptions) -> Path:
    from lifecycle.data.packing import tokenizer_fingerprint
    from lifecycle.methods.vpretrain.pipeline import vpretrain_model
    from lifecycle.methods.vpretrain.report import metrics_document, plot_metrics, save_designer
    from lifecycle.methods.vpretrain.resume import feedback_file_hash, finished_output
    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import load_model, prepare_output_dir

    if opts.resume and not opts.overwrite and finished_output(opts):
        return Path(opts.output).expanduser().resolve()
    prepare_output_dir(opts.output, opts.overwrite or opts.resume)
    run_dir = default_run_dir(opts.output)
    loaded = load_model(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
    done = vpretrain_model(opts, loaded, run_dir)
    data = {"stream": done.data.describe()}
    if done.feedback is not None:
        data["feedback"] = done.feedback.describe()  # its fingerprint goes on the card
        data["feedback"]["sha256"] = feedback_file_hash(data["feedback"]["train_file"])  # checked by --resume
    lineage = new_lineage(command="vpretrain", method=f"vpretrain-{opts.method}", parents=[loaded.source],
                          parent_lineages=[loaded.lineage], options=opts.model_dump(mode="json"),
                          seed=opts.train.seed, data=data, tokens_seen=done.train_result.tokens_seen,
                          relation="finetune")
    fingerprint = tokenizer_fingerprint(loaded.tokenizer)

    def write_extra(folder: Path) -> None:
        if done.designer is not None:
            save_designer(done.designer, folder, fingerprint)
        plot_metrics(done.rows, folder / "vpretrain.png", title=f"vpretrain ({opts.method})")

    out = finish_run(done.model, loaded.tokenizer, opts.output, lineage, overwrite=opts.overwrite or opts.resume,
                     eval_after=opts.eval, result=done.train_result,
                     extra_files={"vpretrain_metrics.json": metrics_document(done.rows),
                                  "vpretrain_report.json": done.report},
                     write_extra=write_extra, plot_title=f"vpretrain ({opts.method})")
    tidy_run_dir(run_dir, opts.run_folder, resumable=False)  # a finished vpretrain run is not extended
    return out


__all__ = ["VPretrainOptions", "preflight_vpretrain", "run_vpretrain"]
