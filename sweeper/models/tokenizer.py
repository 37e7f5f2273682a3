"""Byte-level BPE tokenizers trained with `tokenizers`, wrapped for transformers."""
from __future__ import annotations

EOS = "<|endoftext|>"


def train_bpe_tokenizer(text: str, vocab_size: int, *, min_frequency: int = 2):
    """Returns a transformers PreTrainedTokenizerFast (byte-level BPE, GPT-2 style, with
    <|endoftext|> as bos/eos/unk/pad) trained on `text` to at most `vocab_size` tokens.
    Training is deterministic for the same text and settings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # Train on lines so that no merge spans a line break, as GPT-2's tokenizer never does.
    tok.train_from_iterator(text.split("\n"), trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=EOS, eos_token=EOS, unk_token=EOS, pad_token=EOS,
        model_max_length=1 << 30, clean_up_tokenization_spaces=False,
    )
