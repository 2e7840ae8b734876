"""Textual inversion: a learned token embedding added to a CLIP tokenizer and text encoder.

:func:`load_textual_inversion` reads the diffusers ``learned_embeds.bin`` format (``{"<token>": tensor[D]}``), the
same in safetensors, and the A1111 / ``emb_params`` variants; the token is added to the tokenizer and its vector
written into the (resized) token-embedding table of the text encoder.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file
from torch import Tensor

from .. import Gen4DError


def read_textual_inversion(path_or_dict: str | Path | Mapping, token: str | None = None) -> tuple[str, Tensor]:
    """``(token, vectors [N, D])`` from a textual-inversion file or an already loaded state dict.

    Formats: diffusers ``{"<token>": tensor[D] or [N, D]}`` (``learned_embeds.bin`` / ``.safetensors``),
    A1111 ``{"string_to_param": {"*": tensor[N, D]}, "name": ...}`` and ``{"emb_params": tensor[N, D]}``.
    ``token`` overrides the stored name (needed for the formats that have none).
    """
    if isinstance(path_or_dict, Mapping):
        state = dict(path_or_dict)
        source = "the given dict"
    else:
        path = Path(path_or_dict)
        if path.is_dir():
            for name in ("learned_embeds.safetensors", "learned_embeds.bin"):
                if (path / name).exists():
                    path = path / name
                    break
        if not path.is_file():
            raise Gen4DError(f"textual inversion file {str(path)!r} does not exist")
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
        source = str(path)

    if "string_to_param" in state:  # A1111
        vec = next(iter(state["string_to_param"].values()))
        name = state.get("name")
    elif "emb_params" in state:
        vec, name = state["emb_params"], None
    elif len(state) == 1:
        name, vec = next(iter(state.items()))
    else:
        raise Gen4DError(f"{source} is not a textual-inversion embedding (keys: {sorted(state)[:5]})")
    token = token or name
    if not token:
        raise Gen4DError(f"{source} stores no token name; pass token='<name>'")
    if not isinstance(vec, Tensor):
        raise Gen4DError(f"{source}: the embedding of {token!r} is not a tensor")
    vec = vec.detach().float()
    if vec.dim() == 1:
        vec = vec[None]
    if vec.dim() != 2:
        raise Gen4DError(f"{source}: embedding of shape {tuple(vec.shape)}, expected [D] or [N, D]")
    return str(token), vec


def textual_inversion_tokens(token: str, num_vectors: int) -> list[str]:
    """Tokens for an ``num_vectors``-vector embedding: ``token, token_1, ...`` (the diffusers convention)."""
    return [token] + [f"{token}_{i}" for i in range(1, num_vectors)]


def expand_textual_inversion_prompt(prompt: str, token: str, num_vectors: int) -> str:
    """Replace ``token`` in ``prompt`` by all its vector tokens (a no-op for single-vector embeddings)."""
    if num_vectors <= 1:
        return prompt
    return prompt.replace(token, " ".join(textual_inversion_tokens(token, num_vectors)))


def load_textual_inversion(tokenizer, text_encoder, path_or_dict: str | Path | Mapping, token: str | None = None) -> list[str]:
    """Add a learned token to ``tokenizer`` and write its vector(s) into ``text_encoder``'s embedding table.

    Returns the added tokens (one per vector; multi-vector prompts need :func:`expand_textual_inversion_prompt`).
    Loading the same token again overwrites its vector; a token that is an ordinary word of the vocabulary is
    refused.
    """
    token, vectors = read_textual_inversion(path_or_dict, token)
    emb = text_encoder.get_input_embeddings()
    if vectors.shape[1] != emb.weight.shape[1]:
        raise Gen4DError(
            f"textual inversion {token!r} has dimension {vectors.shape[1]}, but the text encoder's token embeddings "
            f"have {emb.weight.shape[1]} (an embedding trained for another model?)"
        )
    tokens = textual_inversion_tokens(token, vectors.shape[0])
    added = tokenizer.get_added_vocab()
    for tok in tokens:
        if tok not in added and tok in tokenizer.get_vocab():
            raise Gen4DError(f"textual inversion token {tok!r} is already a word of the tokenizer's vocabulary")
    tokenizer.add_tokens([tok for tok in tokens if tok not in added])
    ids = tokenizer.convert_tokens_to_ids(tokens)
    if len(tokenizer) > emb.weight.shape[0]:
        text_encoder.resize_token_embeddings(len(tokenizer))
        emb = text_encoder.get_input_embeddings()
    with torch.no_grad():
        for i, vec in zip(ids, vectors):
            emb.weight[i] = vec.to(emb.weight)
    return tokens
