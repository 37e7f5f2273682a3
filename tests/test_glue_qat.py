"""W8A8 QAT of sequence classifiers: attention_mask_value reaches the attention scores and
the quantizer ranges; bad input to the GLUE experiment is one line before Ray; the seed
table and the per-task leaderboard."""
import copy
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from sweeper.errors import ConfigError
from sweeper.jobs import JobContext
from sweeper.recipes.aimet_qat import AimetQATConfig, quantize_aimet_qat
from sweeper.tasks.glue import GlueTask, glue_evaluate

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tok(roberta_tok):
    return roberta_tok


@pytest.fixture(scope="module")
def clf(tok):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=66, type_vocab_size=1,
                        pad_token_id=tok.pad_token_id, num_labels=2, attn_implementation="eager")
    return RobertaForSequenceClassification(cfg).eval()


def _padded_batch(tok):
    from sweeper.tasks.glue import collate

    rows = tok(["a long first sentence with words", "short"], ["and its pair", "x"])["input_ids"]
    return collate(rows, tok.pad_token_id)


def test_mask_value_reaches_attention_scores(tok, clf):
    from sweeper.recipes.qat_models import prepare_classifier

    ids, mask = _padded_batch(tok)
    padded = mask == 0
    assert padded[1].any() and not padded[0].any()
    with torch.no_grad():
        reference = clf(input_ids=ids, attention_mask=mask).logits
    seen = {}
    for value in (-6.0, None):
        wrapped = prepare_classifier(copy.deepcopy(clf), value).eval()
        adds = [m.score_add for m in wrapped.modules() if hasattr(m, "score_add")]
        assert len(adds) == 1
        calls = []
        adds[0].register_forward_hook(lambda m, args, out: calls.append((args[0].clone(), args[1].clone(), out.clone())))
        with torch.no_grad():
            logits = wrapped(ids, mask)[0]
        scores, additive, masked = calls[0]
        want = torch.finfo(torch.float32).min if value is None else value
        # the additive mask: `value` on the padded keys of row 1, 0 everywhere else
        assert torch.equal(additive[1, 0, 0][padded[1]], torch.full((int(padded[1].sum()),), want))
        assert torch.count_nonzero(additive[0]) == 0 and torch.count_nonzero(additive[1, 0, 0][~padded[1]]) == 0
        # the scores softmax sees: raw scores + value on the padded keys
        assert torch.allclose(masked[1][..., padded[1]], scores[1][..., padded[1]] + want)
        assert torch.equal(masked[0], scores[0])
        # an unpadded row never sees the value: the classifier's own result
        assert torch.allclose(logits[0], reference[0], atol=1e-5)
        seen[value] = logits
        # softmax weight on padded keys: none with the dtype minimum, ~e^-6 relative with -6
        leak = torch.softmax(masked[1], -1)[..., padded[1]]
        assert torch.all(leak == 0) if value is None else torch.all(leak > 1e-4)
    # the dtype minimum is what transformers does itself
    assert torch.allclose(seen[None][1], reference[1], atol=1e-5)


def test_quantizer_range_differs_between_minus6_and_default(tok, clf):
    # SST-2: single short sentences, so every calibration batch is padded
    task = GlueTask(task="sst2", max_length=64, batch_size=16, max_eval_rows=16, max_train_rows=32)
    cache = {}
    ranges, scores = {}, {}
    for value in (-6.0, None):
        reports = []
        ctx = JobContext(device=torch.device("cpu"), tokenizer=tok, task=task, log=lambda s: None,
                         cached=lambda k, b: cache[k] if k in cache else cache.setdefault(k, b()),
                         report=lambda m, a=None: reports.append((m, a)))
        ctx.evaluate = lambda m: glue_evaluate(m, task, ctx)
        q = quantize_aimet_qat(clf, AimetQATConfig(epochs=0, batch_size=8, calibration_batches=1, clamp_value=None,
                                                   attention_mask_value=value), ctx)
        named = dict(q.model.named_modules())
        add = next(m for n, m in named.items() if n.endswith("score_add"))
        ranges[value] = (float(add.output_quantizers[0].get_min()), float(named["mask_scale"].output_quantizers[0].get_min()))
        assert q.info["attention_mask_value"] == ("dtype min" if value is None else value)
        assert reports and "encodings.json" in reports[-1][1] and "sst2_acc" in reports[-1][0]
        scores[value] = reports[-1][0]["glue_score"]
    # -6: the masked scores' range ends near -6; the default: near the float32 minimum
    assert -8.0 < ranges[-6.0][0] < -5.0 and ranges[-6.0][1] == pytest.approx(-6.0)
    assert ranges[None][0] < -1e37 and ranges[None][1] < -1e37


@pytest.mark.parametrize("value", [1.0, 0.0, float("nan")])
def test_nonnegative_attention_mask_value_refused(value):
    with pytest.raises(ConfigError) as e:
        AimetQATConfig(attention_mask_value=value)
    assert "\n" not in str(e.value) and "attention_mask_value" in str(e.value)


def _experiment_module():
    spec = importlib.util.spec_from_file_location("roberta_glue_qat_under_test", REPO / "experiments" / "roberta_glue_qat.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv,expect", [(["--task", "wnli", "--smoke"], "--task='wnli'"),
                                         (["--task", "qqp", "--smoke"], "QQP/dev.tsv")])
def test_bad_task_is_one_line_before_ray(data_dir, capsys, argv, expect):
    import ray

    assert _experiment_module().main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert expect in err and "\n" not in err
    assert not ray.is_initialized()


