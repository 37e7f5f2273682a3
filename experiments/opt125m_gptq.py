"""OPT-125m exported to ONNX, quantized with onnxruntime.quantization, swept.

First the seed's four rows as fixed trials (FP32; INT8 QDQ; QDQ + GPTQ 8-bit; MatMulNBits
GPTQ 4-bit) and RTN / GPTQ at 2 bits (the width below 4 that MatMulNBits reads; HQQ has
only 4) per block size, then a Tune search over algorithm (RTN, GPTQ, HQQ) x block size at
4 bits, with GPTQ's act-order and damping drawn per trial. Objective: WikiText-2 test perplexity
(min), with the model's size on disk beside it; at the end a table like the seed's and
the quality-vs-size Pareto front.

    python experiments/opt125m_gptq.py --smoke      # minutes on 2 CPU cores
    ray job submit --working-dir . -- python experiments/opt125m_gptq.py

The model is `facebook/opt-125m` when the hub (or a local copy) is there, evaluated on
windows of 2048 tokens as the seed is; else the reference model `opt-ref`
(`sweeper zoo build opt-ref`) on windows of its own 128 positions.
"""
import random

from ray import tune

from sweeper.experiment import Experiment
from sweeper.models.loading import resolve_default_model
from sweeper.tasks import WikiText2PPL

SEED_ROWS = [
    {"algorithm": "fp32", "bits": None, "block_size": None},
    {"algorithm": "int8_qdq", "bits": 8, "block_size": None},
    {"algorithm": "gptq", "bits": 8, "block_size": None},  # QDQ + GPTQ 8-bit
    {"algorithm": "gptq", "bits": 4, "block_size": 128},  # MatMulNBits GPTQ 4-bit
]


def _gptq_only(choices, default, rng: random.Random):
    """A Tune domain that draws from `choices` with `rng` for GPTQ trials and is `default`
    otherwise (other algorithms ignore the field, so drawing it for them would only add noise)."""
    return tune.sample_from(lambda spec: rng.choice(choices) if spec.config.algorithm == "gptq" else default)


def experiment(smoke: bool = False) -> Experiment:
    """Returns the OPT-125m ONNX PTQ sweep; `smoke` makes it a short one."""
    model = resolve_default_model("facebook/opt-125m", fallback="opt-ref")
    reference = model == "opt-ref"
    rng = random.Random(0)  # the same draws every run
    block_sizes = [32, 128] if smoke else [16, 32, 64, 128, 256]
    two_bit = [{"algorithm": a, "bits": 2, "block_size": b} for b in block_sizes[:1 if smoke else None] for a in ("rtn", "gptq")]
    space = {
        "algorithm": tune.grid_search(["rtn", "gptq", "hqq"]),
        "bits": 4,
        "block_size": tune.grid_search(block_sizes),
        "act_order": _gptq_only([False, True], False, rng),
        "damp_percent": _gptq_only([0.01, 0.05, 0.1], 0.01, rng),
    }
    fixed = {"calibration_samples": 16 if smoke else 64, "calibration_method": "minmax"}
    # Non-overlapping windows of the model's full length ("block 2048" for OPT-125m).
    context = None if reference else 2048
    stride = 128 if reference else 2048
    task = WikiText2PPL(split="test", context_length=context, stride=stride, batch_size=8 if reference else 1,
                        max_tokens=65_536 if smoke else None)
    return Experiment(
        name="opt125m_gptq_smoke" if smoke else "opt125m_gptq",
        model=model,
        recipe="onnx_ptq",
        task=task,
        search_space=space,
        fixed=fixed,
        trials=SEED_ROWS + two_bit,
        device="cpu",
        num_samples=1,  # RTN and HQQ are deterministic: a second pass would repeat them
        scheduler="fifo",  # one report per trial: nothing for ASHA to stop early
        seed=0,
        wandb_project="sweeper-opt125m-gptq",
    )


if __name__ == "__main__":
    from sweeper.cli import main_for_experiment_file

    raise SystemExit(main_for_experiment_file(__file__))
