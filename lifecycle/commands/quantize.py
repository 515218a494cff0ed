"""``lifecycle quantize``: BitNet b1.58 QAT and post-training baselines into checkpoints that load.

Methods (``--method``, registered in :mod:`lifecycle.methods.quantize`; ``lifecycle ls`` lists them):

* ``bitnet-b158`` — ternary weights and 8-bit activations trained with STE and a λ warm-up
  (:mod:`lifecycle.methods.quantize.bitnet`); exported packed (2-bit, transformers ``bitlinear``),
  online (fp master weights, transformers ``autobitlinear`` online) or as plain master weights.
* ``ternary-rtn`` — the same quantizers with no training.
* ``bnb-nf4`` / ``bnb-int8`` — bitsandbytes through transformers.

This module loads the model, calls :func:`lifecycle.methods.quantize.pipeline.quantize_model` and
finishes the output (with transformers' BitNet layers run eagerly, see
:func:`lifecycle.methods.quantize.export.eager_bitnet`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from lifecycle.commands import register
from lifecycle.errors import LifecycleError, TrainingInterrupted
from lifecycle.finish import default_run_dir, finish_run, finished_already, tidy_run_dir
from lifecycle.methods.quantize.options import QuantizeOptions


def _folder_quantization(spec: str) -> str | None:
    """A local folder's config.json quantization, read before anything checks its weight shapes."""
    config = Path(spec).expanduser() / "config.json"
    if not config.is_file():
        return None
    try:
        data = json.loads(config.read_text())
    except (OSError, ValueError):
        return None
    from lifecycle.methods.quantize.pipeline import already_quantized

    return already_quantized(type("C", (), {"quantization_config": data.get("quantization_config")})())


def preflight_quantize(opts: QuantizeOptions, *, pending_models: bool = False) -> None:
    from lifecycle import preflight as pf
    from lifecycle.methods.quantize import pipeline

    pf.check_output(opts.output, overwrite=opts.overwrite or opts.resume)
    trains = _trains(opts)
    if trains:
        pf.check_data(opts.data)
        if opts.resume:
            from lifecycle.methods.quantize.bitnet import QAT_RUN_SUBDIR

            pf.check_resume(opts.output, opts.train, strict=opts.resume_strict, subdir=QAT_RUN_SUBDIR)
    group = opts.method_options
    if group is not None and hasattr(group, "check"):
        group.check(opts)
    if not pending_models:
        found = _folder_quantization(opts.model)
        if found is not None:
            raise LifecycleError(f"model {opts.model} is already quantized (quantization_config: quant_method {found}); "
                                 "quantize its full-precision parent instead")
        info = pf.model_info(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
        if info.config is not None:
            pipeline.check_not_quantized(info.config, opts.model)
            if opts.export.startswith("packed") and opts.registered_method.name in pipeline.TERNARY_METHODS:
                _check_packable_config(info.config, opts.modules_to_not_convert)
        if trains:
            pf.check_positions(opts.block_size, info.max_positions, option="block_size")
    pf.check_eval(opts.eval)


def _check_packable_config(config, modules_to_not_convert: list[str]) -> None:
    """Output widths of the linears to convert, from a weightless (meta) model of the config."""
    import torch
    from transformers import AutoModelForCausalLM

    from lifecycle.methods.quantize.pipeline import linears_to_convert

    try:
        with torch.device("meta"):
            skeleton = AutoModelForCausalLM.from_config(config)
    except Exception:  # noqa: BLE001 - the pipeline checks the loaded model again
        return
    for name, m in linears_to_convert(skeleton, modules_to_not_convert):
        if m.out_features % 4:
            raise LifecycleError(f"{name} has {m.out_features} output features, not a multiple of 4: the BitNet packed "
                                 "format cannot store it (export=online, or add it to modules_to_not_convert)")


def _trains(opts: QuantizeOptions) -> bool:
    from lifecycle.methods.quantize import pipeline

    return opts.registered_method.name in pipeline.TRAINING_METHODS and opts.train.steps > 0


@register("quantize", QuantizeOptions, help="BitNet b1.58 ternary QAT (packed 2-bit export) and post-training baselines.",
          preflight=preflight_quantize)
def run_quantize(opts: QuantizeOptions) -> Path:
    from lifecycle.model.io import prepare_output_dir

    if opts.resume and not opts.overwrite and finished_already(opts):
        return Path(opts.output).expanduser().resolve()
    prepare_output_dir(opts.output, opts.overwrite or opts.resume)
    run_dir = default_run_dir(opts.output)
    # The run folder holds QAT checkpoints: kept when a run stops with one written (Ctrl-C, a crash),
    # for --resume; removed once the output is written. A folder that was there before (not ours,
    # not resumed) is left alone.
    ours = not run_dir.exists() or opts.resume
    try:
        out = _quantize_and_save(opts)
    except TrainingInterrupted as exc:
        if _has_checkpoint(run_dir):
            raise
        if ours:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise TrainingInterrupted(exc.step, exc.signum, None, resumable=False) from None
    except BaseException:
        if ours and not _has_checkpoint(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    if ours:
        tidy_run_dir(run_dir, opts.run_folder, resumable=False)  # finished_already: a finished QAT is not extended
    return out


def _has_checkpoint(run_dir: Path) -> bool:
    from lifecycle.methods.quantize.bitnet import QAT_RUN_SUBDIR

    return any((run_dir / QAT_RUN_SUBDIR / "checkpoints").glob("step-*"))


def _quantize_and_save(opts: QuantizeOptions) -> Path:
    from lifecycle.methods.quantize.export import eager_bitnet
    from lifecycle.methods.quantize.pipeline import quantize_model
    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import load_model

    found = _folder_quantization(opts.model)
    if found is not None:
        raise LifecycleError(f"model {opts.model} is already quantized (quantization_config: quant_method {found}); "
                             "quantize its full-precision parent instead")
    loaded = load_model(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
    model, report, history, data = quantize_model(opts, loaded)
    training = report.get("training") or {}
    lineage = new_lineage(
        command="quantize",
        method=f"quantize-{opts.method}",
        parents=[loaded.source],
        parent_lineages=[loaded.lineage],
        options=opts.model_dump(mode="json"),
        seed=opts.train.seed,
        data={"qat": data.describe()} if data is not None else {},
        tokens_seen=training.get("tokens_seen"),
    )
    lineage["metrics"] = {k: report[k] for k in ("method", "export", "converted_linears", "bit_budget")
                          if report.get(k) is not None}
    if training:
        lineage["metrics"]["training"] = training
    with eager_bitnet():
        return finish_run(model, loaded.tokenizer, opts.output, lineage, overwrite=opts.overwrite or opts.resume, eval_after=opts.eval,
                          history=history, extra_files={"quantize_report.json": report},
                          plot_title=f"quantize ({opts.method})")


__all__ = ["QuantizeOptions", "preflight_quantize", "run_quantize"]
