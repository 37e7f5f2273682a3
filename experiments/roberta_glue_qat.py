"""RoBERTa W8A8 quantization-aware training on the GLUE tasks, swept (the RoBERTa workload).

Per task: the FP32 classifier (a fixed trial, recipe None), the seed's W8A8 recipe with
attention_mask_value -6 and the same with the dtype-minimum mask (fixed trials: the mask
value's effect), then a Tune search over learning rate, epochs, batch size, warm-up, quant
scheme and attention_mask_value. Objective: `glue_score`, the task's seed-table metric
(max). `--task all` runs every task with data as one sweep (`task` is a config key), so the
worker pool and its caches are shared; at the end the seed-shaped table (rows FP32 and best
W8A8, columns the eight tasks and their average; `n/a (reason)` where a task has no data).

    python experiments/roberta_glue_qat.py --task all --smoke     # minutes on 2 CPU cores
    python experiments/roberta_glue_qat.py --task rte
    python experiments/roberta_glue_qat.py --task rte,cola --smoke   # a few tasks, one sweep
    ray job submit --working-dir . -- python experiments/roberta_glue_qat.py --task all --device cuda \
        --base roberta-ref-m

The model of task T is the reference classifier `BASE-T` (`sweeper zoo build roberta-ref-T`:
roberta-ref pre-trained with masked LM on WikiText-2, then fine-tuned on T). `--base
roberta-ref-m` takes the larger encoder (built in minutes on a GPU), which learns SST-2, MRPC,
QNLI and STS-B beyond their majority class, so quantization's effects show.
"""
import functools
import os

from ray import tune

from sweeper.experiment import Experiment
from sweeper.models.zoo import ENCODER_BASES, classifier_name, get_spec
from sweeper.tasks.glue import GlueTask

TASK_ENV = "SWEEPER_GLUE_TASK"  # what --task sets, for `sweeper run` and Ray jobs alike
BASE_ENV = "SWEEPER_GLUE_BASE"  # what --base sets
SEED_RECIPE = {"quant_scheme": "range_learning_tf", "lr": 5e-5, "epochs": 1, "batch_size": 32, "warmup_frac": 0.1}


def _model_of(base: str, spec) -> str:
    return classifier_name(spec.config.task, base)


def experiment(smoke: bool = False, task: str | None = None, base: str | None = None) -> Experiment:
    """Returns the GLUE W8A8 QAT sweep over `task` (a GLUE task name or "all": every task
    whose data is here) of the classifiers fine-tuned from encoder `base` (one of
    ENCODER_BASES); `smoke` makes it a short one."""
    from sweeper.errors import ConfigError
    from sweeper.tasks.glue.data import runnable_tasks

    task = task or os.environ.get(TASK_ENV, "all")
    base = base or os.environ.get(BASE_ENV, "roberta-ref")
    if base not in ENCODER_BASES:
        raise ConfigError("roberta_glue_qat", "--base", base, "one of " + ", ".join(ENCODER_BASES))
    names, _ = runnable_tasks(task)
    space = {
        "lr": tune.loguniform(1e-5, 5e-4),
        "epochs": tune.choice([1, 2] if smoke else [1, 2, 3]),
        "batch_size": tune.choice([16, 32]),
        "warmup_frac": tune.choice([0.0, 0.1]),
        "quant_scheme": tune.choice(["range_learning_tf", "tf", "tf_enhanced"]),
        "attention_mask_value": tune.choice([-6.0, None]),
        "model": tune.sample_from(functools.partial(_model_of, base)),
    }
    if len(names) > 1:
        space["task"] = tune.grid_search(names)
    # no clamp: the seed's encoder recipe; the mask value alone decides the masked scores' range
    fixed = {"param_bw": 8, "output_bw": 8, "input_quantization": True, "clamp_value": None, "calibration_batches": 4}
    if smoke:
        fixed.update(steps_per_epoch=15, calibration_batches=2)
    trials = []
    for t in names:
        row = {"model": classifier_name(t, base), **SEED_RECIPE}
        if len(names) > 1:
            row["task"] = t
        trials += [{**row, "recipe": None, "attention_mask_value": None},
                   {**row, "attention_mask_value": -6.0},
                   {**row, "attention_mask_value": None}]
    glue = GlueTask(task=names[0], max_length=get_spec(base).seq_len, batch_size=64,
                    # QAT trains on as many rows as the FP32 classifier was fine-tuned on (a seeded
                    # sample, in the settings); smoke: 1000
                    max_train_rows=1000 if smoke else get_spec(classifier_name(names[0], base)).train_rows or None)
    return Experiment(
        name=("roberta_glue_qat_smoke" if smoke else "roberta_glue_qat") + ("" if task == "all" else "_" + "_".join(names))
        + ("" if base == "roberta-ref" else "_" + base.replace("-", "_")),
        model=classifier_name(names[0], base),
        recipe="aimet_qat",
        task=glue,
        search_space=space,
        fixed=fixed,
        trials=trials,
        device="cpu",
        num_samples=1 if smoke else 8,  # per task: the grid over tasks repeats every sample
        scheduler="fifo",  # tasks' scores are not comparable: no early stopping across them
        seed=0,
        wandb_project="sweeper-roberta-glue",
    )


def main(argv=None) -> int:
    """`--task NAME|all` and `--base ENCODER` (checked before anything starts), then
    `sweeper run` on this file; prints the seed-shaped table from the summary and logs it to
    W&B. Returns the exit status."""
    import argparse
    import sys

    from sweeper.errors import ConfigError, SweeperError

    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--task", default="all")
    p.add_argument("--base", default="roberta-ref")
    p.add_argument("--summary")
    args, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    from sweeper.tasks.glue.data import runnable_tasks

    try:
        runnable_tasks(args.task)
        if args.base not in ENCODER_BASES:
            raise ConfigError("roberta_glue_qat", "--base", args.base, "one of " + ", ".join(ENCODER_BASES))
    except SweeperError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    os.environ[TASK_ENV], os.environ[BASE_ENV] = args.task, args.base
    base_part = "" if args.base == "roberta-ref" else "_" + args.base
    summary = args.summary or os.path.abspath(f"roberta_glue_qat_{args.task.replace(',', '_')}{base_part}"
                                              f"{'_smoke' if '--smoke' in rest else ''}.summary.json")
    from sweeper.cli import main_for_experiment_file

    rc = main_for_experiment_file(__file__, rest + ["--summary", summary])
    if rc == 0 or os.path.isfile(summary):
        from sweeper.reports.glue_table import report_seed_table

        report_seed_table(summary, args.task, pinned=SEED_RECIPE)
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
