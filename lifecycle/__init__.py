"""lifecycle: take Hugging Face causal LMs through their whole life from one CLI."""

__version__ = "0.1.0"

# Pruned checkpoints whose layers differ in width use lifecycle's per-layer config classes; register
# them with transformers' Auto classes so `AutoModelForCausalLM.from_pretrained` loads them once
# `lifecycle` is imported. Deferred until transformers itself is imported, so this import stays cheap.
from lifecycle.model.pruned import install_registration_hook as _install_registration_hook  # noqa: E402

_install_registration_hook()
