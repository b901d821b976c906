"""Loading Z-Image pipelines: real checkpoints, and the embedded `tiny` and `demo` models.

The embedded models have the Z-Image architecture (ZImageTransformer2DModel, a Qwen3 text encoder,
a 16-channel AutoencoderKL, FlowMatchEulerDiscreteScheduler) with random weights from a fixed seed.
They are built offline on first use, saved with `save_pretrained`, and from then on loaded with
`ZImagePipeline.from_pretrained` exactly like a downloaded checkpoint. Their images are noise.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .config import EMBEDDED_MODELS

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EmbeddedSpec:
    text_hidden: int
    text_layers: int
    dim: int
    layers: int
    heads: int
    vae_channels: tuple[int, int, int, int]


# tiny: a 256² 8-step job in well under a second on 2 CPU cores (tests).
# demo: a 1024² 8-step job in about 10 s on 2 CPU cores (≈0.75 s a step, ≈3.5 s decode), slow
# enough to watch the bar move.
EMBEDDED: dict[str, EmbeddedSpec] = {
    "tiny": EmbeddedSpec(text_hidden=32, text_layers=1, dim=64, layers=1, heads=2, vae_channels=(8, 8, 8, 8)),
    "demo": EmbeddedSpec(
        text_hidden=64, text_layers=2, dim=256, layers=4, heads=4, vae_channels=(32, 32, 64, 64)
    ),
}
EMBEDDED_SEED = 20251126
# Bump when the embedded architecture changes so old builds in a data directory are rebuilt.
EMBEDDED_VERSION = "1"

# A small corpus for the byte-level BPE of the embedded tokenizer; any text works, the weights are random.
_CORPUS = (
    "a photograph of a red fox in the snow at dawn, soft light, shallow depth of field",
    "an oil painting of a lighthouse on a cliff during a storm, dramatic clouds",
    "a bowl of ramen on a wooden table, steam rising, cinematic lighting",
    "portrait of an astronaut in a sunflower field, 35mm film, golden hour",
    "isometric illustration of a tiny city with trains, bridges and a harbour",
)
# Qwen3-style chat template: ZImagePipeline wraps each prompt as a user message.
_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def is_embedded(model: str) -> bool:
    return model in EMBEDDED_MODELS


class DeviceError(ValueError):
    """A device named in --device / ZIMAGE_SSE_DEVICE that this machine does not have."""


def available_devices() -> list[str]:
    return [f"cuda:{index}" for index in range(torch.cuda.device_count())] + ["cpu"]


def resolve_devices(spec: str) -> list[str]:
    """The devices to run a worker on, from `auto` (every CUDA device, else the CPU) or a
    comma-separated list: cuda, cuda:N, cpu, and cpu:N for several CPU workers sharing the cores (each
    with its own copy of the model). DeviceError names a device that does not exist, and what does."""
    names = [part.strip() for part in spec.split(",") if part.strip()] or ["auto"]
    if names == ["auto"]:
        return [name for name in available_devices() if name.startswith("cuda")] or ["cpu"]
    seen: dict[str, str] = {}
    for name in names:
        kind, colon, index = name.partition(":")
        if kind not in ("cuda", "cpu") or (colon and not index.isdigit()):
            raise DeviceError(
                f"unknown device {name!r}: use auto, cuda, cuda:N, cpu or cpu:N; "
                f"this machine has {', '.join(available_devices())}"
            )
        if kind == "cuda" and int(index or 0) >= torch.cuda.device_count():
            raise DeviceError(
                f"device {name} does not exist: this machine has {', '.join(available_devices())}"
            )
        canonical = f"{kind}:{int(index or 0)}"
        if canonical in seen:
            raise DeviceError(f"device {name} is listed twice (as {seen[canonical]} too)")
        seen[canonical] = name
    return names


def resolve_device(device: str) -> str:
    """One device: `auto` is the first of resolve_devices."""
    return resolve_devices(device)[0]


def torch_device(device: str) -> str:
    """What torch calls a device of ours: every cpu:N worker computes on the one CPU device."""
    return "cpu" if device.startswith("cpu") else device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        value = getattr(torch, dtype)
    except AttributeError:
        raise ValueError(f"unknown dtype {dtype!r} (try float32, bfloat16 or float16)") from None
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r} (try float32, bfloat16 or float16)")
    return value


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


# One load at a time in a process: from_pretrained builds each model on torch's meta device through
# process-wide patches (accelerate's init_empty_weights), so two workers loading at once on two threads
# saw each other's meta tensors ("Cannot copy out of meta tensor"). Loads are rare; jobs still run in
# parallel. Building an embedded model seeds torch's one global generator, so builds take it too.
_LOADING = threading.Lock()


def model_location(model: str, models_dir: Path) -> str:
    """Where from_pretrained should look: the built embedded model, or the user's path or hub id."""
    if is_embedded(model):
        with _LOADING:
            return str(ensure_embedded(model, models_dir))
    return model


