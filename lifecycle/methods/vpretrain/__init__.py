"""V-Pretraining methods (``lifecycle vpretrain``): a learned task designer shapes the learner's targets.

Calling convention (see :mod:`lifecycle.methods.vpretrain.pipeline`): ``run(ctx: VPretrainContext) ->
VPretrainHooks | None``; the method returns the hooks that shape the learner's loss on the engine
(``None``: the plain next-token loss). Shared pieces: :mod:`.designer` (the task designer),
:mod:`.targets` (candidate sets and soft targets), :mod:`.value` (``V = g_downᵀ g_pre`` and the
meta-objective), :mod:`.training` (the update schedule and resumable state as engine hooks).
"""
