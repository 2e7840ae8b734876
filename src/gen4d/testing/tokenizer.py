"""A tiny CLIP BPE tokenizer written locally (no download): characters as tokens, a handful of merges.

Good enough to exercise the real ``CLIPTokenizer.from_pretrained`` path with tiny text encoders; the ids mean
nothing, but they are deterministic and distinct for distinct words.
"""

from __future__ import annotations

import json
import string
from pathlib import Path

SPECIAL = ["<|startoftext|>", "<|endoftext|>"]
_CHARS = string.ascii_lowercase + string.digits + ".,!?'-:;()"
_MERGES = [("t", "h"), ("th", "e</w>"), ("a", "n"), ("i", "n"), ("o", "n</w>"), ("e", "r</w>")]


def tiny_vocab() -> dict[str, int]:
    tokens = list(_CHARS) + [c + "</w>" for c in _CHARS] + ["".join(m) for m in _MERGES] + SPECIAL
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def write_tiny_clip_tokenizer(folder: str | Path, model_max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and ``tokenizer_config.json`` loadable by ``CLIPTokenizer``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in _MERGES) + "\n")
    config = {
        "model_max_length": model_max_length,
        "bos_token": SPECIAL[0],
        "eos_token": SPECIAL[1],
        "unk_token": SPECIAL[1],
        "pad_token": SPECIAL[1],
        "tokenizer_class": "CLIPTokenizer",
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "special_tokens_map.json").write_text(json.dumps({k: config[k] for k in ("bos_token", "eos_token", "unk_token", "pad_token")}))
    return folder
