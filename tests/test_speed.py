"""The device's speed across sizes (zimage_sse/speed.py, applied in eta.EtaModel) on synthetic
histories where the speed is known: a step change, a slow ramp, one outlier, a size seen only while the
machine was slow, and the one-off first decode at a size."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest

from zimage_sse.eta import EtaModel, JobRecord, tokens
from zimage_sse.speed import CHANGE, current, speeds

from .test_eta import KEY, curve_decode, curve_step, job, predict

SIZES = ((512, 512), (768, 768), (1024, 1024), (640, 512))


def at_speed(width: int, height: int, speed: float, *, first_of_size: bool = False) -> JobRecord:
    """A job whose steps, encode, decode and save all take `speed` times the generating curves."""
    return replace(
        job(
            width,
            height,
            step=curve_step(tokens(width, height, 1)) * speed,
            encode=0.03 * speed,
            decode=curve_decode(width * height) * speed,
            save=0.02 * speed,
        ),
        first_of_size=first_of_size,
    )


def steady_step(width: int, height: int) -> float:
    return curve_step(tokens(width, height, 1))


def mixed(count: int, speed: float, start: int = 0) -> list[JobRecord]:
    return [at_speed(*SIZES[(start + i) % len(SIZES)], speed) for i in range(count)]


def step_error(model: EtaModel, width: int, height: int, speed: float) -> float:
    return predict(model, width, height).step_s / (steady_step(width, height) * speed) - 1.0


def test_a_step_change_is_learned_for_every_size_within_two_jobs() -> None:
    model = EtaModel(mixed(40, 1.0))
    for width, height in SIZES:
        assert step_error(model, width, height, 1.0) == pytest.approx(0.0, abs=1e-9)

    # The machine gets 40 % slower: the first slow job alone might be an outlier, so nothing moves much.
    model.add(at_speed(512, 512, 1.4))
    assert abs(step_error(model, 1024, 1024, 1.0)) < 0.02
    # A second slow job, of another size: now every size is predicted at the new speed, including
    # the two sizes that have not run since the change.
    model.add(at_speed(768, 768, 1.4))
    for width, height in SIZES:
        assert abs(step_error(model, width, height, 1.4)) < 0.01, (width, height)
    assert model.speed(KEY) == pytest.approx(1.4, rel=0.01)
    # Decode, encode and save follow the same speed.
    prediction = predict(model, 1024, 1024)
    assert prediction.decode_s == pytest.approx(curve_decode(1024 * 1024) * 1.4, rel=0.01)
    assert prediction.encode_s == pytest.approx(0.03 * 1.4, rel=0.01)
    assert prediction.save_s == pytest.approx(0.02 * 1.4, rel=0.01)
    # And back: the machine is quiet again after a few slow jobs.
    for record in mixed(3, 1.4, start=2) + mixed(2, 1.0):
        model.add(record)
    for width, height in SIZES:
        assert abs(step_error(model, width, height, 1.0)) < 0.01, (width, height)


def test_a_slow_ramp_is_followed_a_couple_of_jobs_behind() -> None:
    model = EtaModel(mixed(20, 1.0))
    ramp = [1.0 + 0.01 * i for i in range(1, 51)]  # 1 % slower with every job, to 1.5
    worst = 0.0
    for i, speed in enumerate(ramp):
        width, height = SIZES[i % len(SIZES)]
        worst = max(
            worst, abs(predict(model, width, height).step_s / (steady_step(width, height) * speed) - 1)
        )
        model.add(at_speed(width, height, speed))
    # A per-size median would be about 25 % behind by the end; the speed is about 3 jobs behind at most
    # (1 % a job), however long the ramp.
    assert worst < 0.04
    # The speed is relative to the device's usual pace over the history it keeps (its median job).
    assert known_speed(model) > 1.2


def test_one_outlier_job_hardly_moves_the_speed() -> None:
    model = EtaModel(mixed(30, 1.0))
    model.add(at_speed(1024, 1024, 3.0))  # one job three times slower (a hiccup, a swap storm)
    for width, height in SIZES:
        assert abs(step_error(model, width, height, 1.0)) < 0.01
    model.add(at_speed(512, 512, 1.0))
    assert model.speed(KEY) == pytest.approx(1.0, abs=0.005)


def test_noise_does_not_make_a_change() -> None:
    rng = random.Random(7)
    history = [at_speed(*SIZES[i % len(SIZES)], 1.0 + rng.uniform(-0.04, 0.04)) for i in range(200)]
    model = EtaModel()
    for record in history:
        model.add(record)
        assert abs(known_speed(model) - 1.0) < CHANGE  # never jumps to one noisy job


def known_speed(model: EtaModel) -> float:
    speed = model.speed(KEY)
    assert speed is not None
    return speed


def test_a_size_seen_only_while_the_machine_was_slow_is_predicted_at_the_speed_now() -> None:
    model = EtaModel(mixed(20, 1.0))
    for i in range(12):  # twice as slow; a new size among the usual ones
        model.add(at_speed(*((896, 896) if i % 3 == 0 else SIZES[i % len(SIZES)]), 2.0))
    for record in mixed(6, 1.0):
        model.add(record)
    # A per-size median would predict 896² at twice its time for as long as it stays unseen.
    assert abs(step_error(model, 896, 896, 1.0)) < 0.02


def test_a_size_never_seen_uses_the_cost_model_at_the_speed_now() -> None:
    model = EtaModel([*mixed(40, 1.0), at_speed(512, 512, 1.25), at_speed(640, 512, 1.25)])
    prediction = predict(model, 1280, 1280)
    assert prediction.source == "cost-model"
    assert prediction.step_s == pytest.approx(steady_step(1280, 1280) * 1.25, rel=0.03)
    assert prediction.speed == pytest.approx(1.25, rel=0.01)


def test_a_first_decode_at_a_size_is_learned_apart_and_keeps_the_steady_decode() -> None:
    history = []
    for width, height in SIZES:
        first = at_speed(width, height, 1.0, first_of_size=True)
        history.append(replace(first, phases={**first.phases, "decoding": first.phases["decoding"] * 2}))
        history += [at_speed(width, height, 1.0) for _ in range(2)]
    model = EtaModel(history)
    for width, height in SIZES:
        steady = predict(model, width, height)
        assert steady.decode_s == pytest.approx(curve_decode(width * height), rel=1e-6)
        assert predict(model, width, height, first_of_size=True).decode_s == pytest.approx(
            2 * curve_decode(width * height), rel=1e-6
        )
    # A size run once, as its first: its steady decode is that one's without the learned one-off.
    first = at_speed(896, 896, 1.0, first_of_size=True)
    model.add(replace(first, phases={**first.phases, "decoding": first.phases["decoding"] * 2}))
    assert predict(model, 896, 896).decode_s == pytest.approx(curve_decode(896 * 896), rel=1e-6)


def test_no_one_off_is_predicted_where_first_decodes_are_like_the_rest() -> None:
    model = EtaModel([at_speed(w, h, 1.0, first_of_size=i == 0) for w, h in SIZES for i in range(3)])
    assert predict(model, 768, 768, first_of_size=True).decode_s == pytest.approx(
        predict(model, 768, 768).decode_s
    )


def test_current_speed_from_ratios() -> None:
    assert current([]) == 1.0
    assert current([1.0] * 10) == 1.0
    assert current([1.0] * 10 + [1.5]) == 1.0  # one job is not a change
    assert current([1.0] * 10 + [1.5, 1.5]) == 1.5  # two in a row are
    assert current([1.0] * 10 + [1.5, 0.6]) == 1.0  # two off, but not the same way
    found = speeds([("a", 1.0), ("b", 2.0), ("a", 1.0), ("b", 2.0)])
    assert found.shape == {"a": 1.0, "b": 2.0}
    assert found.now == 1.0


def test_sizes_run_once_while_slow_do_not_hide_the_change_nor_stay_slow() -> None:
    """As in the drift benchmark: new sizes appear, once each, just before the load stops. They say
    nothing about speed themselves, so they neither pull the period's speed to 1 nor keep their slow
    time as their shape once the machine is quick again."""
    model = EtaModel(mixed(20, 1.0))
    for record in mixed(6, 2.0):
        model.add(record)
    model.add(at_speed(832, 640, 2.0))
    model.add(at_speed(768, 1024, 2.0))
    for record in mixed(4, 1.0):
        model.add(record)
    for width, height in ((832, 640), (768, 1024), *SIZES):
        assert abs(step_error(model, width, height, 1.0)) < 0.02, (width, height)
