"""GLUE readers, metrics and the task's evaluation: the six local tasks from the real files,
MNLI and QQP from release-format files written here, metrics against hand-computed values."""
import math

import pytest
import torch

from sweeper.errors import ConfigError, DataNotFoundError
from sweeper.jobs import JobContext
from sweeper.tasks.glue import (GlueTask, glue_avg, glue_evaluate, load_split, split_metrics, task_info,
                                task_splits)

# (task, train rows, eval split, eval rows) of the local release files (data README)
LOCAL = [("cola", 8551, "dev", 1043), ("sst2", 67349, "dev", 872), ("mrpc", 3668, "dev", 408),
         ("stsb", 5749, "dev", 1500), ("rte", 2490, "dev", 277)]


@pytest.mark.parametrize("task,n_train,split,n_dev", LOCAL)
def test_local_tasks_parse_with_release_row_counts(data_dir, task, n_train, split, n_dev):
    train, evals = task_splits(task)
    assert (len(train), [(e.split, len(e)) for e in evals]) == (n_train, [(split, n_dev)])
    assert train.skipped == 0 and evals[0].skipped == 0
    info = task_info(task)
    assert (train.text_b is None) == (info.hub_columns[1] is None)
    if info.is_regression:
        assert all(0.0 <= y <= 5.0 for y in train.labels)
    else:
        assert set(train.labels) == set(range(info.num_labels))


def test_release_quirks(data_dir):
    cola = load_split("cola", "dev")  # no header: the first data row is a sentence
    assert cola.text_a[0] == "The sailors rode the breeze clear of the rocks." and cola.labels[0] == 1
    mrpc = load_split("mrpc", "train")  # UTF-8 BOM before "Quality"
    assert mrpc.labels[:3] == [1, 0, 1] and mrpc.text_a[0].startswith("Amrozi accused his brother")
    quoted = [s for s in mrpc.text_a + mrpc.text_b if '"' in s]  # quotes are text, never CSV quoting
    assert len(mrpc) == 3668 and quoted and any(s.count('"') % 2 for s in quoted + load_split("rte", "train").text_a)


def test_qnli_without_train_halves_dev(data_dir):
    train, (dev,) = task_splits("qnli")
    assert (len(train), len(dev)) == (2731, 2732)
    assert "seeded half of dev" in train.note and dev.split == "dev_half_eval"
    assert not set(zip(train.text_a, train.text_b)) & set(zip(dev.text_a, dev.text_b)) - {("", "")}
    again, _ = task_splits("qnli")
    assert again.text_a == train.text_a  # fixed seed: the same halves every time


def _write(path, header, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join("\t".join(r) for r in ([header] if header else []) + rows) + "\n", encoding="utf-8")


@pytest.fixture()
def fixture_glue(tmp_path, monkeypatch):
    """A data folder holding MNLI and QQP in the release layout (a few rows each)."""
    g = tmp_path / "glue"
    mnli_train = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                  "sentence1_parse", "sentence2_parse", "sentence1", "sentence2", "label1", "gold_label"]
    mnli_dev = mnli_train[:11] + ["label2", "label3", "label4", "label5", "gold_label"]
    labels = ["entailment", "neutral", "contradiction"]
    row = lambda i, n: [str(i), "p", "q", "fiction", "(x)", "(y)", "(X)", "(Y)", f'He said "yes" {i}.', f"A {i}."] + \
        [labels[i % 3]] * (n - 10)
    _write(g / "MNLI" / "train.tsv", mnli_train, [row(i, 12) for i in range(9)])
    for split in ("dev_matched", "dev_mismatched"):
        _write(g / "MNLI" / f"{split}.tsv", mnli_dev, [row(i, 16) for i in range(6)])
    qqp = ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"]
    _write(g / "QQP" / "train.tsv", qqp, [[str(i), "1", "2", f"How {i}?", f"Why {i}?", str(i % 2)] for i in range(8)]
           + [["99", "broken row"]])
    _write(g / "QQP" / "dev.tsv", qqp, [[str(i), "1", "2", f"How {i}?", f"Why {i}?", str(i % 2)] for i in range(6)])
    monkeypatch.setenv("SWEEPER_DATA_DIR", str(tmp_path))
    return tmp_path


def test_mnli_qqp_from_release_files(fixture_glue):
    train, evals = task_splits("mnli")
    assert len(train) == 9 and [(e.split, len(e)) for e in evals] == [("dev_matched", 6), ("dev_mismatched", 6)]
    # gold_label is the last field; labels index ("contradiction", "entailment", "neutral")
    assert train.labels[:3] == [1, 2, 0] and train.text_a[0] == 'He said "yes" 0.'
    qtrain, (qdev,) = task_splits("qqp")
    assert (len(qtrain), qtrain.skipped, len(qdev)) == (8, 1, 6)


