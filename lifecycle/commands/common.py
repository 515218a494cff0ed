"""Pieces every command shares, re-exported from the library modules that own them."""

from __future__ import annotations

from lifecycle.finish import default_run_dir, finish_run
from lifecycle.options import EvalAfter, OutputOptions, split_csv
from lifecycle.train.engine import TrainConfig

__all__ = ["EvalAfter", "OutputOptions", "TrainConfig", "default_run_dir", "finish_run", "split_csv"]
