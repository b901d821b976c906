"""The embedded tiny model (pipeline.py) and the worker (worker.py), run for real on the CPU."""

from __future__ import annotations

import gc
import json
import secrets
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from zimage_sse import heap, pipeline
from zimage_sse.events import PHASES, Cancelled, JobFailed
from zimage_sse.messages import Message, Outcome
from zimage_sse.params import JobParams
from zimage_sse.worker import Worker


def new_job_id() -> str:
    return secrets.token_hex(8)  # 16 lowercase hex characters, like the job manager's ids


def make_params(**overrides: Any) -> JobParams:
    values: dict[str, Any] = {
        "prompt": "a red fox in the snow at dawn",
        "negative_prompt": "",
        # Not square, so a swapped width and height would show.
        "width": 192,
        "height": 128,
        "steps": 4,
        "guidance": 0.0,
        "seed": 7,
        "num_images": 1,
    }
    values.update(overrides)
    return JobParams(**values)


class Recorder:
    """An `emit` that keeps what the worker reported, and can pull the cancel cord at a chosen moment."""

    def __init__(self, cancel_at: tuple[str, object] | None = None) -> None:
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.cancel = threading.Event()
        self._cancel_at = cancel_at

    def __call__(self, message: Message) -> None:
        kind, data = message.kind, message.data()
        self.events.append((kind, data))
        if self._cancel_at is not None and (kind, data.get(kind)) == self._cancel_at:
            self.cancel.set()

    def phases(self) -> list[str]:
        return [data["phase"] for kind, data in self.events if kind == "phase"]

    def steps(self) -> list[int]:
        return [data["step"] for kind, data in self.events if kind == "step"]

    def sequence(self) -> list[tuple[str, object]]:
        """Events in order: a phase's name, a step's or preview's number, a loading event's component."""
        keys = {"preview": "step", "loading": "component"}
        return [(kind, data[keys.get(kind, kind)]) for kind, data in self.events]


@pytest.fixture
def images_dir(tmp_path: Path) -> Path:
    return tmp_path / "images"


@pytest.fixture
def worker(models_dir: Path, images_dir: Path) -> Worker:
    return Worker("tiny", models_dir, images_dir, device="cpu")


def run(worker: Worker, params: JobParams, recorder: Recorder | None = None) -> tuple[str, Outcome, Recorder]:
    job_id = new_job_id()
    recorder = recorder or Recorder()
    outcome = worker.run(job_id, params, recorder, recorder.cancel)
    return job_id, outcome, recorder


def pixels(path: Path) -> bytes:
    with Image.open(path) as image:
        return image.tobytes()


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir()) if directory.exists() else []


# -- the embedded model ------------------------------------------------------------------------


def test_ensure_embedded_reuses_the_built_model(models_dir: Path) -> None:
    location = pipeline.ensure_embedded("tiny", models_dir)  # the session fixture built it already
    before = {p: p.stat().st_mtime_ns for p in location.rglob("*")}
    assert location / "model_index.json" in before

    again = pipeline.ensure_embedded("tiny", models_dir)

    assert again == location
    assert {p: p.stat().st_mtime_ns for p in again.rglob("*")} == before
    assert not [p.name for p in models_dir.iterdir() if p.name.startswith(".tiny-")]  # no staging left


def test_the_saved_model_loads_as_a_z_image_pipeline(models_dir: Path) -> None:
    from diffusers import (
        AutoencoderKL,
        FlowMatchEulerDiscreteScheduler,
        ZImagePipeline,
        ZImageTransformer2DModel,
    )
    from transformers import Qwen3Model

    pipe = ZImagePipeline.from_pretrained(str(pipeline.ensure_embedded("tiny", models_dir)))

    assert isinstance(pipe.transformer, ZImageTransformer2DModel)
    assert isinstance(pipe.text_encoder, Qwen3Model)
    assert isinstance(pipe.vae, AutoencoderKL)
    assert pipe.vae.config.latent_channels == 16
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)

    messages = [{"role": "user", "content": "a red fox"}]
    text = pipe.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\na red fox<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")
    ids = pipe.tokenizer(text)["input_ids"]
    assert pipe.tokenizer.decode(ids) == text


