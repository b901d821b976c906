"""A checkpoint the size of Z-Image-Turbo with random weights, for GPU benchmarks without a download.

Same shapes as the published model, so step, encode and decode times are the real ones (the profile
in shared/data/h200-step-profile.json was made with such a pipeline): the transformer at diffusers'
ZImageTransformer2DModel defaults (dim 3840, 30 layers, 2 refiner layers, 30 heads: 6.15B parameters),
a Qwen3-4B-shaped text encoder (2560 hidden, 36 layers, 32 heads, 8 KV heads, vocabulary 151,936) and
the Flux VAE (128/256/512/512 channels, 2 layers a block). The tokenizer is the embedded models' small
BPE; ZImagePipeline pads every prompt to 512 tokens, so the text encoder's work does not depend on it.
Weights are drawn on the GPU in bfloat16 (seconds, where the CPU takes minutes) and saved with
`save_pretrained`, so the service and the bare loop load them through `from_pretrained` alike.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SEED = 20251126


def build_full_size(target: Path, device: str) -> Path:
    """Build the checkpoint into `target` (once) and return it."""
    if (target / "model_index.json").exists():
        return target
    import torch
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    from zimage_sse.pipeline import build_tokenizer

    torch.manual_seed(SEED)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device(device):
            text_encoder: Any = Qwen3Model(
                Qwen3Config(
                    vocab_size=151936,
                    hidden_size=2560,
                    intermediate_size=9728,
                    num_hidden_layers=36,
                    num_attention_heads=32,
                    num_key_value_heads=8,
                    head_dim=128,
                    max_position_embeddings=40960,
                    rope_theta=1_000_000.0,
                    tie_word_embeddings=True,
                )
            )
            transformer: Any = ZImageTransformer2DModel()
            vae: Any = AutoencoderKL(
                in_channels=3,
                out_channels=3,
                latent_channels=16,
                block_out_channels=(128, 256, 512, 512),
                down_block_types=["DownEncoderBlock2D"] * 4,
                up_block_types=["UpDecoderBlock2D"] * 4,
                layers_per_block=2,
                norm_num_groups=32,
                scaling_factor=0.3611,
                shift_factor=0.1159,
                use_quant_conv=False,
                use_post_quant_conv=False,
            )
    finally:
        torch.set_default_dtype(previous)
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
    pipe = ZImagePipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),
        transformer=transformer,
    )
    pipe.save_pretrained(target)
    del pipe, text_encoder, transformer, vae
    torch.cuda.empty_cache()
    return target
