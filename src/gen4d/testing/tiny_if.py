"""A tiny random-weight DeepFloyd IF stage I look-alike in the diffusers layout: the real classes
(``UNet2DConditionModel`` with ``SimpleCrossAttn`` blocks, T5 text projection and 6 output channels, ``T5EncoderModel``,
a fast tokenizer, ``DDPMScheduler`` with IF's cosine schedule and learned variance), tiny sizes, 16 x 16 pixels."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DConditionModel
from transformers import PreTrainedTokenizerFast, T5Config, T5EncoderModel

from .components import write_model_index

T5_DIM = 32


def write_tiny_t5_tokenizer(folder: Path) -> PreTrainedTokenizerFast:
    """Characters as tokens (a BPE without merges), ``<pad>`` 0, ``</s>`` 1, ``<unk>`` 2."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for c in string.ascii_letters + string.digits + string.punctuation:
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=77)
    fast.save_pretrained(folder)
    return fast


def make_tiny_if(folder: str | Path, seed: int = 0) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(
            sample_size=16, in_channels=3, out_channels=6, layers_per_block=1, block_out_channels=(32, 64),
            down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
            up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
            mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=64, encoder_hid_dim=T5_DIM,
            encoder_hid_dim_type="text_proj", addition_embed_type="text", addition_embed_type_num_heads=2,
            attention_head_dim=16, norm_num_groups=8, resnet_time_scale_shift="scale_shift", cross_attention_norm="group_norm",
            act_fn="gelu",
        )
        torch.manual_seed(seed + 1)
        tokenizer = write_tiny_t5_tokenizer(folder / "tokenizer")
        text = T5EncoderModel(T5Config(vocab_size=len(tokenizer), d_model=T5_DIM, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
                                       pad_token_id=0, eos_token_id=1, decoder_start_token_id=0))
    finally:
        torch.random.set_rng_state(state)
    unet.save_pretrained(folder / "unet")
    text.save_pretrained(folder / "text_encoder")
    DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", variance_type="learned_range",
                  prediction_type="epsilon", clip_sample=True).save_pretrained(folder / "scheduler")
    write_model_index(folder, "IFPipeline", {"scheduler": ("diffusers", "DDPMScheduler"), "text_encoder": ("transformers", "T5EncoderModel"),
                                            "tokenizer": ("transformers", "T5Tokenizer"), "unet": ("diffusers", "UNet2DConditionModel")})
    return folder