def test_experiment_validates_and_refuses_positive_mask_value(data_dir):
    mod = _experiment_module()
    exp = mod.experiment(smoke=True, task="all")
    exp.validate()  # the six local tasks; the classifiers are zoo names (not built by validation)
    assert exp.trial_task_fields() == ["task"]
    assert {t["task"] for t in exp.trials} == {"cola", "sst2", "mrpc", "stsb", "qnli", "rte"}
    exp.fixed["attention_mask_value"] = 3.0
    with pytest.raises(ConfigError) as e:
        exp.validate()
    assert "attention_mask_value" in str(e.value) and "\n" not in str(e.value)


def test_fixed_trials_and_job_keys(data_dir):
    from sweeper.plan import SweepPlan
    from sweeper.sweep import fixed_trial_space

    exp = _experiment_module().experiment(smoke=True, task="all")
    space, points = fixed_trial_space(exp)
    assert space["recipe"] == "aimet_qat"  # samples run the recipe
    fp32 = [p for p in points if p["recipe"] is None]
    assert len(fp32) == 6 and all(p["model"] == f"roberta-ref-{p['task']}" for p in fp32)
    plan = SweepPlan.of(exp, "ns", "cpu")
    assert plan.task_fields == ("task",)
    kind, spec = plan.trial_job(fp32[0], "t0")  # an FP32 trial: no recipe, its own model and task
    assert (kind, spec.recipe, spec.model) == ("cpu", None, fp32[0]["model"])
    assert spec.task_kwargs["task"] == fp32[0]["task"] and "task" not in spec.recipe_kwargs
    _, spec = plan.trial_job({**fp32[0], "recipe": "aimet_qat", "lr": 1e-4}, "t1")
    assert spec.recipe == "aimet_qat" and spec.recipe_kwargs["lr"] == 1e-4
    assert not {"task", "model", "recipe", "device"} & set(spec.recipe_kwargs)


def _summary():
    def trial(i, task, recipe, score, mask=None):
        return {"trial_id": f"t{i}", "status": "TERMINATED",
                "config": {"task": task, "recipe": recipe, "attention_mask_value": mask, "lr": 5e-5,
                           "model": f"roberta-ref-{task}"},
                "metrics": {"glue_score": score}}

    trials = [trial(0, "rte", None, 55.0), trial(1, "rte", "aimet_qat", 54.0, -6.0), trial(2, "rte", "aimet_qat", 50.0),
              trial(3, "mrpc", None, 80.0), trial(4, "mrpc", "aimet_qat", 81.0, -6.0), trial(5, "mrpc", "aimet_qat", 79.0)]
    return {"experiment": "glue", "metric": "glue_score", "mode": "max", "baseline": {"glue_score": 55.0},
            "eval_settings": {"task": "rte"}, "trials": trials}


def test_seed_table_and_mask_effect():
    from sweeper.reports.glue_table import COLUMNS, mask_value_effect, seed_table

    rows, cols = seed_table(_summary(), {"qqp": "GLUE qqp split 'dev' not found: looked for ..."})
    assert cols == [""] + list(COLUMNS.values()) + ["Avg"]
    fp32, w8 = rows
    assert (fp32["RTE (acc)"], fp32["MRPC (F1)"], fp32["Avg"]) == (55.0, 80.0, "67.50 (2 tasks)")
    assert (w8["RTE (acc)"], w8["MRPC (F1)"], w8["Avg"]) == (54.0, 81.0, "67.50 (2 tasks)")
    assert fp32["QQP (acc)"].startswith("n/a (no data here") and fp32["CoLA (MCC)"] == "n/a (not in this sweep)"
    eff = {r["task"]: r for r in mask_value_effect(_summary(), {"lr": 5e-5})}
    assert eff["rte"]["Δ (-6 minus dtype-min)"] == 4.0 and eff["mrpc"]["mask dtype-min"] == 79.0


def test_leaderboard_ranks_per_task():
    from sweeper.reports.leaderboard import build_board

    board = build_board([{**_summary(), "source": "s"}])
    assert board.group_by == "task"
    by_task = {g: [(r["rank"], r["trial_id"]) for r in rows] for g, rows in board.groups()}
    assert by_task["rte"] == [(1, "t0"), (2, "t1"), (3, "t2")] and by_task["mrpc"][0] == (1, "t4")
    mrpc_best = next(r for r in board.rows if r["trial_id"] == "t4")
    assert mrpc_best["Δ glue_score"] == pytest.approx(1.0)  # against MRPC's own FP32 trial
    with pytest.raises(ConfigError) as e:
        build_board([{**_summary(), "source": "s"}], group_by="lr")
    assert "task" in str(e.value)
    mixed = build_board([{**_summary(), "source": "s"}], group_by="lr", allow_mixed=True)
    assert [r["trial_id"] for r in mixed.rows if r["rank"] == 1] == ["t4"]


def test_summary_table_compares_each_task_with_its_own_fp32_trial():
    from sweeper.reports.summary_tables import summary_table

    summary = _summary()
    summary["trials"].append({"trial_id": "t6", "status": "TERMINATED", "metrics": {"glue_score": 0.0},
                              "config": {"task": "cola", "recipe": None, "model": "roberta-ref-cola"}})
    summary["trials"].append({"trial_id": "t7", "status": "TERMINATED", "metrics": {"glue_score": 3.0},
                              "config": {"task": "cola", "recipe": "aimet_qat", "model": "roberta-ref-cola"}})
    table = summary_table(summary)
    assert "fp32 baseline (rte)" in table  # the sweep's own baseline is its first task's
    lines = {ln.split()[0]: ln for ln in table.splitlines() if ln.strip().startswith("t")}
    assert "1.25" in lines["t4"]  # MRPC 81 vs MRPC's FP32 80, not vs the summary's RTE baseline 55
    # CoLA's FP32 MCC is 0: the difference is there, the ratio is left blank instead of dividing by zero
    assert "3" in lines["t7"] and "inf" not in lines["t7"]
