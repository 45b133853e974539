"""The T5 text side that the digits text models built after digits-flow share: a word-level T5 tokenizer built
from the prompts' own words, and a tiny T5 encoder trained with the transformer from scratch.

Nothing is downloaded: the tokenizer is a T5 (SentencePiece-style Unigram) tokenizer whose pieces are the
prompt words; words score above characters, so a prompt word is always one piece, and any other text falls
back to single characters (or <unk>).
"""

from __future__ import annotations

from collections.abc import Iterable

from torch import nn

CHARACTERS = "abcdefghijklmnopqrstuvwxyz0123456789,./-'"
"""The fallback pieces for text outside the prompt vocabulary."""


def word_tokenizer(prompts: Iterable[str], max_tokens: int):
    """A T5 tokenizer (Unigram, Metaspace pre-tokenizer, </s> appended) in which every word of `prompts` is one
    piece, with a window of `max_tokens`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import T5TokenizerFast

    words = sorted({word for prompt in prompts for word in prompt.replace(",", " , ").split()})
    specials = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0)]
    vocab = specials + [(f"▁{word}", -1.0) for word in words] + [("▁", -5.0)] + [(c, -10.0) for c in CHARACTERS]
    model = Tokenizer(models.Unigram(vocab, unk_id=2, byte_fallback=False))
    model.pre_tokenizer = pre_tokenizers.Metaspace()
    model.decoder = decoders.Metaspace()
    model.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return T5TokenizerFast(
        tokenizer_object=model, eos_token="</s>", pad_token="<pad>", unk_token="<unk>", extra_ids=0,
        model_max_length=max_tokens,
    )  # fmt: skip


def t5_encoder(tokenizer, width: int, max_tokens: int, *, umt5: bool = False) -> nn.Module:
    """A 2-layer T5 encoder of width `width` over `tokenizer`'s vocabulary (relative positions up to
    `max_tokens`); UMT5's class where the pipeline expects it (Wan), which differs from T5 only in keeping a
    relative position bias per layer."""
    import transformers

    prefix = "UMT5" if umt5 else "T5"
    config = getattr(transformers, f"{prefix}Config")(
        vocab_size=len(tokenizer),
        d_model=width,
        d_kv=width // 4,
        d_ff=2 * width,
        num_layers=2,
        num_heads=4,
        relative_attention_num_buckets=16,
        relative_attention_max_distance=max_tokens,
        dropout_rate=0.0,
        feed_forward_proj="gated-gelu",
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id,
    )
    return getattr(transformers, f"{prefix}EncoderModel")(config)
