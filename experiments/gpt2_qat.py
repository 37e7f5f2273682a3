"""GPT-2 W8A8 quantization-aware training, swept (the AIMET model zoo GPT-2 recipe).

Recipe: weights 8-bit symmetric, activations 8-bit asymmetric, bias not quantized, model
inputs quantized, range learning with TF init, clamped initialisation; then QAT on
WikiText-2 training text. Metric: WikiText-2 test perplexity (sliding window).

    python experiments/gpt2_qat.py --smoke          # minutes on 2 CPU cores
    ray job submit --working-dir . -- python experiments/gpt2_qat.py --device cuda

The model is `gpt2` when the hub (or a local copy) is there, else the reference model
`gpt2-ref` that `sweeper zoo build gpt2-ref` trains on this machine.
"""
from ray import tune

from sweeper.experiment import Experiment
from sweeper.models.loading import resolve_default_model
from sweeper.tasks import WikiText2PPL


def experiment(smoke: bool = False) -> Experiment:
    """Returns the GPT-2 W8A8 QAT sweep; `smoke` makes it a few short trials."""
    space = {
        "lr": tune.loguniform(1e-5, 1e-3),
        "epochs": tune.choice([1, 2] if smoke else [1, 2, 3]),
        "weight_decay": tune.choice([0.0, 0.01, 0.1]),
        "quant_scheme": tune.choice(["range_learning_tf", "tf", "tf_enhanced", "percentile"]),
        "output_bw": tune.choice([8, 16]),
        "per_channel": tune.choice([False, True]),
    }
    fixed = {"param_bw": 8, "input_quantization": True, "clamp_value": 30.0, "batch_size": 8}
    if smoke:
        # Short epochs and a 4k-token slice of the test split keep a trial well under a minute
        # on a CPU; the deployed graph's export (~10 s here) is checked once per trial, not per epoch.
        fixed.update(steps_per_epoch=12, calibration_batches=4, seq_len=128, deploy_check="last_report")
        task = WikiText2PPL(split="test", max_tokens=4_096, batch_size=8)
    else:
        task = WikiText2PPL(split="test", batch_size=8)
    return Experiment(
        name="gpt2_qat_smoke" if smoke else "gpt2_qat",
        model=resolve_default_model("gpt2", fallback="gpt2-ref"),
        recipe="aimet_qat",
        task=task,
        search_space=space,
        fixed=fixed,
        device="cpu",
        num_samples=4 if smoke else 32,
        scheduler="asha",
        grace_period=2,
        seed=0,
        wandb_project="sweeper-gpt2-qat",
    )


if __name__ == "__main__":
    from sweeper.cli import main_for_experiment_file

    raise SystemExit(main_for_experiment_file(__file__))
