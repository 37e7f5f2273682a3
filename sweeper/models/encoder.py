"""The reference encoder: a small RoBERTa pre-trained with masked LM on WikiText-2 text, and
its per-task GLUE classifiers, both built by the zoo (`zoo.build`) on a CPU, deterministically.

- `roberta` family: own byte-level BPE tokenizer with RoBERTa's special tokens and pair
  template (``<s> A </s></s> B </s>``), RobertaForMaskedLM trained with transformers'
  DataCollatorForLanguageModeling (15% of tokens; 80% <mask>, 10% random, 10% kept; seeded),
  the LM head applied to the masked positions only (the same loss, a fraction of the work).
- `roberta-cls` family: RobertaForSequenceClassification initialised from the built base
  (`spec.base`), fine-tuned on the task's training rows (`spec.train_rows` sampled with the
  spec's seed when fewer than the split holds; all when 0), scored on the task's dev split(s);
  STS-B gets a one-output regression head (MSE).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Callable

from .training import adamw_with_schedule, linear_schedule, train_epoch

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>", "<mask>")  # ids 0..4, RoBERTa's order


def train_roberta_tokenizer(text: str, vocab_size: int, *, max_length: int = 128):
    """Returns a transformers PreTrainedTokenizerFast (byte-level BPE trained on `text`, at
    most `vocab_size` tokens, RoBERTa's special tokens at ids 0..4 and its single/pair
    template). Deterministic for the same text and settings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=2, special_tokens=list(SPECIALS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(text.split("\n"), trainer=trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")),
                                                      trim_offsets=True, add_prefix_space=True)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                   cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                   model_max_length=max_length, clean_up_tokenization_spaces=False)


