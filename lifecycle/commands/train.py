"""``lifecycle train``: pretrain a model from a config, or continue pretraining a checkpoint.

This is also the baseline every growth method is compared with: same engine, same data, same
token accounting.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from lifecycle.commands import register
from lifecycle.errors import LifecycleError
from lifecycle.finish import default_run_dir, finish_run, finished_already, tidy_run_dir
from lifecycle.options import EvalAfter, TextDataOptions, RunFolder, run_folder_field
from lifecycle.train.engine import TrainConfig


class TrainOptions(TextDataOptions):
    model: str | None = Field(None, description="checkpoint to continue pretraining (folder, Hub id, .gguf, smollm2)")
    config: str | None = Field(None, description="model config for training from scratch: micro, tiny, small or a .json")
    output: str = Field(..., description="folder for the checkpoint")
    overwrite: bool = False
    run_folder: RunFolder = run_folder_field()
    resume: bool = Field(False, description="continue from the latest checkpoint in the run folder")
    resume_strict: bool = Field(False, description="with resume: refuse to start when there is no checkpoint")
    deepspeed: str | None = Field(None, description="DeepSpeed ZeRO config JSON (recipes/deepspeed/zero2.json, zero3.json)")
    allow_pickle: bool = False
    trust_remote_code: bool = False
    train: TrainConfig = Field(default_factory=TrainConfig)
    eval: EvalAfter = Field(default_factory=EvalAfter)

    @model_validator(mode="after")
    def _one_source(self) -> "TrainOptions":
        if (self.model is None) == (self.config is None):
            raise ValueError("give exactly one of model (continue pretraining) or config (from scratch)")
        return self


def build_start_model(opts: TrainOptions):
    """(model, tokenizer, corpus, parent lineage, parent spec) for a train run."""
    from lifecycle.data import build_tokenizer, load_corpus
    from lifecycle.model.io import load_model
    from lifecycle.model.presets import build_model, make_config

    corpus = load_corpus(opts.data)
    if opts.config is not None:
        tokenizer = build_tokenizer(opts.tokenizer, corpus)
        config = make_config(opts.config, vocab_size=len(tokenizer), eos_token_id=tokenizer.eos_token_id)
        if opts.block_size > config.max_position_embeddings:
            raise LifecycleError(
                f"block size {opts.block_size} exceeds the model's max_position_embeddings {config.max_position_embeddings}"
            )
        model = build_model(config, seed=opts.train.seed)
        return model, tokenizer, corpus, {}, None
    loaded = load_model(opts.model, allow_pickle=opts.allow_pickle, trust_remote_code=opts.trust_remote_code)
    return loaded.model, loaded.tokenizer, corpus, loaded.lineage, loaded.source


def preflight_train(opts: TrainOptions, *, pending_models: bool = False) -> None:
    from lifecycle import preflight as pf

    pf.check_output(opts.output, overwrite=opts.overwrite or opts.resume)
    pf.check_start(opts, pending_models=pending_models)
    pf.check_deepspeed(opts.deepspeed)
    pf.check_eval(opts.eval)
    if opts.resume:
        pf.check_resume(opts.output, opts.train, strict=opts.resume_strict)


@register("train", TrainOptions, help="Pretrain from a config, or continue pretraining a checkpoint.",
          preflight=preflight_train,
          paper="AdamW (Loshchilov & Hutter 2019, arXiv:1711.05101); WSD schedule (Hu et al. 2024, MiniCPM, arXiv:2404.06395)")
def run_train(opts: TrainOptions) -> Path:
    from lifecycle.data import pack
    from lifecycle.model.card import new_lineage
    from lifecycle.model.io import prepare_output_dir
    from lifecycle.train.engine import make_accelerator, train

    if opts.resume and not opts.overwrite and finished_already(opts):
        return Path(opts.output).expanduser().resolve()
    prepare_output_dir(opts.output, opts.overwrite or opts.resume)
    model, tokenizer, corpus, parent_lineage, parent = build_start_model(opts)
    data = pack(corpus, tokenizer, opts.block_size, val_fraction=opts.val_fraction, max_train_tokens=opts.max_train_tokens)
    accelerator = make_accelerator(opts.train, opts.deepspeed, logging_dir=default_run_dir(opts.output) / "logs")
    result = train(
        model,
        data,
        opts.train,
        default_run_dir(opts.output),
        resume="strict" if opts.resume and opts.resume_strict else opts.resume,
        accelerator=accelerator,
        description="train",
    )
    out = Path(opts.output).expanduser().resolve()
    if accelerator.is_main_process:
        lineage = new_lineage(
            command="train",
            method="pretrain" if parent is None else "continued-pretraining",
            parents=[parent] if parent else [],
            parent_lineages=[parent_lineage],
            options=opts.model_dump(mode="json"),
            seed=opts.train.seed,
            data=data.describe(),
            tokens_seen=result.tokens_seen,
            relation="finetune" if parent else None,
        )
        finish_run(
            result.model,
            tokenizer,
            out,
            lineage,
            overwrite=opts.overwrite or opts.resume,
            eval_after=opts.eval,
            result=result,
        )
        tidy_run_dir(default_run_dir(opts.output), opts.run_folder, resumable=True)  # a longer train.steps resumes
    accelerator.wait_for_everyone()
    return out