# -- running jobs ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        # On a GPU the same path runs with CUDA events read on the reporting thread (bench/gpu.sh).
        pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
    ],
)
def test_a_job_reports_every_phase_and_step_and_the_second_skips_loading(
    models_dir: Path, images_dir: Path, device: str
) -> None:
    worker = Worker("tiny", models_dir, images_dir, device=device)
    params = make_params(steps=4)

    job_id, first, events = run(worker, params)

    assert first.images == [f"{job_id}-0.png"]
    assert len(first.step_s) == params.steps
    assert all(s > 0 for s in first.step_s)
    assert list(first.phases) == list(PHASES)
    assert all(s > 0 for s in first.phases.values())
    assert first.warm_up is True
    assert list(first.load_timings) == ["text_encoder", "transformer", "vae"]
    assert sum(first.load_timings.values()) <= first.phases["loading"]
    # Reported in order from one thread once the device has done each thing (timing.py `Reporter`):
    # a preview after every step by default, each right after its step.
    assert events.sequence() == [
        ("phase", "loading"),
        ("loading", "text_encoder"),  # each part of the checkpoint as it starts loading
        ("loading", "transformer"),
        ("loading", "vae"),
        ("phase", "encoding"),
        ("phase", "denoising"),
        *[event for n in (1, 2, 3, 4) for event in (("step", n), ("preview", n))],
        ("phase", "decoding"),
        ("phase", "saving"),
    ]
    # Steps are the denoising phase cut at each step's end: together they fit in it.
    assert sum(first.step_s) <= first.phases["denoising"]
    step_events = [data for kind, data in events.events if kind == "step"]
    assert [data["total"] for data in step_events] == [4, 4, 4, 4]
    assert [data["step_s"] for data in step_events] == first.step_s

    _, second, events = run(worker, params)

    assert list(second.phases) == ["encoding", "denoising", "decoding", "saving"]
    assert events.phases() == ["encoding", "denoising", "decoding", "saving"]
    assert events.steps() == [1, 2, 3, 4]
    assert len(second.step_s) == 4
    assert second.warm_up is False
    assert second.load_timings == {}


def test_the_png_has_the_size_and_the_generation_parameters(worker: Worker, images_dir: Path) -> None:
    params = make_params(negative_prompt="blurry", seed=123456789)

    job_id, outcome, _ = run(worker, params)

    assert files_in(images_dir) == [f"{job_id}-0.png"]  # and no half-written temporary file
    with Image.open(images_dir / outcome.images[0]) as image:
        assert image.format == "PNG"
        assert image.size == (192, 128)
        assert image.mode == "RGB"
        text = dict(image.text)  # type: ignore[attr-defined]
    assert params.prompt in text["parameters"]
    assert "Negative prompt: blurry" in text["parameters"]
    assert "Seed: 123456789" in text["parameters"]
    assert "Size: 192x128" in text["parameters"]
    meta = json.loads(text["zimage-sse"])
    assert meta["prompt"] == params.prompt
    assert (meta["seed"], meta["width"], meta["height"], meta["steps"]) == (123456789, 192, 128, 4)
    assert (meta["job_id"], meta["model"], meta["device"]) == (job_id, "tiny", "cpu")


def test_the_same_seed_gives_the_same_image_and_another_seed_does_not(
    worker: Worker, images_dir: Path
) -> None:
    _, first, _ = run(worker, make_params(seed=11))
    _, again, _ = run(worker, make_params(seed=11))
    _, other, _ = run(worker, make_params(seed=12))

    assert pixels(images_dir / first.images[0]) == pixels(images_dir / again.images[0])
    assert pixels(images_dir / first.images[0]) != pixels(images_dir / other.images[0])


def test_two_images_give_two_different_files(worker: Worker, images_dir: Path) -> None:
    job_id, outcome, _ = run(worker, make_params(num_images=2))

    assert outcome.images == [f"{job_id}-0.png", f"{job_id}-1.png"]
    assert files_in(images_dir) == outcome.images
    for name in outcome.images:
        with Image.open(images_dir / name) as image:
            assert image.size == (192, 128)
    assert pixels(images_dir / outcome.images[0]) != pixels(images_dir / outcome.images[1])


# -- cancelling and failing --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cancel_at", "last_step"),
    [(("step", 2), 2), (("phase", "encoding"), 0)],
    ids=["at-step-2", "while-encoding"],
)
def test_cancelling_stops_before_decoding_and_writes_nothing(
    worker: Worker, images_dir: Path, cancel_at: tuple[str, object], last_step: int
) -> None:
    recorder = Recorder(cancel_at=cancel_at)

    with pytest.raises(Cancelled):
        run(worker, make_params(steps=6), recorder)

    # Events are reported off the worker's thread, once the device has done the work, so the worker
    # may have started the next step (or, from encoding, the first) when the cancel is pulled on seeing
    # the event: it stops at the end of that step at the latest, never later.
    steps = recorder.steps()
    assert steps in ([*range(1, last_step + 1)], [*range(1, last_step + 2)])
    assert "decoding" not in recorder.phases()
    assert "saving" not in recorder.phases()
    assert files_in(images_dir) == []

    # The worker is not left half-way: the next job runs in full.
    _, outcome, events = run(worker, make_params(steps=6))
    assert events.steps() == [1, 2, 3, 4, 5, 6]
    assert files_in(images_dir) == outcome.images


