"""Live previews: the denoiser's current guess of the finished image, without running the VAE.

x0 comes from the flow-matching step itself: with latents x_t at σ_t before a step and x_next at
σ_next after it, the velocity is v = (x_next − x_t)/(σ_next − σ_t) and x0 ≈ x_next − σ_next·v. A
fixed linear map then turns the 16 latent channels into RGB.
"""

from __future__ import annotations

import base64
import functools
import io
from dataclasses import dataclass

import torch
from PIL import Image

# Latent → RGB for 16-channel Flux-VAE latents in the diffusion model's space ((z − 0.1159)·0.3611),
# which is the VAE Z-Image uses. Source: ComfyUI, comfy/latent_formats.py, class Flux
# (latent_rgb_factors and latent_rgb_factors_bias). Rows are latent channels, columns R, G, B.
FLUX_RGB_FACTORS = (
    (-0.0346, 0.0244, 0.0681),
    (0.0034, 0.0210, 0.0687),
    (0.0275, -0.0668, -0.0433),
    (-0.0174, 0.0160, 0.0617),
    (0.0859, 0.0721, 0.0329),
    (0.0004, 0.0383, 0.0115),
    (0.0405, 0.0861, 0.0915),
    (-0.0236, -0.0185, -0.0259),
    (-0.0245, 0.0250, 0.1180),
    (0.1008, 0.0755, -0.0421),
    (-0.0515, 0.0201, 0.0011),
    (0.0428, -0.0012, -0.0036),
    (0.0817, 0.0765, 0.0749),
    (-0.1264, -0.0522, -0.1103),
    (-0.0280, -0.0881, -0.0499),
    (-0.1262, -0.0982, -0.0778),
)
FLUX_RGB_BIAS = (-0.0329, -0.0718, -0.0851)
JPEG_QUALITY = 80


# A noise level: a number, or a 0-d tensor on the latents' device (the scheduler's own `sigmas[i]`, which
# on a GPU would cost a wait for the device to turn into a number).
Sigma = float | torch.Tensor


def estimate_x0(x_t: torch.Tensor, x_next: torch.Tensor, sigma_t: Sigma, sigma_next: Sigma) -> torch.Tensor:
    velocity = (x_next - x_t) / (sigma_next - sigma_t)
    return x_next - sigma_next * velocity


@functools.cache
def _rgb_map(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The factors and bias on `device`, made once: a fresh host→device copy every step would wait."""
    factors = torch.tensor(FLUX_RGB_FACTORS, dtype=torch.float32, device=device)
    bias = torch.tensor(FLUX_RGB_BIAS, dtype=torch.float32, device=device)
    return factors, bias


def _to_rgb(latent: torch.Tensor) -> torch.Tensor:
    """(C=16, H, W) latent → (H, W, 3) uint8 on the latent's device."""
    factors, bias = _rgb_map(latent.device)
    rgb = torch.einsum("chw,cr->hwr", latent.float(), factors) + bias
    # The factors map to roughly [-1, 1], as the VAE's own output range.
    return ((rgb.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def latent_to_rgb(latent: torch.Tensor) -> torch.Tensor:
    """(C=16, H, W) latent → (H, W, 3) uint8 on the CPU."""
    return _to_rgb(latent).cpu()


def data_url(rgb: torch.Tensor) -> str:
    """A small JPEG as a data URL: a few kB, so a preview event needs no second request."""
    buffer = io.BytesIO()
    Image.fromarray(rgb.numpy(), mode="RGB").save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


@dataclass
class Pending:
    """A preview whose pixels are on their way to the host; `finish` waits for them and encodes."""

    rgb: torch.Tensor  # (H, W, 3) uint8 on the CPU, complete once `copied` has happened
    copied: torch.cuda.Event | None  # None: the copy was synchronous (CPU tensors)

    def finish(self) -> tuple[str, int, int]:
        if self.copied is not None:
            self.copied.synchronize()
        return data_url(self.rgb), int(self.rgb.shape[1]), int(self.rgb.shape[0])


def start(x_t: torch.Tensor, x_next: torch.Tensor, sigma_t: Sigma, sigma_next: Sigma) -> Pending:
    """Queue the preview's few small kernels and its copy to the host without waiting for the device,
    so the worker can hand the next step to the GPU at once; the JPEG is made by `Pending.finish`,
    off the worker's thread."""
    rgb = _to_rgb(estimate_x0(x_t[0], x_next[0], sigma_t, sigma_next))
    if rgb.device.type != "cuda":
        return Pending(rgb, None)
    host = rgb.to("cpu", non_blocking=True)
    # Blocking: the thread that waits for the copy sleeps instead of spinning a core.
    copied = torch.cuda.Event(blocking=True)  # type: ignore[no-untyped-call]
    copied.record(torch.cuda.current_stream(rgb.device))
    return Pending(host, copied)


def preview(
    x_t: torch.Tensor, x_next: torch.Tensor, sigma_t: Sigma, sigma_next: Sigma
) -> tuple[str, int, int]:
    """The first image of the batch as a data URL, with its width and height in pixels."""
    return start(x_t, x_next, sigma_t, sigma_next).finish()
