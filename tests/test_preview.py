"""Live previews: x0 from the flow-matching step, the Flux latent→RGB map, and previews from a real job."""

from __future__ import annotations

import asyncio
import base64
import io
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from zimage_sse.broadcaster import Broadcaster
from zimage_sse.events import Event
from zimage_sse.params import JobParams
from zimage_sse.preview import FLUX_RGB_BIAS, FLUX_RGB_FACTORS, estimate_x0, latent_to_rgb, preview
from zimage_sse.worker import Worker


def decode(url: str) -> Image.Image:
    prefix = "data:image/jpeg;base64,"
    assert url.startswith(prefix)
    return Image.open(io.BytesIO(base64.b64decode(url[len(prefix) :])))


def test_x0_is_exact_on_a_straight_flow() -> None:
    """Flow matching interpolates x_σ = (1 − σ)·x0 + σ·noise; one step along it recovers x0."""
    generator = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 8, 8, generator=generator)
    noise = torch.randn(16, 8, 8, generator=generator)
    sigma_t, sigma_next = 0.8, 0.55
    x_t = (1 - sigma_t) * x0 + sigma_t * noise
    x_next = (1 - sigma_next) * x0 + sigma_next * noise

    assert torch.allclose(estimate_x0(x_t, x_next, sigma_t, sigma_next), x0, atol=1e-5)
    # The worker passes the scheduler's own sigmas, 0-d tensors on the latents' device (a float would
    # make it wait for the GPU at every step): the same preview.
    sigmas = torch.tensor([sigma_t, sigma_next])
    assert torch.allclose(estimate_x0(x_t, x_next, sigmas[0], sigmas[1]), x0, atol=1e-5)
    batch = (x_t.unsqueeze(0), x_next.unsqueeze(0))
    assert preview(*batch, sigmas[0], sigmas[1]) == preview(*batch, sigma_t, sigma_next)


def test_latent_to_rgb_applies_the_flux_factors_and_bias() -> None:
    latent = torch.zeros(16, 2, 3)
    latent[4, 0, 0] = 2.0  # channel 4 alone: (0.0859, 0.0721, 0.0329) per unit
    latent[13, 1, 2] = -1.0  # channel 13 negated: −(−0.1264, −0.0522, −0.1103)
    rgb = latent_to_rgb(latent)

    def expected(values: tuple[float, ...]) -> list[int]:
        return [round((min(1.0, max(-1.0, v)) + 1) * 127.5) for v in values]

    bias = FLUX_RGB_BIAS
    assert rgb.shape == (2, 3, 3) and rgb.dtype == torch.uint8
    assert rgb[0, 0].tolist() == expected(
        tuple(2 * f + b for f, b in zip(FLUX_RGB_FACTORS[4], bias, strict=True))
    )
    assert rgb[1, 2].tolist() == expected(
        tuple(-f + b for f, b in zip(FLUX_RGB_FACTORS[13], bias, strict=True))
    )
    assert rgb[0, 1].tolist() == expected(bias)  # an all-zero latent is the bias alone
    assert len(FLUX_RGB_FACTORS) == 16 and all(len(row) == 3 for row in FLUX_RGB_FACTORS)


def test_preview_is_a_small_jpeg_of_the_latent_size() -> None:
    x_t = torch.randn(2, 16, 32, 48)
    x_next = torch.randn(2, 16, 32, 48)
    url, width, height = preview(x_t, x_next, 0.9, 0.7)

    image = decode(url)
    assert (width, height) == (48, 32) == image.size
    assert image.format == "JPEG"
    assert len(url) < 8_000  # a few kB per event


@pytest.mark.parametrize(("every", "expected"), [(2, [2, 4, 6]), (0, [])])
def test_a_job_sends_previews_every_n_steps(
    models_dir: Path, tmp_path: Path, every: int, expected: list[int]
) -> None:
    worker = Worker("tiny", models_dir, tmp_path / "images", device="cpu", preview_every=every)
    events: list[tuple[str, dict[str, Any]]] = []
    params = JobParams("a red fox", "", 256, 256, 6, 0.0, 7, 1)
    worker.run(
        "0123456789abcdef",
        params,
        lambda message: events.append((message.kind, message.data())),
        threading.Event(),
    )

    previews = [data for kind, data in events if kind == "preview"]
    assert [p["step"] for p in previews] == expected
    for data in previews:
        # 256² pixels is a 32² latent (the VAE downsamples by 8): one preview pixel per latent cell.
        assert decode(data["url"]).size == (32, 32) == (data["width"], data["height"])
    # Each preview comes after its step's event (it is encoded off the worker's thread, so the next
    # step may come first) and before the job moves on to decoding.
    order = [(kind, data.get("step", data.get("phase"))) for kind, data in events]
    decoding = order.index(("phase", "decoding"))
    for data in previews:
        at = order.index(("preview", data["step"]))
        assert order.index(("step", data["step"])) < at < decoding


def test_previews_a_reader_has_not_taken_are_replaced_by_the_newest() -> None:
    async def scenario() -> list[tuple[str, int]]:
        broadcaster = Broadcaster(maxsize=16)
        async with broadcaster.subscribe("*") as subscription:
            seq = 0
            for step in (1, 2, 3):
                for kind in ("step", "preview"):
                    seq += 1
                    broadcaster.publish(Event(kind, {"step": step}, job_id="a", seq=seq, gseq=seq))
            broadcaster.publish(Event("phase", {"phase": "decoding"}, job_id="a", seq=7, gseq=7))
            subscription.close()
            return [(event.kind, event.data.get("step", 0)) async for event in subscription]

    received = asyncio.run(scenario())
    # Only the newest preview waits; the steps, a few events behind, are all still there.
    assert received == [("step", 1), ("step", 2), ("step", 3), ("preview", 3), ("phase", 0)]
