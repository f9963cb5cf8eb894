"""A tiny UMT5 text side for the built-in Wan models: a byte-level tokenizer and a small encoder, built in code.

Real Wan folders ship google/umt5-xxl (a 250k SentencePiece vocabulary, a 4096-wide encoder). The
tiny models need neither a download nor a vocabulary file: every byte is one token (GPT-2's byte
alphabet through the `tokenizers` library, no merges), after T5's three specials
`<pad>`=0, `</s>`=1, `<unk>`=2, and `</s>` is appended like T5 does. `WanPipeline` calls it as it
calls the real one (padding to max_length, truncation, attention mask); it is saved with
`save_pretrained` and loads back through `AutoTokenizer`.
"""
from __future__ import annotations

from typing import Any

T5_SPECIAL_TOKENS = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in T5/UMT5
PAD_ID, EOS_ID = 0, 1
BYTE_VOCAB_SIZE = len(T5_SPECIAL_TOKENS) + 256
WAN_MAX_SEQUENCE_LENGTH = 512  # WanPipeline.__call__'s default


def byte_level_t5_tokenizer(max_length: int = WAN_MAX_SEQUENCE_LENGTH) -> Any:
    """A fast tokenizer with T5's specials over the 256 byte symbols; any text tokenizes."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(list(T5_SPECIAL_TOKENS) + alphabet)}
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    # T5 ends every sequence with </s>; truncation keeps it.
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=max_length)


def tiny_umt5_encoder(d_model: int = 32, seed: int = 0, *, layers: int = 2, heads: int = 4, d_kv: int = 8,
                      d_ff: int = 64) -> Any:
    """A small `UMT5EncoderModel` over the byte vocabulary, seeded weights; `d_model` is the transformer's text_dim."""
    import torch
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(vocab_size=BYTE_VOCAB_SIZE, d_model=d_model, d_kv=d_kv, num_heads=heads, d_ff=d_ff,
                        num_layers=layers, relative_attention_num_buckets=8, relative_attention_max_distance=16,
                        dropout_rate=0.0, pad_token_id=PAD_ID, eos_token_id=EOS_ID, decoder_start_token_id=PAD_ID)
    torch.manual_seed(seed)
    return UMT5EncoderModel(config).eval()
