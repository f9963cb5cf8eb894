"""A byte-level CLIP tokenizer built in code: the tiny models need no vocabulary download.

Every byte maps to one token (GPT-2's printable byte alphabet, with and without the end-of-word
mark), there are no merges, so any text tokenizes; it is saved with `save_pretrained` and loaded
back through `CLIPTokenizer.from_pretrained` like a real model's tokenizer.
"""
from __future__ import annotations


def byte_alphabet() -> list[str]:
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            codes.append(256 + extra)  # unprintable bytes move above 255, as in GPT-2's scheme
            extra += 1
    return [chr(c) for c in codes]


def byte_level_vocab() -> dict[str, int]:
    chars = byte_alphabet()
    vocab: dict[str, int] = {}
    for token in chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]:
        vocab[token] = len(vocab)
    return vocab


def byte_level_clip_tokenizer(max_length: int = 77):
    from transformers import CLIPTokenizer

    return CLIPTokenizer(vocab=byte_level_vocab(), merges=[], model_max_length=max_length)


VOCAB_SIZE = 514
BOS_ID = 512
EOS_ID = 513
