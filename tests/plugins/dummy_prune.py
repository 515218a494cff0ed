"""A whole prune method in one file: what tests/test_registry.py shows the CLI, options and recipes see.

Loaded as a plugin (``LIFECYCLE_PLUGINS=dummy_prune`` with this folder on ``PYTHONPATH``); inside the
package the same file would sit in ``lifecycle/methods/prune/`` and need nothing else.
"""

from pydantic import BaseModel, ConfigDict, Field

from lifecycle.methods.registry import register_method


class DummyOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")

    drop_top: int = Field(1, ge=1, description="decoder layers removed from the top")


@register_method("prune", "dummy", paper="none (a test method)", options=DummyOptions, summary="drops the top layers")
def prune_dummy(ctx) -> dict:
    from lifecycle.methods.prune.surgery import drop_layers

    count = len(ctx.adapter.layers)
    dropped = list(range(count - ctx.opts.method_options.drop_top, count))
    drop_layers(ctx.adapter, dropped)
    return {"dropped": dropped}
