"""CLIP's real BPE tokenizer files (vocab.json, merges.txt) from the vocabulary shipped in the package.

Every SD text encoder (CLIP ViT-L, OpenCLIP ViT-H and bigG) tokenizes with the same 49 408-token
byte-pair encoding. It ships once, gzipped, in `configs/clip-bpe/` (MIT, see its LICENSE); the Hugging
Face files are derived from it exactly as CLIP's own `SimpleTokenizer` builds its table: the 256 byte
characters, the same with the end-of-word mark, one token per merge, then the two special tokens.
"""
from __future__ import annotations

import gzip
import json
from pathlib import Path

from .tokenizer import byte_alphabet

BPE_FILE = Path(__file__).resolve().parent / "configs" / "clip-bpe" / "bpe_simple_vocab_16e6.txt.gz"
MERGES = 49152 - 256 - 2  # CLIP keeps the first 48 894 merges of the file
VOCAB_SIZE = 49408


def clip_merges() -> list[str]:
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    return lines[1:MERGES + 1]  # line 0 is the file's version header


def write_clip_tokenizer_files(folder: Path) -> None:
    """Write vocab.json and merges.txt into `folder` (a tokenizer folder holding its tokenizer_config.json)."""
    merges = clip_merges()
    chars = byte_alphabet()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}, ensure_ascii=False),
                                       encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
