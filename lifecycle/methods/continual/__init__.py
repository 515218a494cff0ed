"""Continual-learning methods: OSFT, O-LoRA and the baselines, on one task-sequence runner.

Calling convention (see :mod:`lifecycle.methods.continual.base`): a method registers
``make(opts: ContinualOptions) -> ContinualMethod``; the runner
(:mod:`lifecycle.methods.continual.pipeline`) calls its task-boundary callbacks around the one
training engine, scores the sequence through lm-eval (:mod:`.tasks`) and reads AA/BWT/FWT from the
accuracy matrix (:mod:`.metrics`).
"""