def ensure_embedded(name: str, models_dir: Path) -> Path:
    """Build the embedded model `name` into models_dir once; later calls return the saved directory."""
    target = models_dir / f"{name}-v{EMBEDDED_VERSION}"
    if (target / "model_index.json").exists():
        return target
    models_dir.mkdir(parents=True, exist_ok=True)
    logger.info("building the embedded %r model (random weights) into %s", name, target)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=models_dir))
    try:
        import diffusers.utils.logging

        diffusers.utils.logging.disable_progress_bar()
        build_embedded(EMBEDDED[name]).save_pretrained(staging)
        try:
            staging.rename(target)
        except OSError:
            if not (target / "model_index.json").exists():  # not a concurrent build that won
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def build_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_CORPUS, trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>"
    )
    tokenizer.chat_template = _CHAT_TEMPLATE
    return tokenizer


def build_embedded(spec: EmbeddedSpec) -> Any:
    """A ZImagePipeline with the Z-Image architecture at a small size and random weights."""
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(EMBEDDED_SEED)
    tokenizer = build_tokenizer()
    text_encoder = Qwen3Model(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=spec.text_hidden,
            intermediate_size=spec.text_hidden * 2,
            num_hidden_layers=spec.text_layers,
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=spec.text_hidden // 2,
            max_position_embeddings=1024,
        )
    )
    head_dim = spec.dim // spec.heads
    # Z-Image splits each head's rotary dimensions over (frame, height, width) as 32/48/48 of 128.
    side = (head_dim * 3 // 8) // 2 * 2
    transformer = ZImageTransformer2DModel(
        dim=spec.dim,
        n_layers=spec.layers,
        n_refiner_layers=1,
        n_heads=spec.heads,
        n_kv_heads=spec.heads,
        cap_feat_dim=spec.text_hidden,
        axes_dims=[head_dim - 2 * side, side, side],
        axes_lens=[256, 256, 256],
    )
    # The Flux VAE that Z-Image uses: 16 latent channels, scaling 0.3611 and shift 0.1159 (its config).
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=16,
        block_out_channels=spec.vae_channels,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        layers_per_block=1,
        norm_num_groups=min(spec.vae_channels),
        scaling_factor=0.3611,
        shift_factor=0.1159,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=False
    )
    return ZImagePipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, transformer=transformer
    )


# The big parts of a Z-Image checkpoint, loaded one by one so a load can report its progress.
LOAD_COMPONENTS = ("text_encoder", "transformer", "vae")


def load_pipeline(
    location: str,
    device: str,
    dtype: torch.dtype,
    on_component: Callable[[str, int, int], None] | None = None,
) -> Any:
    """Load a Z-Image pipeline component by component onto `device`; `on_component(name, index, count)`
    is called as each one starts (the tokenizer and scheduler, which are small, come with the VAE)."""
    import diffusers.utils.logging
    import transformers.utils.logging
    from diffusers import AutoencoderKL, ZImagePipeline, ZImageTransformer2DModel
    from transformers import AutoModel

    # Our own events report progress; the libraries' tqdm bars would only clutter the server log.
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.disable_progress_bar()

    loaders: dict[str, Callable[[], Any]] = {
        "text_encoder": lambda: AutoModel.from_pretrained(location, subfolder="text_encoder", dtype=dtype),
        "transformer": lambda: ZImageTransformer2DModel.from_pretrained(
            location, subfolder="transformer", torch_dtype=dtype
        ),
        "vae": lambda: AutoencoderKL.from_pretrained(location, subfolder="vae", torch_dtype=dtype),
    }
    parts: dict[str, Any] = {}
    with _LOADING:
        for index, name in enumerate(LOAD_COMPONENTS, start=1):
            if on_component is not None:
                on_component(name, index, len(LOAD_COMPONENTS))
            parts[name] = loaders[name]().to(device)
        pipe = ZImagePipeline.from_pretrained(location, dtype=dtype, **parts)
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return pipe
