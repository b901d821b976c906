"""The GPU side: runs one job at a time on one device and reports each phase and step as it happens.

It takes plain data (a job id and its parameters) and returns plain data; it imports nothing from
the web tier. Events go out through `emit`, a thread-safe callable that the job manager provides.
"""

from __future__ import annotations

import errno
import functools
import gc
import logging
import os
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import diffusers
import torch

from . import __version__, heap, images, pipeline, preview, repro
from .config import MAX_NICE
from .events import Cancelled, JobFailed
from .gpu import GpuMonitor, GpuSample
from .logs import job_context
from .messages import Emit, LoadProgress, Message, Outcome, PreviewReady, StepDone
from .params import JobParams
from .timing import Clock, LoadSamples, Mark, Reporter, Timer

logger = logging.getLogger(__name__)


# What a write fails with when there is no room: the disk or a quota is full, or a file-size limit is hit.
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


class Worker:
    """Owns one device and the pipeline resident on it. Only ever called from one executor thread."""

    def __init__(
        self,
        model: str,
        models_dir: Path,
        images_dir: Path,
        device: str = "auto",
        dtype: str = "auto",
        preview_every: int = 1,
        cpu_nice: int = 0,
        cpu_threads: int = 0,
        cpu_cores: tuple[int, ...] = (),
    ) -> None:
        self.model = model
        self.cpu_nice = cpu_nice
        self.cpu_threads = cpu_threads  # torch threads on a CPU device; 0: torch's default
        self.cpu_cores = cpu_cores  # the cores a CPU worker keeps to (app.cpu_shares); (): any
        self.preview_every = preview_every
        self.models_dir = models_dir
        self.images_dir = images_dir
        self.device = pipeline.resolve_device(device)
        self.dtype = pipeline.resolve_dtype(dtype, self.device)
        self._pipe: Any = None
        self._warm = False
        self._sizes: set[tuple[int, int, int]] = set()  # (width, height, images) run since the load
        # What the PNGs name as the model's exact revision (zimage_sse/repro.py); set when it loads.
        self.revision: str | None = None
        self.load_timings: dict[str, float] = {}
        self.gpu = GpuMonitor(self.device)
        # Steps, phases and previews are reported from here, in order, once the device has done them;
        # previews are encoded here too, off the thread that feeds the GPU (bench/RESULTS.md, "GPU").
        self._reports = ThreadPoolExecutor(max_workers=1, thread_name_prefix="report")
        heap.freeze()

    @property
    def loaded(self) -> bool:
        """The model is resident: the next job has no loading phase."""
        return self._pipe is not None

    @property
    def warm(self) -> bool:
        """A generation has run since the load: the next job pays no warm-up."""
        return self._warm

    def ran(self, params: JobParams) -> bool:
        """A job of this size has run since the load (its first decode can be a one-off)."""
        return (params.width, params.height, params.num_images) in self._sizes

    def unload(self) -> None:
        """Give the device memory back; the next job loads the model again."""
        self._pipe, self._warm, self._sizes = None, False, set()
        heap.unfreeze()  # what the model left in reference cycles can be collected again
        self._free_memory()

    def _free_memory(self) -> None:
        """Return what dead tensors hold to the device, so a job that failed (out of memory, say) does
        not starve the next one (STYLE.md: errors are handled once, at the boundary: log, free, report)."""
        gc.collect()
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def gpu_sample(self) -> GpuSample | None:
        return self.gpu.sample()

    def between_jobs(self) -> None:
        """Run on the worker's thread after each job: the full garbage collection the job put off, if
        it put one off (zimage_sse/heap.py)."""
        heap.collect_between_jobs()

    def thread_started(self) -> None:
        """Run first on the thread that will load and run the model (the job manager's executor).

        On a CPU device, torch computes on this thread and on the pool threads it starts (which inherit
        its niceness), on the same cores as the event loop that serves every page and stream. Without
        a lower priority here, the model's threads took an equal share while 1,000 clients waited on
        their step events: the fan-out's p50 went from 40 to 25 ms with it (bench/RESULTS.md
        "Fan-out"). Idle cores still all go to the model, so a server with no one to serve generates as
        fast as before. Linux sets niceness per thread; elsewhere this does nothing.
        """
        if not self.device.startswith("cpu"):
            return
        if self.cpu_threads:
            # Several CPU workers share the cores: each computes on its share (torch's setting is the
            # process's, so every CPU worker sets the same number).
            torch.set_num_threads(self.cpu_threads)
        if self.cpu_cores and hasattr(os, "sched_setaffinity"):
            # Per thread on Linux; torch's pool threads, started from this one, inherit it.
            try:
                os.sched_setaffinity(threading.get_native_id(), self.cpu_cores)
            except OSError as exc:
                logger.warning("could not keep %s to cores %s: %s", self.device, self.cpu_cores, exc)
        if not self.cpu_nice or sys.platform != "linux":
            return
        thread = threading.get_native_id()
        # Relative to the server's own niceness (it may run under `nice` already), and never an
        # error: a worker that cannot be niced still works, where a failed initializer would break
        # the job manager's executor for good.
        nicer = min(MAX_NICE, os.getpriority(os.PRIO_PROCESS, thread) + self.cpu_nice)
        try:
            os.setpriority(os.PRIO_PROCESS, thread, nicer)
        except OSError as exc:
            logger.warning("could not lower the priority of the model's threads: %s", exc)

    @property
    def dtype_name(self) -> str:
        return pipeline.dtype_name(self.dtype)

    @property
    def device_name(self) -> str:
        """The card's name (the same seed gives the same image only on the same kind of device)."""
        return torch.cuda.get_device_name(self.device) if self.device.startswith("cuda") else "cpu"

    def _sync(self) -> None:
        # Only after a load, which is rare and copies the weights asynchronously: jobs are timed with
        # marks on the device's timeline instead (Clock), which never make the worker wait.
        if self.device.startswith("cuda"):
            torch.cuda.synchronize(self.device)

    def load(self, emit: Emit | None = None) -> Any:
        """Make the model resident, reporting each component as a `loading` event; the time each
        took is kept in `load_timings` until the job that loaded it has been recorded."""
        if self._pipe is None:
            timings: dict[str, float] = {}
            current: list[Any] = [None, time.perf_counter()]

            def on_component(name: str, index: int, count: int) -> None:
                now = time.perf_counter()
                if current[0] is not None:
                    timings[current[0]] = now - current[1]
                current[0], current[1] = name, now
                if emit is not None:
                    emit(LoadProgress(name, index, count))

            location = pipeline.model_location(self.model, self.models_dir)
            try:
                pipe = pipeline.load_pipeline(
                    location, pipeline.torch_device(self.device), self.dtype, on_component
                )
            except Exception as exc:
                # Nothing is kept, so the next job (or a preload) tries again: fixing the checkpoint
                # recovers without a restart.
                raise JobFailed(
                    f"The model could not be loaded from {location}: {describe_error(exc)}"
                ) from exc
            self.revision = (
                f"{self.model}-v{pipeline.EMBEDDED_VERSION}-seed{pipeline.EMBEDDED_SEED}"
                if pipeline.is_embedded(self.model)
                else repro.model_revision(location)
            )
            self._sync()
            if current[0] is not None:
                timings[current[0]] = time.perf_counter() - current[1]
            self._pipe, self._warm, self._sizes, self.load_timings = pipe, False, set(), timings
            heap.freeze()
        return self._pipe

    def run(self, job_id: str, params: JobParams, emit: Emit, cancel: threading.Event) -> Outcome:
        """Run one job; raises Cancelled, or JobFailed with a readable reason (errors end here, once)."""
        with job_context(job_id):
            try:
                with heap.deferred_full_collections():
                    return self._run(job_id, params, emit, cancel)
            except Cancelled:
                raise
            except Exception as exc:
                logger.exception("failed")
                reason = describe_error(exc)
                # Our own reasons (a full disk) are the job's; a model that is not resident after it
                # (the load failed), out of memory, or anything unforeseen is the device's.
                fault = (
                    self._pipe is None
                    or isinstance(exc, torch.cuda.OutOfMemoryError)
                    or not isinstance(exc, JobFailed)
                )
            # Past the except clause the exception and its traceback, which holds the job's tensors,
            # are gone, so their memory can really be freed.
            self._free_memory()
            raise JobFailed(reason, device_fault=fault)

    def _run(self, job_id: str, params: JobParams, emit: Emit, cancel: threading.Event) -> Outcome:
        report = Reporter(self._reports)
        timer = Timer(Clock(self.device), report)
        load = LoadSamples(self.gpu)
        load.take(time.perf_counter())
        self.load_timings = {}
        warm_up = not self._warm
        step_s: list[float] = []
        first_of_size = warm_up or not self.ran(params)
        try:
            # As `pipe()` itself runs: without autograd, which would record every operation of the
            # phases run outside it (the text encoder here) and keep their activations for a backward
            # pass that never comes.
            with torch.no_grad():
                names = self._generate(job_id, params, emit, cancel, timer, load, step_s)
        finally:
            # Every report is out (and every timing read) before the job's end, or its failure.
            failed = report.drain()
        if failed is not None:
            raise failed
        if warm_up:
            heap.freeze()  # its first run imported and cached more (zimage_sse/heap.py)
        self._warm = True
        self._sizes.add((params.width, params.height, params.num_images))
        return Outcome(
            images=names,
            step_s=step_s,
            phases=timer.phases,
            warm_up=warm_up,
            first_of_size=first_of_size,
            gpu_util_mean=load.util_mean,
            gpu_mem_peak_mb=load.mem_peak_mb,
            load_timings=dict(self.load_timings),
        )

    def _generate(
        self,
        job_id: str,
        params: JobParams,
        emit: Emit,
        cancel: threading.Event,
        timer: Timer,
        load: LoadSamples,
        step_s: list[float],
    ) -> list[str]:
        """Encode, denoise, decode and save; what the device did is reported by `timer.report`."""
        report = timer.report

        def in_order(message: Message) -> None:
            report.after(None, lambda: emit(message))

        pipe = (
            self._pipe if self._pipe is not None else timer.run("loading", emit, lambda: self.load(in_order))
        )
        guided = params.guidance > 0

        def check() -> None:
            if cancel.is_set():
                raise Cancelled

        check()
        positive, negative = timer.run(
            "encoding",
            emit,
            lambda: pipe.encode_prompt(
                prompt=params.prompt,
                negative_prompt=params.negative_prompt or None,
                do_classifier_free_guidance=guided,
                device=pipe._execution_device,
            ),
        )
        check()

        marks: list[Mark] = []  # the start of denoising, then the end of each step
        before: list[Any] = [None]  # latents before the step now running, for the preview's x0

        def step_done(mark: Mark, earlier: Mark, step: int) -> None:
            step_s.append(mark.since(earlier))
            emit(StepDone(step, params.steps, step_s[-1]))

        def send_preview(pending: preview.Pending, step: int) -> None:
            url, width, height = pending.finish()
            emit(PreviewReady(step, url, width, height))

        def on_step(_pipe: Any, index: int, _timestep: Any, tensors: dict[str, Any]) -> dict[str, Any]:
            mark = timer.clock.mark()
            report.after(mark, functools.partial(step_done, mark, marks[-1], index + 1))
            # A preview made now is paid for in the next step's time, so the ETA includes it.
            marks.append(mark)
            after = tensors["latents"]
            if self.preview_every and (index + 1) % self.preview_every == 0:
                # The scheduler keeps its sigmas on the device: they stay tensors here, as `float()`
                # would make the worker wait for the GPU to finish the step before launching the next.
                sigmas = pipe.scheduler.sigmas
                pending = preview.start(before[0], after, sigmas[index], sigmas[index + 1])
                report.after(None, functools.partial(send_preview, pending, index + 1))
            before[0] = after
            load.take(time.perf_counter())
            check()
            return tensors

        def denoise() -> Any:
            # A CPU generator gives the same noise for a seed on every device. The starting latents are
            # made here, exactly as the pipeline would, so the first step's preview knows them.
            generator = torch.Generator("cpu").manual_seed(params.seed)
            before[0] = pipe.prepare_latents(
                params.num_images,
                pipe.transformer.in_channels,
                params.height,
                params.width,
                torch.float32,
                pipe._execution_device,
                generator,
            )
            marks.append(timer.clock.mark())
            return pipe(
                prompt_embeds=positive,
                negative_prompt_embeds=negative if guided else None,
                height=params.height,
                width=params.width,
                num_inference_steps=params.steps,
                guidance_scale=params.guidance,
                num_images_per_prompt=params.num_images,
                latents=before[0],
                output_type="latent",
                callback_on_step_end=on_step,
            ).images

        latents = timer.run("denoising", emit, denoise)
        check()
        pictures = timer.run("decoding", emit, lambda: self._decode(pipe, latents))
        meta = {
            "model": self.model,
            "model_revision": self.revision,
            "device": self.device,
            "device_name": self.device_name,
            "dtype": self.dtype_name,
            "diffusers": diffusers.__version__,
            "torch": torch.__version__,
            "zimage_sse": __version__,
            "job_id": job_id,
        }

        def save() -> list[str]:
            names: list[str] = []
            for index, picture in enumerate(pictures):
                name = images.image_name(job_id, index)
                try:
                    images.save_png(picture, self.images_dir / name, params, {**meta, "index": index})
                except OSError as exc:
                    if exc.errno not in NO_SPACE:
                        raise
                    images.remove(self.images_dir, names)  # a job keeps all of its images or none
                    raise JobFailed(
                        f"Disk full while saving the image ({exc.strerror}); nothing was kept. "
                        "Free some space and submit the job again."
                    ) from None
                names.append(name)
            return names

        names: list[str] = timer.run("saving", emit, save)
        return names

    @staticmethod
    def _decode(pipe: Any, latents: Any) -> list[Any]:
        # What ZImagePipeline.__call__ does after its loop; run here so decode is timed as its own phase.
        latents = latents.to(pipe.vae.dtype)
        latents = latents / pipe.vae.config.scaling_factor + pipe.vae.config.shift_factor
        decoded = pipe.vae.decode(latents, return_dict=False)[0]
        return list(pipe.image_processor.postprocess(decoded, output_type="pil"))


def describe_error(exc: BaseException) -> str:
    """A reason a person can act on, for the job's `failed` event and its row."""
    if isinstance(exc, JobFailed):
        return exc.reason
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return "The GPU ran out of memory for this job; try a smaller size or fewer images."
    text = str(exc).strip() or "no details"
    return f"{type(exc).__name__}: {text}"