def test_metrics_against_hand_computed_values():
    labels, preds = [1, 0, 1, 1, 0, 1], [1, 0, 0, 1, 1, 1]
    # TP 3, FP 1, FN 1, TN 1: acc 4/6, F1 6/8, MCC (3-1)/sqrt(4*4*2*2) = 0.25
    assert split_metrics("mrpc", labels, preds) == pytest.approx({"mrpc_f1": 75.0, "mrpc_acc": 400 / 6})
    assert split_metrics("qqp", labels, preds) == pytest.approx({"qqp_f1": 75.0, "qqp_acc": 400 / 6})
    assert split_metrics("cola", labels, preds) == pytest.approx({"cola_mcc": 25.0})
    assert split_metrics("rte", labels, preds) == pytest.approx({"rte_acc": 400 / 6})
    assert split_metrics("mnli", [0, 1, 2, 2], [0, 1, 1, 2], "dev_mismatched") == {"mnli_mm_acc": 75.0}
    # Pearson: sum dy*dp = 11, sum dy^2 = 5, sum dp^2 = 26; Spearman: same order -> 1
    got = split_metrics("stsb", [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 5.0, 9.0])
    assert got == pytest.approx({"stsb_pearson": 100 * 11 / math.sqrt(130), "stsb_spearman": 100.0,
                                 "stsb_pred_std": math.sqrt(6.5)})
    # a collapsed regression head (one value for every pair) scores 0, not NaN: a trial, not an error
    assert split_metrics("stsb", [1.0, 2.0, 3.0], [2.5, 2.5, 2.5]) == {"stsb_pearson": 0.0, "stsb_spearman": 0.0,
                                                                      "stsb_pred_std": 0.0}
    assert glue_avg({"cola": {"cola_mcc": 25.0}, "rte": {"rte_acc": 75.0}, "qqp": {}}) == (50.0, 2)


def _tiny_classifier(tok, num_labels):
    from transformers import RobertaConfig, RobertaForSequenceClassification

    torch.manual_seed(0)
    cfg = RobertaConfig(vocab_size=len(tok), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=66, type_vocab_size=1,
                        pad_token_id=tok.pad_token_id, num_labels=num_labels)
    return RobertaForSequenceClassification(cfg).eval()


def _score(task, tok, max_eval_rows=24):
    cfg = GlueTask(task=task, max_length=64, batch_size=8, max_eval_rows=max_eval_rows)
    ctx = JobContext(device=torch.device("cpu"), tokenizer=tok)
    return glue_evaluate(_tiny_classifier(tok, task_info(task).num_labels), cfg, ctx)


@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "stsb", "qnli", "rte"])
def test_local_tasks_score_end_to_end(data_dir, roberta_tok, task):
    from sweeper.tasks.glue import SEED_COLUMNS, TASK_KEYS

    res = _score(task, roberta_tok)
    assert set(TASK_KEYS[task]) <= set(res) and res["glue_score"] == res[SEED_COLUMNS[task]]
    assert res["glue_eval_rows"] == 24 and res["eval_settings"]["unit"] == "percent"
    if task == "qnli":
        assert "seeded half of dev" in res["eval_settings"]["note"]


def test_mnli_qqp_score_end_to_end(fixture_glue, roberta_tok):
    mnli = _score("mnli", roberta_tok, None)
    assert set(mnli) >= {"mnli_acc", "mnli_mm_acc"} and mnli["glue_eval_rows"] == 12
    assert 0 <= mnli["mnli_acc"] <= 100
    qqp = _score("qqp", roberta_tok, None)
    assert set(qqp) >= {"qqp_acc", "qqp_f1"} and qqp["glue_score"] == qqp["qqp_acc"]


def test_pair_template(roberta_tok):
    ids = roberta_tok("a b", "c")["input_ids"]
    s, e = roberta_tok.bos_token_id, roberta_tok.eos_token_id
    assert ids[0] == s and ids[-1] == e and ids.count(e) == 3  # <s> A </s></s> B </s>


def test_bad_task_and_split_are_one_line(fixture_glue):
    with pytest.raises(ConfigError) as e:
        GlueTask(task="wnli")
    assert "\n" not in str(e.value) and "rte" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_split("rte", "dev_matched")
    assert "\n" not in str(e.value) and "one of train, dev" in str(e.value)
    with pytest.raises(DataNotFoundError) as e:  # the fixture folder holds only MNLI and QQP
        GlueTask(task="rte").check_data()
    msg = str(e.value)
    assert "\n" not in msg and "RTE/dev.tsv" in msg and str(fixture_glue) in msg
