"""GPT-2 W4A16 with aimet QuantSim: which layers to keep at 8 bits.

First the sensitivity stage: each QuantSim module with a weight quantizer quantized alone
(4-bit weights, 16-bit activations, post-training: no fine-tuning), everything else in
float, one job per layer over all workers. Its ranking (most harmful first) reaches every
trial, and the trials are the uniform rows (W4A16, W8A16) and W4A16 with the k most
sensitive layers' weights at 8 bits, k = 2, 4, 8: how few layers buy back the 4-bit loss.

    python experiments/gpt2_mixed_precision.py --smoke   # a minute or two on 2 CPU cores
    sweeper sensitivity experiments/gpt2_mixed_precision.py

The model is `gpt2` when the hub (or a local copy) is there, else the reference model
`gpt2-ref`; the smoke sweep evaluates the first 8,192 test tokens, the full one 65,536.
"""
from sweeper.experiment import Experiment
from sweeper.models.loading import resolve_default_model
from sweeper.tasks import WikiText2PPL

POST_TRAINING = {"quant_scheme": "tf", "epochs": 0, "output_bw": 16, "input_quantization": False,
                 "clamp_value": None, "deploy_check": "off", "calibration_batches": 2, "seq_len": 128, "batch_size": 8}


def experiment(smoke: bool = False) -> Experiment:
    """Returns the sweep: sensitivity stage at W4A16, then k protected layers at 8 bits."""
    rows = [{"param_bw": 4, "protected_layers": k, "protected_bits": 8 if k else None} for k in (0, 2, 4, 8)]
    rows.append({"param_bw": 8, "protected_layers": 0, "protected_bits": None})
    return Experiment(
        name="gpt2_mixed_precision_smoke" if smoke else "gpt2_mixed_precision",
        model=resolve_default_model("gpt2", fallback="gpt2-ref"),
        recipe="aimet_qat",
        task=WikiText2PPL(split="test", max_tokens=8_192 if smoke else 65_536, batch_size=8),
        sensitivity={"param_bw": 4},
        sensitivity_views=("alone",),
        fixed=POST_TRAINING,
        trials=rows,
        search_space={},
        num_samples=0,
        device="cpu",
        scheduler="fifo",
        seed=0,
        wandb_project="sweeper-gpt2-mixed-precision",
    )


if __name__ == "__main__":
    from sweeper.cli import main_for_experiment_file

    raise SystemExit(main_for_experiment_file(__file__))
