"""Quantization methods: BitNet b1.58 QAT (``bitnet-b158``) and post-training baselines.

Calling convention (see :mod:`lifecycle.methods.quantize.pipeline`): ``run(ctx: QuantizeContext) ->
dict``; the method leaves the model to save in ``ctx.model`` (and training rows in
``ctx.history``) and returns its report. Shared pieces: :mod:`.bitlinear` (the quantizers and the
BitLinear layer), :mod:`.export` (the packed / online checkpoint forms transformers loads).
"""
