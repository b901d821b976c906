"""Settings: one object built once (from the command line, the environment, or a test) and passed down."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

ENV_PREFIX = "ZIMAGE_SSE_"
# Built offline with random weights (zimage_sse/pipeline.py); their images are noise.
EMBEDDED_MODELS = frozenset({"tiny", "demo"})


@dataclass(frozen=True)
class Preset:
    name: str
    width: int
    height: int
    steps: int


# Z-Image-Turbo is distilled for 8 steps at guidance 0 (the model card); sizes follow the H200 profile
# in shared/data/h200-step-profile.json (768² ≈ 0.8 s, 1024² ≈ 1.4 s, 1536×1024 ≈ 2.2 s per job).
DEFAULT_PRESETS: tuple[Preset, ...] = (
    Preset("draft", 768, 768, 8),
    Preset("standard", 1024, 1024, 8),
    Preset("large", 1536, 1024, 8),
)


MAX_NICE = 19  # Linux's lowest priority


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8000
    # "tiny", "demo" (embedded, random weights), a local checkpoint directory, or a hub id.
    model: str = "demo"
    # auto → every CUDA device, else the CPU; or a list, e.g. "cuda:0,cuda:2" or "cpu:0,cpu:1" (a worker
    # per device, each with its own copy of the model; each job goes where it finishes first).
    device: str = "auto"
    dtype: str = "auto"  # auto → bfloat16 on cuda, float32 on cpu
    data_dir: Path = Path("data")
    # The job history: empty for the SQLite file in data_dir, or a postgresql://user@host/db URL
    # (zimage_sse/db/postgres.py). Images stay under data_dir either way.
    store: str = ""
    # Where the embedded models are built; default: <data_dir>/models.
    models_dir: Path | None = None
    default_steps: int = 8
    default_guidance: float = 0.0
    default_width: int = 1024
    default_height: int = 1024
    size_multiple: int = 16
    min_size: int = 64
    max_size: int = 2048
    max_pixels: int = 2048 * 2048
    max_steps: int = 100
    max_images: int = 4
    max_prompt_chars: int = 2000
    max_guidance: float = 20.0
    heartbeat_s: float = 15.0
    # A live preview every N denoising steps (0: none). Turbo runs 8 steps, so every step by default.
    preview_every: int = 1
    # On a CPU device the model's threads share the cores with the web server: they run this much nicer
    # than the server (Linux thread niceness, added to the server's own, at most 19), so streams are
    # served first and generation takes every cycle left over. 0: the same priority. GPUs are fed at the
    # server's own priority.
    cpu_worker_nice: int = 10
    # torch threads for each CPU worker (0: the cores shared evenly among the CPU workers; torch's own
    # default with one).
    cpu_threads: int = 0
    # Load the model when the server starts instead of with the first job.
    preload: bool = False
    # Unload the model after this many seconds without jobs (0: keep it loaded).
    unload_after: float = 0.0
    # Per-subscriber queue length before a slow SSE client is disconnected (it can resume).
    subscriber_queue: int = 256
    # Events kept per job for Last-Event-ID replay.
    replay_events: int = 512
    # A stream whose client takes no data for this many seconds (its socket stays full) is dropped; its
    # bounded queue holds what waits meanwhile. The client can resume with Last-Event-ID.
    stalled_stream_s: float = 30.0
    # On SIGTERM the running job may finish for this many seconds; then it is stopped at its next step
    # and queued again, to run first after the restart (README "Restarts and shutdown").
    shutdown_grace: float = 10.0
    # The denoising as an animation (zimage_sse/frames.py): a job keeps at most this many of its
    # previews (evenly spaced, always the last; 0: none, so no animation) and at most this many bytes of
    # them (0: no limit). A 1024² job's preview is a 128² JPEG of about 5 kB, so 64 take about 0.3 MB.
    frames_max: int = 64
    frames_max_bytes: int = 2_000_000
    # Retention (zimage_sse/history.py): remove the images of ended jobs created more than this many days
    # ago (0: keep forever) and of the oldest jobs beyond this many GB (10^9 bytes) of images (0: no limit).
    retention_days: float = 0.0
    retention_gb: float = 0.0
    # Pruned jobs keep their rows and timings (reports and the ETA learn from them); false deletes them.
    retention_keep_timings: bool = True
    # Retention runs at start and then this often.
    retention_every_s: float = 3600.0
    # Access token (zimage_sse/security.py): when set, every job, image, stream and metrics route needs
    # it, as `Authorization: Bearer TOKEN` or the cookie the /login page sets. Empty: no login.
    token: str = field(default="", repr=False)
    # Largest request body in bytes (prompts are at most 2 × 2000 characters); multipart uploads (a PNG to
    # take parameters from, as a multipart form or an image/png body) may be up to max_upload_bytes, the
    # size repro.py reads. Larger bodies get 413.
    max_body_bytes: int = 64 * 1024
    max_upload_bytes: int = 64 * 1024 * 1024
    # Jobs that may wait in the queue (0: no limit); submissions beyond it get 429 with Retry-After.
    max_queue: int = 100
    # Submissions (and login attempts) per minute from one client address, and how many may come at once
    # before the rate applies (token bucket); beyond them 429 with Retry-After. 0: no limit. Rejected
    # submissions do not count. A person never comes near it; a script that queues many jobs at once can
    # raise it or turn it off.
    submit_rate: float = 30.0
    submit_burst: int = 30
    presets: tuple[Preset, ...] = field(default=DEFAULT_PRESETS)
    # The AUTOMATIC1111 API (/sdapi/v1, routes/a1111.py). Its clients send A1111's defaults, CFG scale 7
    # and 20–50 steps, where Turbo is distilled for guidance 0 and 8 steps (the model card): cfg_scale is
    # ignored (guidance stays default_guidance) unless a1111_honour_cfg, and steps are clamped to
    # 1..a1111_max_steps (and never above max_steps). Both are reported in the answer's `info`.
    a1111_honour_cfg: bool = False
    a1111_max_steps: int = 8

    def __post_init__(self) -> None:
        if not 0 <= self.cpu_worker_nice <= MAX_NICE:
            raise ValueError(
                f"{ENV_PREFIX}CPU_WORKER_NICE={self.cpu_worker_nice}: use 0 (off) to {MAX_NICE};"
                " a thread may lower its own priority, never raise it"
            )
        for name in ("frames_max", "frames_max_bytes"):
            if getattr(self, name) < 0:
                raise ValueError(f"{ENV_PREFIX}{name.upper()}={getattr(self, name)}: use 0 or more")
        if self.a1111_max_steps < 1:
            raise ValueError(f"{ENV_PREFIX}A1111_MAX_STEPS={self.a1111_max_steps}: use 1 or more")

    @property
    def thumbs_dir(self) -> Path:
        return self.data_dir / "thumbs"

    @property
    def frames_dir(self) -> Path:
        return self.data_dir / "frames"

    @property
    def db_path(self) -> Path:
        return self.data_dir / "zimage-sse.db"

    @property
    def images_dir(self) -> Path:
        return self.data_dir / "images"

    @property
    def model_cache(self) -> Path:
        return self.models_dir if self.models_dir is not None else self.data_dir / "models"

    def with_overrides(self, **values: object) -> Settings:
        clean = {k: v for k, v in values.items() if v is not None}
        return dataclasses.replace(self, **clean)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ZIMAGE_SSE_* variables (e.g. ZIMAGE_SSE_MODEL, ZIMAGE_SSE_MAX_STEPS)."""
        env = os.environ if environ is None else environ
        values: dict[str, object] = {}
        for f in dataclasses.fields(cls):
            raw = env.get(ENV_PREFIX + f.name.upper())
            if raw is None:
                continue
            values[f.name] = _parse_env(f.name, raw, f.type)
        return cls(**values)  # type: ignore[arg-type]


def _parse_env(name: str, raw: str, type_name: object) -> object:
    kind = str(type_name)
    try:
        if kind == "bool":
            if raw.lower() not in ("1", "0", "true", "false", "yes", "no"):
                raise ValueError("use 1/0, true/false or yes/no")
            return raw.lower() in ("1", "true", "yes")
        if kind == "int":
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind in ("Path", "Path | None"):
            return Path(raw)
        if kind.startswith("tuple[Preset"):
            return parse_presets(raw)
    except ValueError as exc:
        raise ValueError(f"{ENV_PREFIX}{name.upper()}={raw!r}: {exc}") from exc
    return raw


def parse_presets(raw: str) -> tuple[Preset, ...]:
    """Parse "draft=768x768:8,standard=1024x1024:8" (steps optional, default 8)."""
    presets = []
    for item in raw.split(","):
        name, _, spec = item.strip().partition("=")
        size, _, steps = spec.partition(":")
        width, _, height = size.partition("x")
        if not name or not width or not height:
            raise ValueError(f"preset {item!r} is not NAME=WIDTHxHEIGHT[:STEPS]")
        presets.append(Preset(name, int(width), int(height), int(steps or 8)))
    return tuple(presets)