def roberta_config(spec, vocab_size: int, tok=None, **extra):
    """Returns the RobertaConfig of a spec: its architecture keywords, `vocab_size`, seq_len
    positions (+2: RoBERTa's position ids start after the padding index), one token type."""
    from transformers import RobertaConfig

    pad, bos, eos = (1, 0, 2) if tok is None else (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
    return RobertaConfig(vocab_size=vocab_size, max_position_embeddings=spec.seq_len + 2, type_vocab_size=1,
                         pad_token_id=pad, bos_token_id=bos, eos_token_id=eos, **spec.config_kwargs, **extra)


def build_mlm_into(spec, out: Path, log: Callable[[str], None], device) -> dict:
    """Trains the `roberta` spec and saves model, tokenizer and card.json into `out`;
    returns the card."""
    import torch
    import transformers
    from transformers import DataCollatorForLanguageModeling, RobertaForMaskedLM

    from ..data.wikitext import load_training_text
    from .zoo import device_description, parameter_counts

    t0 = time.perf_counter()
    text = load_training_text(spec.train_sources)
    tok = train_roberta_tokenizer(text.text, spec.vocab_size, max_length=spec.seq_len)
    ids = torch.tensor(tok(text.text, add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"])
    L = spec.seq_len - 2  # room for <s> and </s>
    n = len(ids) // L
    chunks = ids[: n * L].view(n, L)
    chunks = torch.cat([torch.full((n, 1), tok.bos_token_id), chunks, torch.full((n, 1), tok.eos_token_id)], 1)
    log(f"zoo {spec.name}: tokenizer vocab {len(tok)}, {len(ids):,} training tokens in {n} blocks of {spec.seq_len}")
    torch.manual_seed(spec.seed)
    model = RobertaForMaskedLM(roberta_config(spec, len(tok), tok)).to(device)
    collator = DataCollatorForLanguageModeling(tok, mlm_probability=0.15, seed=spec.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=spec.lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=spec.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, linear_schedule(spec.steps, spec.warmup_frac))
    gen = torch.Generator().manual_seed(spec.seed)
    order = torch.empty(0, dtype=torch.long)
    model.train()
    ema, t_train = None, time.perf_counter()
    for step in range(spec.steps):
        if len(order) < spec.batch_size:
            order = torch.cat([order, torch.randperm(n, generator=gen)])
        idx, order = order[: spec.batch_size], order[spec.batch_size :]
        batch = collator([{"input_ids": r} for r in chunks[idx].tolist()])
        # the LM head runs on the masked positions only (the others carry no loss): on a CPU
        # the full-vocabulary head over every position would cost more than the encoder
        labels = batch["labels"].to(device)
        hidden = model.roberta(input_ids=batch["input_ids"].to(device)).last_hidden_state
        picked = labels != -100
        loss = torch.nn.functional.cross_entropy(model.lm_head(hidden[picked]), labels[picked])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), spec.grad_clip)
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.9 * ema + 0.1 * loss.item()
        if (step + 1) % max(1, spec.steps // 10) == 0:
            log(f"zoo {spec.name}: step {step + 1}/{spec.steps} MLM loss {ema:.3f} ({time.perf_counter() - t0:.0f}s)")
    train_s = time.perf_counter() - t_train
    model.eval().to("cpu").save_pretrained(out)
    tok.save_pretrained(out)
    card = {"name": spec.name, "spec_hash": spec.spec_hash(), "description": spec.description, "family": spec.family,
            "architecture": {"model_class": type(model).__name__, "vocab_size": len(tok), "positions": spec.seq_len,
                             **spec.config_kwargs},
            "parameter_count": parameter_counts(model)["total"], "device": device_description(device),
            "training": {"dataset": text.dataset, "split": text.split, "source": text.source, "text_sha256": text.sha256,
                         "objective": "masked LM, 15% of tokens (80% <mask>, 10% random, 10% kept)",
                         "blocks": n, "steps": spec.steps, "batch_size": spec.batch_size, "seq_len": spec.seq_len,
                         "lr": spec.lr, "seed": spec.seed, "final_loss_avg": ema, "seconds": round(train_s, 2)},
            "seconds": round(time.perf_counter() - t0, 2),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    (out / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True))
    log(f"zoo {spec.name}: MLM loss {ema:.3f}, {card['seconds']:.0f}s")
    return card


def finetune_classifier(model, batches_fn, steps_per_epoch: int, *, epochs: int, lr: float, warmup_frac: float,
                        weight_decay: float, device, forward=None, check_cancelled=lambda: None,
                        log: Callable[[str], None] = print, label: str = "") -> list[float]:
    """Fine-tunes `model` in place with AdamW (linear warm-up over `warmup_frac` of the steps,
    then linear decay to 0) on batches from `batches_fn()` (one epoch each: (ids, mask, labels));
    `forward(ids, mask)` returns logits (default: the classifier's own). Returns the mean
    training loss of each epoch."""
    from ..tasks.glue import classification_loss, classifier_logits

    forward = forward or (lambda x, m: classifier_logits(model, x, m))
    opt, sched = adamw_with_schedule(model, lr=lr, weight_decay=weight_decay, total_steps=epochs * steps_per_epoch,
                                     warmup_frac=warmup_frac)

    def loss_of(batch):
        x, m, y = batch
        return classification_loss(forward(x.to(device), m.to(device)), y.to(device))

    losses = []
    model.train()
    for epoch in range(1, epochs + 1):
        losses.append(train_epoch(batches_fn(), loss_of, opt, sched, epoch=epoch, where=label,
                                  check_cancelled=check_cancelled))
        log(f"{label}: epoch {epoch}/{epochs} train loss {losses[-1]:.4f}")
    model.eval()
    return losses


def build_classifier_into(spec, out: Path, log: Callable[[str], None], device) -> dict:
    """Fine-tunes the `roberta-cls` spec from its built base and saves it into `out` with
    its dev metrics in card.json; returns the card."""
    import torch
    import transformers
    from transformers import AutoTokenizer, RobertaForSequenceClassification

    from ..jobs import JobContext
    from ..tasks.glue import GlueTask, glue_evaluate, task_info, training_batches
    from .zoo import build, device_description

    t0 = time.perf_counter()
    base = build(spec.base, log=log, device=device.type)
    info = task_info(spec.task)
    tok = AutoTokenizer.from_pretrained(str(base))
    torch.manual_seed(spec.seed)
    model = RobertaForSequenceClassification.from_pretrained(
        str(base), num_labels=info.num_labels,
        problem_type="regression" if info.is_regression else "single_label_classification").to(device)
    task = GlueTask(task=spec.task, max_length=spec.seq_len, max_train_rows=spec.train_rows or None, seed=spec.seed)
    batches, per_epoch, settings = training_batches(task, tok, spec.batch_size, spec.seed)
    epochs = spec.steps  # for classifiers `steps` counts epochs (see the spec's docstring)
    log(f"zoo {spec.name}: fine-tuning {spec.base} on {spec.task} ({settings['train_rows']} rows, {epochs} epochs)")
    losses = finetune_classifier(model, batches, per_epoch, epochs=epochs, lr=spec.lr, warmup_frac=spec.warmup_frac,
                                 weight_decay=spec.weight_decay, device=device, log=log, label=f"zoo {spec.name}")
    ctx = JobContext(device=device, tokenizer=tok)
    res = glue_evaluate(model, GlueTask(task=spec.task, max_length=spec.seq_len), ctx)
    model.to("cpu").save_pretrained(out)
    tok.save_pretrained(out)
    metrics = {k: v for k, v in res.items() if k != "eval_settings"}
    card = {"name": spec.name, "spec_hash": spec.spec_hash(), "description": spec.description, "family": spec.family,
            "base": spec.base, "task": spec.task, "architecture": {"model_class": type(model).__name__,
                                                                   "num_labels": info.num_labels, **spec.config_kwargs},
            "device": device_description(device),
            "training": {**settings, "epochs": epochs, "batch_size": spec.batch_size, "lr": spec.lr,
                         "warmup_frac": spec.warmup_frac, "seed": spec.seed, "train_losses": losses},
            "dev_metrics": metrics, "eval_settings": res["eval_settings"],
            "seconds": round(time.perf_counter() - t0, 2),
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    (out / "card.json").write_text(json.dumps(card, indent=2, sort_keys=True, default=str))
    log(f"zoo {spec.name}: dev {', '.join(f'{k} {v:.2f}' for k, v in metrics.items() if isinstance(v, float) and math.isfinite(v))} "
        f"({card['seconds']:.0f}s)")
    return card
