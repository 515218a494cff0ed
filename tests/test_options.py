"""Options: a group given in part keeps the command's own defaults, and `lifecycle options` shows them."""

from __future__ import annotations

from lifecycle.options import options_yaml


def test_a_partial_group_merges_into_the_commands_defaults():
    from lifecycle.methods.prune.options import PruneOptions

    opts = PruneOptions(model="m", output="o", ratio=0.3, train={"lr": 2e-4})
    assert opts.train.lr == 2e-4
    # prune's recovery defaults, not TrainConfig's (warmup 20, cosine, weight decay 0.1, 200 steps)
    assert (opts.train.steps, opts.train.warmup_steps, opts.train.schedule, opts.train.weight_decay) == (0, 0, "wsd", 0.0)


def test_options_listing_shows_the_defaults_that_will_be_used():
    from lifecycle.methods.prune.options import PruneOptions

    lines = options_yaml(PruneOptions)
    start = lines.index("train:")
    group = lines[start + 1:start + 8]
    assert any(line.startswith("  steps: 0") for line in group), group
    assert any(line.startswith("  schedule: wsd") for line in group), group


def test_a_factor_that_rounds_to_the_same_depth_is_refused(tiny_checkpoint, tmp_path):
    import pytest

    from lifecycle.errors import LifecycleError
    from lifecycle.methods.grow.options import GrowOptions
    from lifecycle.methods.grow.planner import resolve_growth

    opts = GrowOptions(model=str(tiny_checkpoint), output=str(tmp_path / "out"), factor=1.2, plan=False)
    with pytest.raises(LifecycleError, match="equals the source's 2 layers .*factor 1.2"):
        resolve_growth(opts)
