"""Request validation (zimage_sse/params.py) and what the JSON API answers to a bad request."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from starlette.testclient import TestClient

from zimage_sse.app import create_app
from zimage_sse.config import Settings
from zimage_sse.params import MAX_SEED, InvalidRequest, JobParams, validate

SETTINGS = Settings()
LONG = "x" * (SETTINGS.max_prompt_chars + 1)
MISSING = object()  # a field left out of the body


def errors_of(data: object, settings: Settings = SETTINGS, *, from_form: bool = False) -> dict[str, str]:
    with pytest.raises(InvalidRequest) as caught:
        validate(data, settings, from_form=from_form)
    return caught.value.errors


def short_id(value: object) -> str | None:
    """Readable test ids for the oversized values (a 2001-character prompt, a 401-digit number)."""
    text = repr(value)
    return f"{text[:12]}...({len(text)} chars)" if len(text) > 24 else None


# -- valid requests ----------------------------------------------------------------------------


def test_defaults_fill_every_optional_field() -> None:
    params = validate({"prompt": "a red fox in the snow"}, SETTINGS)

    assert params.prompt == "a red fox in the snow"
    assert params.negative_prompt == ""
    assert (params.width, params.height) == (1024, 1024)
    assert params.steps == 8
    assert params.guidance == 0.0
    assert params.num_images == 1
    assert isinstance(params.seed, int)
    assert 0 <= params.seed <= MAX_SEED


def test_a_random_seed_is_chosen_and_recorded_when_absent() -> None:
    seeds = {validate({"prompt": "a fox"}, SETTINGS).seed for _ in range(4)}
    assert len(seeds) > 1  # four equal draws from 2**32 would mean the seed is not random


@pytest.mark.parametrize("seed", [0, 1, 123456789, MAX_SEED])
def test_a_given_seed_is_kept(seed: int) -> None:
    assert validate({"prompt": "a fox", "seed": seed}, SETTINGS).seed == seed


def test_every_field_given_is_kept() -> None:
    body = {
        "prompt": "a lighthouse",
        "negative_prompt": "blurry",
        "width": 768,
        "height": 512,
        "steps": 4,
        "guidance": 3,  # a JSON integer is a number too
        "seed": 42,
        "num_images": 2,
    }
    params = validate(body, SETTINGS)
    assert params == JobParams(
        prompt="a lighthouse",
        negative_prompt="blurry",
        width=768,
        height=512,
        steps=4,
        guidance=3.0,
        seed=42,
        num_images=2,
    )
    assert isinstance(params.guidance, float)


@pytest.mark.parametrize(
    "body",
    [
        {"width": 64, "height": 64, "steps": 1, "guidance": 0.0, "num_images": 1},
        {"width": 2048, "height": 2048, "steps": 100, "guidance": 20.0, "num_images": 4},
    ],
    ids=["lowest", "highest"],
)
def test_limits_themselves_are_allowed(body: dict[str, Any]) -> None:
    params = validate({"prompt": "a fox", **body}, SETTINGS)
    assert (params.width, params.height, params.steps, params.guidance, params.num_images) == (
        body["width"],
        body["height"],
        body["steps"],
        body["guidance"],
        body["num_images"],
    )


# -- invalid JSON requests ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        pytest.param("prompt", MISSING, "required", id="prompt-missing"),
        ("prompt", None, "required"),
        ("prompt", 42, "must be a string"),
        ("prompt", ["a fox"], "must be a string"),
        ("prompt", "", "must not be empty"),
        ("prompt", "   \n", "must not be empty"),
        ("prompt", LONG, "limit of 2000"),
        ("negative_prompt", 7, "must be a string"),
        ("negative_prompt", LONG, "limit of 2000"),
        ("width", "512", "whole number"),
        ("width", 512.0, "whole number"),
        ("width", True, "whole number"),
        ("width", 32, "between 64 and 2048"),
        ("width", 4096, "between 64 and 2048"),
        ("width", 520, "multiple of 16"),
        ("height", "512", "whole number"),
        ("height", 512.5, "whole number"),
        ("height", False, "whole number"),
        ("height", 0, "between 64 and 2048"),
        ("height", 2064, "between 64 and 2048"),
        ("height", 1000, "multiple of 16"),
        ("steps", "8", "whole number"),
        ("steps", 8.5, "whole number"),
        ("steps", True, "whole number"),
        ("steps", 0, "between 1 and 100"),
        ("steps", 101, "between 1 and 100"),
        ("guidance", "0", "must be a number"),
        ("guidance", True, "must be a number"),
        ("guidance", [1.0], "must be a number"),
        ("guidance", -0.5, "between 0 and 20"),
        ("guidance", 20.5, "between 0 and 20"),
        ("guidance", float("nan"), "between 0 and 20"),
        ("guidance", float("inf"), "between 0 and 20"),
        ("guidance", 10**400, "between 0 and 20"),
        ("seed", "42", "whole number"),
        ("seed", 4.0, "whole number"),
        ("seed", False, "whole number"),
        ("seed", -1, "between 0 and"),
        ("seed", MAX_SEED + 1, "between 0 and"),
        ("num_images", "2", "whole number"),
        ("num_images", True, "whole number"),
        ("num_images", 0, "between 1 and 4"),
        ("num_images", 5, "between 1 and 4"),
    ],
    ids=short_id,
)
def test_each_bad_field_is_named_with_a_reason(field: str, value: object, reason: str) -> None:
    body: dict[str, object] = {"prompt": "a fox", field: value}
    if value is MISSING:
        del body[field]

    errors = errors_of(body)

    assert set(errors) == {field}
    assert reason in errors[field]


def test_too_many_pixels_is_rejected() -> None:
    settings = Settings(max_pixels=512 * 512)
    assert validate({"prompt": "a fox", "width": 512, "height": 512}, settings).width == 512

    errors = errors_of({"prompt": "a fox", "width": 768, "height": 512}, settings)

    assert set(errors) <= {"width", "height"}
    reason = " ".join(errors.values())
    assert "393216 pixels" in reason
    assert str(512 * 512) in reason


@pytest.mark.parametrize("name", ["sampler", "Prompt", "cfg"])
def test_unknown_fields_are_rejected(name: str) -> None:
    errors = errors_of({"prompt": "a fox", name: 1})
    assert errors == {name: "unknown field"}


@pytest.mark.parametrize("body", [[], ["prompt"], "a fox", 42, None, True])
def test_a_body_that_is_not_an_object_is_rejected(body: object) -> None:
    errors = errors_of(body)
    assert set(errors) == {"body"}
    assert "object" in errors["body"]


def test_every_offending_field_is_reported_at_once() -> None:
    errors = errors_of({"prompt": "", "width": 100, "steps": "eight", "seed": -3, "extra": 1})
    assert set(errors) == {"prompt", "width", "steps", "seed", "extra"}


# -- form posts --------------------------------------------------------------------------------


def test_form_strings_are_converted() -> None:
    form = {
        "prompt": "a fox",
        "negative_prompt": "blurry",
        "width": "768",
        "height": " 512 ",
        "steps": "4",
        "guidance": "1.5",
        "seed": "42",
        "num_images": "2",
    }
    params = validate(form, SETTINGS, from_form=True)
    assert params == JobParams(
        prompt="a fox",
        negative_prompt="blurry",
        width=768,
        height=512,
        steps=4,
        guidance=1.5,
        seed=42,
        num_images=2,
    )


def test_empty_optional_form_fields_mean_the_default() -> None:
    form = dict.fromkeys(
        ("negative_prompt", "width", "height", "steps", "guidance", "seed", "num_images"), ""
    )
    params = validate({"prompt": "a fox", **form}, SETTINGS, from_form=True)
    assert params.negative_prompt == ""
    assert (params.width, params.height, params.steps, params.guidance, params.num_images) == (
        1024,
        1024,
        8,
        0.0,
        1,
    )
    assert 0 <= params.seed <= MAX_SEED


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("prompt", "", "must not be empty"),
        ("prompt", "  ", "must not be empty"),
        ("width", "abc", "whole number"),
        ("width", "512.0", "whole number"),
        ("width", "4096", "between 64 and 2048"),
        ("height", "500", "multiple of 16"),
        ("steps", "eight", "whole number"),
        ("guidance", "lots", "must be a number"),
        ("guidance", "nan", "between 0 and 20"),
        ("seed", "12.5", "whole number"),
        ("seed", "-1", "between 0 and"),
        ("num_images", "9", "between 1 and 4"),
    ],
)
def test_bad_form_values_are_rejected(field: str, value: str, reason: str) -> None:
    errors = errors_of({"prompt": "a fox", field: value}, from_form=True)
    assert set(errors) == {field}
    assert reason in errors[field]


def test_json_strings_are_not_converted() -> None:
    # Only form posts get their strings converted; a JSON client sending "512" has a bug to hear about.
    errors = errors_of({"prompt": "a fox", "width": "512", "height": ""})
    assert set(errors) == {"width", "height"}


# -- the JSON API ------------------------------------------------------------------------------


@pytest.fixture
def app_settings(tmp_path: Path, models_dir: Path) -> Settings:
    return Settings(model="tiny", data_dir=tmp_path, models_dir=models_dir, device="cpu")


@pytest.fixture
def client(app_settings: Settings) -> Iterator[TestClient]:
    # Server errors come back as 500 responses, so a crash shows up as a wrong status, not a traceback.
    with TestClient(create_app(app_settings), raise_server_exceptions=False) as test_client:
        yield test_client


def assert_nothing_queued(client: TestClient, settings: Settings) -> None:
    listing = client.get("/api/jobs")
    assert listing.status_code == 200
    assert listing.json()["jobs"] == []
    with sqlite3.connect(settings.db_path) as conn:
        assert conn.execute("SELECT count(*) FROM jobs").fetchone() == (0,)


@pytest.mark.parametrize(
    ("body", "field", "reason"),
    [
        ({"width": 512}, "prompt", "required"),
        ({"prompt": "a fox", "width": 520}, "width", "multiple of 16"),
        ({"prompt": "a fox", "steps": True}, "steps", "whole number"),
        ({"prompt": "a fox", "seed": "7"}, "seed", "whole number"),
        ({"prompt": "a fox", "guidance": 10**400}, "guidance", "between 0 and 20"),
        ({"prompt": "a fox", "style": "noir"}, "style", "unknown field"),
        (["a fox"], "body", "object"),
    ],
    ids=["no-prompt", "width-520", "steps-true", "seed-string", "guidance-10**400", "unknown-field", "list"],
)
def test_api_answers_422_with_the_errors_and_queues_nothing(
    client: TestClient, app_settings: Settings, body: object, field: str, reason: str
) -> None:
    response = client.post("/api/jobs", json=body)

    assert response.status_code == 422, response.text
    errors = response.json()["errors"]
    assert set(errors) == {field}
    assert reason in errors[field]
    assert_nothing_queued(client, app_settings)


@pytest.mark.parametrize("raw", [b'{"prompt": "a fox",', b"prompt=a+fox", b"", b'\xff{"prompt": 1}'])
def test_api_answers_400_to_malformed_json(client: TestClient, app_settings: Settings, raw: bytes) -> None:
    response = client.post("/api/jobs", content=raw, headers={"Content-Type": "application/json"})

    assert response.status_code == 400, response.text
    assert "JSON" in response.json()["errors"]["body"]
    assert_nothing_queued(client, app_settings)
