"""``v-pretraining``: a learned task designer shapes each target so the learner's gradient aligns with a
small downstream feedback set (Ke & Fanti 2026, arXiv 2601.22108, Algorithm 1, LM instantiation §3)."""

from __future__ import annotations

from lifecycle.methods.registry import register_method
from lifecycle.methods.vpretrain.options import VPretrainingOptions
from lifecycle.methods.vpretrain.pipeline import VPretrainContext
from lifecycle.methods.vpretrain.training import Schedule, VPretrainHooks


def build_designer(ctx: VPretrainContext):
    from lifecycle.methods.vpretrain.designer import TaskDesigner

    group: VPretrainingOptions = ctx.opts.method_options
    if group.designer_init is not None:
        from lifecycle.data.packing import tokenizer_fingerprint
        from lifecycle.methods.vpretrain.report import load_designer

        return load_designer(group.designer_init, tokenizer_fingerprint(ctx.tokenizer), group.alpha_max,
                             max(ctx.opts.block_size, 8))
    vocab = ctx.model.get_output_embeddings().weight.shape[0]
    return TaskDesigner(vocab, group.alpha_max, group.designer, max_positions=max(ctx.opts.block_size, 8),
                        seed=ctx.opts.train.seed)


@register_method("vpretrain", "v-pretraining", aliases=("vpretrain", "v-pretrain"),
                 paper="Ke & Fanti 2026, Learning What to Predict: Downstream-Guided Task Design for Continued "
                       "Pretraining (arXiv:2601.22108), Algorithm 1",
                 options=VPretrainingOptions, summary="designer-shaped top-K targets aligned with a feedback gradient")
def v_pretraining(ctx: VPretrainContext) -> VPretrainHooks:
    group: VPretrainingOptions = ctx.opts.method_options
    return VPretrainHooks(mode="designer", k=group.k, schedule=Schedule(every=group.every, burn_in=group.burn_in),
                          designer=build_designer(ctx), feedback=ctx.feedback, designer_lr=group.designer_lr,
                          align=group.align, reg_weight=group.reg_weight, align_layers=group.align_layers,
                          feedback_batch_size=group.feedback_batch_size, meta_length=group.meta_length,
                          random_g_down=group.random_g_down, seed=ctx.opts.train.seed,
                          meta_gradient=group.meta_gradient)