def test_a_job_records_no_autograd_graph(worker: Worker) -> None:
    """Every model call of a job runs as `pipe()` runs them, without autograd: recording each
    operation costs time on every launch and keeps activations alive for a backward pass that never
    comes. The text encoder, called by the worker itself, did record, until it ran under no_grad."""
    pipe = worker.load()
    calls: list[tuple[str, bool]] = []

    def graph(output: Any) -> bool:
        """Whether any tensor in a model's output (a tensor, a list of them, a ModelOutput) has one."""
        if torch.is_tensor(output):
            return bool(output.requires_grad)
        values = list(output.values()) if isinstance(output, dict) else output
        return isinstance(values, list | tuple) and any(graph(value) for value in values)

    def hook(name: str) -> Any:
        return lambda _module, _inputs, output: calls.append((name, graph(output)))

    handles = [
        getattr(pipe, name).register_forward_hook(hook(name)) for name in ("text_encoder", "transformer")
    ]
    handles.append(pipe.vae.decoder.register_forward_hook(hook("vae")))
    try:
        run(worker, make_params(steps=2))
    finally:
        for handle in handles:
            handle.remove()

    assert [name for name, _ in calls] == ["text_encoder", "transformer", "transformer", "vae"]
    assert [name for name, recorded in calls if recorded] == []


def test_a_failed_job_says_why_and_the_worker_carries_on(worker: Worker, images_dir: Path) -> None:
    # Validation would refuse this width; built directly, it reaches the pipeline, which rejects it.
    bad = make_params(width=264)

    with pytest.raises(JobFailed) as caught:
        run(worker, bad)

    assert "264" in caught.value.reason
    assert "16" in caught.value.reason
    assert "divisible" in caught.value.reason or "multiple" in caught.value.reason
    assert files_in(images_dir) == []

    job_id, outcome, events = run(worker, make_params())
    assert outcome.images == [f"{job_id}-0.png"]
    assert events.steps() == [1, 2, 3, 4]
    with Image.open(images_dir / outcome.images[0]) as image:
        assert image.size == (192, 128)


# -- the garbage collector (zimage_sse/heap.py) --------------------------------------------------


@pytest.mark.parametrize("slow", [True, False])
def test_a_slow_full_garbage_collection_waits_for_the_end_of_the_job(
    worker: Worker, monkeypatch: pytest.MonkeyPatch, slow: bool
) -> None:
    """A full collection holds the GIL for ~0.16 ms per open stream, so once one is slow it must not
    land mid-job; a fast one is left to CPython, so churned connections' cycles never pile up."""
    run(worker, make_params())  # load and warm up: both freeze what they leave alive, and collect
    # Whether that last collection counts as slow: 1,000 open streams would make it so.
    monkeypatch.setattr(heap, "DEFER_FROM_S", 0.0 if slow else float("inf"))
    recorder = Recorder()
    # Each full collection, by when it came: before the job's first event, during the job (its first
    # event to its `saving` phase; the collector's setting is undone just after the save), or after.
    full: list[str] = []

    def watch(phase: str, info: dict[str, Any]) -> None:
        if phase == "start" and info["generation"] == 2:
            if not recorder.events:
                full.append("before")
            elif recorder.events[-1] == ("phase", {"phase": "saving"}):
                full.append("after")
            else:
                full.append("during")

    saved = gc.get_threshold()
    gc.set_threshold(1, 1, 1)  # where they are allowed, full collections run every few allocations
    gc.callbacks.append(watch)
    try:
        _, outcome, _ = run(worker, make_params(seed=8), recorder)
        restored = gc.get_threshold()
        gc.disable()  # from here on, only the collection between_jobs may make
        worker.between_jobs()
    finally:
        gc.enable()
        gc.callbacks.remove(watch)
        gc.set_threshold(*saved)

    assert recorder.steps() == [1, 2, 3, 4] and outcome.images
    assert restored == (1, 1, 1)  # the job's own setting is undone, whatever the process had
    if slow:
        assert full.count("during") == 0
        assert full.count("after") >= 1  # what the job put off, once it is over
    else:
        assert full.count("during") > 0  # CPython's own schedule
