"""Evaluation with lm-eval on the project's local benchmark files (see docs/eval.md).

``evaluate(model, tokenizer, tasks)`` scores an in-memory model; ``score_and_record`` and
``evaluate_folder`` also store the results beside a checkpoint and in its model card. Importing this
package is cheap: lm-eval is only imported when something is evaluated.
"""

from lifecycle.eval.harness import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_BOOTSTRAP_ITERS,
    DEFAULT_MAX_LENGTH,
    EVAL_RESULTS_FILE,
    EvalReport,
    check_task_names,
    ensure_offline_defaults,
    evaluate,
    evaluate_folder,
    local_task_names,
    parse_task_list,
    record_scores,
    render_tasks,
    rendered_tasks,
    score_and_record,
)

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_BOOTSTRAP_ITERS",
    "DEFAULT_MAX_LENGTH",
    "EVAL_RESULTS_FILE",
    "EvalReport",
    "check_task_names",
    "ensure_offline_defaults",
    "evaluate",
    "evaluate_folder",
    "local_task_names",
    "parse_task_list",
    "record_scores",
    "render_tasks",
    "rendered_tasks",
    "score_and_record",
]
