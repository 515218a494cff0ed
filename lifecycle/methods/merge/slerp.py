"""``slerp``: spherical interpolation between ``base_model`` (t = 0) and the other model (t = 1).

mergekit semantics: each tensor is flattened to float32; both are normalised (when their norm exceeds
1e-8), ``θ = arccos(dot)``; when ``|dot| > 0.9995`` it falls back to linear interpolation; else
``sin((1−t)θ)/sin θ · a + sin(tθ)/sin θ · b`` on the *unnormalised* tensors. ``t`` is a global
parameter and takes gradients (``t: [0, 0.5, 1]`` over the layers) and filters (``self_attn``, ``mlp``).
"""

from __future__ import annotations

import math

import torch

from lifecycle.methods.merge.common import ParamDef, TensorJob, merge_method

DOT_THRESHOLD = 0.9995
EPS = 1e-8


def slerp(t: float, v0: torch.Tensor, v1: torch.Tensor, dot_threshold: float = DOT_THRESHOLD, eps: float = EPS) -> torch.Tensor:
    """Spherical linear interpolation of two tensors, computed in float32 (returned in float32)."""
    a, b = v0.detach().float(), v1.detach().float()
    na, nb = torch.linalg.vector_norm(a), torch.linalg.vector_norm(b)
    ua = a / na if na > eps else a
    ub = b / nb if nb > eps else b
    dot = float((ua * ub).sum())
    if abs(dot) > dot_threshold:
        return (1 - t) * a + t * b
    theta0 = math.acos(dot)
    sin0 = math.sin(theta0)
    theta_t = theta0 * t
    s0 = math.sin(theta0 - theta_t) / sin0
    s1 = math.sin(theta_t) / sin0
    return s0 * a + s1 * b


@merge_method("slerp", paper="Shoemake 1985, Animating rotation with quaternion curves (SLERP); as in mergekit",
              summary="spherical interpolation base→other at t (per-layer gradients and filters)",
              parameters=(ParamDef("t", required=True),), needs_base=True, two_models=True)
def merge_slerp(job: TensorJob) -> torch.Tensor:
    base = job.tensors[job.base_index]
    other = job.tensors[1 - job.base_index]
    return slerp(float(job.params["t"]), base, other).to(base.dtype)
