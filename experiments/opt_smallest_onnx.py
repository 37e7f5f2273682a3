"""The smallest ONNX model of OPT within 1% WikiText-2 perplexity of FP32.

First a sensitivity stage: every weight MatMul quantized alone with GPTQ 2-bit (block 32),
everything else in float, one job per layer over all workers; its ranking (most harmful
first) goes to every trial. Then the constrained search: the uniform-precision rows as
fixed trials (FP32; GPTQ and RTN at 4 and 8 bits over block sizes; GPTQ 2-bit), and
Optuna's multi-objective TPE over mixed precision: 2-bit weights with the k most
sensitive layers (`protected_layers`) kept at 4 or 8 bits, k and the block size searched,
RTN or GPTQ. Objectives: model size (min) then perplexity (min); constraint: perplexity at
most 1% above FP32. The pick is the smallest feasible model.

    python experiments/opt_smallest_onnx.py --smoke     # minutes on 2 CPU cores (opt-ref)
    sweeper sensitivity experiments/opt_smallest_onnx.py  # the stage alone
    ray job submit --working-dir . -- python experiments/opt_smallest_onnx.py

The model is `facebook/opt-125m` when the hub (or a local copy) is there, on windows of 2048
tokens over the whole test split; else the larger reference model `opt-ref-m` (`sweeper zoo
build opt-ref-m`, minutes on a GPU) on windows of its 256 positions over the first 65,536
test tokens; the smoke sweep runs on `opt-ref`. The stage measures each layer on the first
32,768 test tokens (8,192 in the smoke sweep).
"""
from ray import tune

from sweeper.experiment import Experiment
from sweeper.models.loading import resolve_default_model
from sweeper.tasks import WikiText2PPL

PROBE = {"algorithm": "gptq", "bits": 2, "block_size": 32}  # the sensitivity stage's recipe
UNIFORM = {"protected_layers": 0, "protected_bits": None}


def uniform_rows(smoke: bool) -> list[dict]:
    """Returns the fixed trials: FP32 and the uniform-precision configurations."""
    rows = [{"algorithm": "fp32", "bits": None, "block_size": None, **UNIFORM}]
    for algorithm in ("gptq",) if smoke else ("gptq", "rtn"):
        for block in (32, 128) if smoke else (32, 64, 128, 256):
            rows.append({"algorithm": algorithm, "bits": 4, "block_size": block, **UNIFORM})
    rows += [{"algorithm": "gptq", "bits": 8, "block_size": 128, "weight_format": "matmulnbits", **UNIFORM},
             {"algorithm": "gptq", "bits": 2, "block_size": 32, **UNIFORM}]
    return rows


def experiment(smoke: bool = False) -> Experiment:
    """Returns the constrained mixed-precision search; `smoke` makes it a short one."""
    model = resolve_default_model("facebook/opt-125m", fallback="opt-ref" if smoke else "opt-ref-m")
    reference = model.startswith("opt-ref")
    context = 128 if model == "opt-ref" else 256 if reference else 2048
    window = {"split": "test", "context_length": context, "stride": context, "batch_size": 8 if reference else 1}
    # the stage measures on the first part of the test text: a ranking, not a result
    probe_task = WikiText2PPL(**window, max_tokens=8192 if smoke else 32768)
    # opt-125m: the whole test split, as the seed reports it; the reference model: its first
    # 65,536 tokens (a quarter), so the search fits a 2-core machine in half an hour
    task = WikiText2PPL(**window, max_tokens=16384 if smoke else 65_536 if reference else None)
    layers = 12 if model == "opt-ref" else 36 if model == "opt-ref-m" else 72  # weight MatMuls
    ks = [k for k in (0, 1, 2, 3, 4, 6, 9, 12, 18, 24, 36) if k <= layers // 2]
    return Experiment(
        name="opt_smallest_onnx_smoke" if smoke else "opt_smallest_onnx",
        model=model,
        recipe="onnx_ptq",
        task=task,
        sensitivity=PROBE,
        sensitivity_task=probe_task,
        fixed={"calibration_samples": 16 if smoke else 64},
        trials=uniform_rows(smoke),
        search_space={
            "algorithm": tune.choice(["rtn", "gptq"]),
            "bits": 2,
            "block_size": tune.choice([32, 64, 128]),
            "protected_layers": tune.choice(ks),
            "protected_bits": tune.choice([4, 8]),
        },
        searcher="optuna",
        num_samples=4 if smoke else 24,
        objectives=[("model_size_mb", "min"), ("wikitext2_ppl", "min")],
        constraints=["wikitext2_ppl <= 1.01 * fp32"],
        device="cpu",
        scheduler="fifo",  # one report per trial
        seed=0,
        wandb_project="sweeper-opt-smallest",
    )


if __name__ == "__main__":
    from sweeper.cli import main_for_experiment_file

    raise SystemExit(main_for_experiment_file(__file__))
