"""Structured pruning methods: Adapt-Pruner (and Adapt-Accel), uniform Taylor, FLAP-style, depth.

One module per method over shared pieces: :mod:`.importance` (Taylor / layer-cosine / FLAP scores on
calibration text, and their cache), :mod:`.surgery` (removing KV groups with their query heads, MLP
channels and layers), :mod:`.plan` (targets, per-layer plans, analytic parameter counts). The
``lifecycle prune`` command (:mod:`lifecycle.commands.prune`) ties them to model I/O and training.
"""
