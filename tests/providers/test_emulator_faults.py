"""The emulators' fault knobs themselves (`providers.emulator.core`): when counts and outages
start and end, the shape each provider's side answers a fault in, and the reading switches
(protocols.md §11) beside them. What the adapters make of the faults and readings, over real
HTTP, is in the conformance suite."""

from __future__ import annotations

import io
import json
import struct
import time

import pytest
from PIL import Image
from starlette.responses import Response

from nbp.providers.emulator.core import (
    AFTER_CREATE_STATUSES,
    PAD_CHUNK_TYPE,
    READING_POINTS,
    FaultConfig,
    FileStore,
    ProviderEmulator,
    RemoteTask,
    bomb_png,
    oversize_body,
    render_image,
)
from nbp.providers.emulator.hub import emulator_class

BUILT_IN = ["wiro", "hiapi", "runware", "kie", "apikley", "gemini"]


def fresh(name: str = "kie", **knobs: object) -> ProviderEmulator:
    return emulator_class(name)(FaultConfig(**knobs))  # type: ignore[arg-type]


def status(response: Response | None) -> int | None:
    return None if response is None else response.status_code


# -- reading switches -----------------------------------------------------------------------------


# Each point of protocols.md §11 (and a unit the docs leave open: the provider's facts say
# which) and the emulators that must serve more than one reading of it.
SECTION_11 = {
    "poll_failure": ["runware"], "resent_create": ["runware", "hiapi"], "cancel": ["wiro"],
    "unknown_task": ["kie", "apikley"], "overload": ["gemini"],
    "task_times": ["kie", "apikley"],
}


@pytest.mark.parametrize("point", READING_POINTS)
def test_every_point_of_section_11_is_served_in_more_than_one_reading(point: str) -> None:
    for name in SECTION_11[point]:
        readings = emulator_class(name).READINGS[point]
        assert len(readings) >= 2, (name, point)
        emulator = fresh(name)
        for switches in readings.values():  # every reading is a valid configuration
            emulator.configure(**switches)


@pytest.mark.parametrize("name", BUILT_IN)
def test_switches_are_configured_like_knobs_and_reset_to_their_defaults(name: str) -> None:
    emulator = fresh(name)
    for index, switch in enumerate(emulator.switches()):
        defaults = dict(vars(switch))
        for readings in emulator.READINGS.values():
            for switches in readings.values():
                emulator.configure(**switches)
        emulator.reset()
        assert vars(emulator.switches()[index]) == defaults
    with pytest.raises(AttributeError, match="no_such_knob"):
        emulator.configure(no_such_knob=1)


def test_a_choice_takes_only_its_documented_values() -> None:
    emulator = fresh("runware")
    with pytest.raises(ValueError, match="failure must be one of 'status', 'code'"):
        emulator.configure(failure="http_418")
    emulator.configure(failure="code", fail_code="anything at all")  # a free code: any string
    assert (emulator.switches()[0].failure, emulator.switches()[0].fail_code) == (
        "code", "anything at all")


def test_a_stop_set_for_later_leaves_the_task_running_until_then() -> None:
    now = time.time()
    task = RemoteTask("t", "p", "1:1", "1K", "png", now, 10.0, "success")
    task.cancelled_at = now + 5.0
    assert task.phase(now + 3.0) == "running" and not task.terminal
    assert task.phase(now + 5.0) == "cancelled"


# -- when faults start and end ------------------------------------------------------------------


def test_a_poll_outage_starts_when_it_is_configured_and_lasts_its_time() -> None:
    emulator = fresh()
    assert status(emulator.status_fault()) is None
    emulator.configure(poll_outage_s=0.3)
    assert status(emulator.status_fault()) == 503
    time.sleep(0.35)
    assert status(emulator.status_fault()) is None


def test_an_outage_may_start_later_or_from_construction() -> None:
    emulator = fresh()
    emulator.configure(poll_outage_s=5.0, poll_outage_from=time.monotonic() + 60)
    assert status(emulator.status_fault()) is None
    built = fresh(poll_outage_s=5.0, download_outage_s=5.0)
    assert status(built.status_fault()) == 503
    assert status(built.download_fault()) == 503


def test_counts_are_used_up_one_request_at_a_time() -> None:
    emulator = fresh(poll_403_count=2, download_fail_count=1)
    assert [status(emulator.status_fault()) for _ in range(3)] == [403, 403, None]
    assert [status(emulator.download_fault()) for _ in range(2)] == [503, None]
    assert emulator.config.poll_403_count == 0


def test_a_create_answered_after_creating_draws_500_502_and_504() -> None:
    emulator = fresh(create_5xx_after_create_prob=1.0, seed=7)
    seen = {status(emulator.created_fault()) for _ in range(60)}
    assert seen == set(AFTER_CREATE_STATUSES) == {500, 502, 504}
    emulator.configure(create_5xx_after_create_prob=0.0)
    assert emulator.created_fault() is None


# -- the shape of each provider's side ----------------------------------------------------------


def _json(response: Response) -> object:
    return json.loads(bytes(response.body))


@pytest.mark.parametrize("name", BUILT_IN)
@pytest.mark.parametrize("code", [403, 500, 502, 503, 504])
def test_each_fault_answers_in_the_providers_shape(name: str, code: int) -> None:
    response = fresh(name).fault_response(code)
    assert response.status_code == code
    media = response.media_type or ""
    kie_like = name in ("kie", "apikley")
    if kie_like and code == 403:  # Cloudflare's bare refusal (protocols.md §4.1)
        assert bytes(response.body) == b"error code: 1010"
    elif kie_like and code == 500:
        assert _json(response) == {"code": 500, "msg": "Server Error", "data": None}
    elif name == "wiro" and code == 500:
        assert _json(response) == {"result": False, "errors": [
            {"code": 0, "message": "Internal server error"}]}
    elif name == "hiapi" and code in (500, 503):
        body = _json(response)
        assert isinstance(body, dict) and body["code"] == code and body["data"] is None
    elif name == "gemini" and code != 502:  # Google's error body (protocols-gemini.md §3)
        body = _json(response)
        assert isinstance(body, dict) and body["error"]["code"] == code
        assert body["error"]["status"] in ("PERMISSION_DENIED", "INTERNAL", "UNAVAILABLE",
                                           "DEADLINE_EXCEEDED")
    elif name == "runware" and code in (500, 503):
        body = _json(response)
        assert isinstance(body, dict) and body["errors"][0]["code"] in (
            "internalServerError", "serviceUnavailable")
    else:  # the proxy or CDN in front of the API
        assert media == "text/html" and f"<h1>{code} ".encode() in bytes(response.body)
        assert (b"cloudflare" in bytes(response.body)) is kie_like


# -- images ------------------------------------------------------------------------------------


def test_the_bomb_is_small_and_claims_900_megapixels() -> None:
    data = bomb_png(30000, 30000)
    assert len(data) < 120_000
    assert struct.unpack(">II", data[16:24]) == (30000, 30000)
    assert data[24:26] == b"\x01\x00"  # 1 bit per pixel, greyscale


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_an_oversize_image_is_exactly_its_size_and_still_decodes(fmt: str) -> None:
    image = render_image(64, 48, fmt, "oversize")
    size = 2 * 1024 * 1024 + 3
    body = oversize_body(image, "image/x", size)
    data = body.read()
    assert len(data) == body.size == size
    if fmt == "png":
        assert body.head.endswith(PAD_CHUNK_TYPE) and data.endswith(b"IEND\xaeB`\x82")
        with Image.open(io.BytesIO(data)) as decoded:
            decoded.verify()  # every chunk's CRC, the padding's too
    with Image.open(io.BytesIO(data)) as decoded:
        decoded.load()
        assert decoded.size == (64, 48)


def test_the_file_store_renders_marked_results_and_keeps_uploads_apart() -> None:
    store = FileStore()
    store.register_generated("kie-a-0.png", 64, 48, "png", seed_text="x", pad_to=10_000)
    store.register_generated("kie-b-0.png", 30000, 30000, "png", seed_text="x", bomb=True)
    store.put("kie-upload-c.png", b"\x89PNG uploaded", "image/png")
    padded, bomb, upload = (store.open(k) for k in ("kie-a-0.png", "kie-b-0.png",
                                                    "kie-upload-c.png"))
    assert padded is not None and padded.size == 10_000 and padded.result
    assert bomb is not None and bomb.head == bomb_png(30000, 30000) and bomb.result
    assert upload is not None and not upload.result and upload.read() == b"\x89PNG uploaded"
    assert store.open("nothing") is None


def test_tasks_survive_into_a_fresh_emulator_and_foreign_entries_are_skipped() -> None:
    """`nbp run --emulate` keeps the emulators' tasks in the target between runs: a task
    comes back as it was; anything else in that file (it is the target's, so input) is
    skipped, never trusted."""
    before = fresh("wiro")
    task = RemoteTask("t1", "a vase", "1:1", "1K", "png", created=time.time(), latency_s=5.0,
                      outcome="success", extra={"token": "tok-1"})
    before.tasks[task.task_id] = task
    exported = json.loads(json.dumps(before.export_tasks()))
    after = fresh("wiro")
    hostile = [{"task_id": 1}, "x", {**exported[0], "task_id": "t2", "extra": []},
               {**exported[0], "__class__": "os.system"}]
    assert after.import_tasks([*exported, *hostile]) == 1
    assert after.tasks["t1"] == task
    assert after.import_tasks({"not": "a list"}) == 0


def test_a_picture_is_drawn_from_the_prompt_and_the_model_asked_for() -> None:
    """Two model ids of one prompt draw two pictures, as real models would (`nbp compare`
    then sees a model change); replicates of one request share one."""
    from nbp.providers.emulator.core import RemoteTask, picture_seed

    def task(body: object, **extra: str) -> RemoteTask:
        made = RemoteTask("t", "a cup", "1:1", "1K", "png", 0.0, 1.0, "success", body)
        made.extra.update(extra)
        return made

    kie_a, kie_b = task({"model": "a", "input": {}}), task({"model": "b", "input": {}})
    runware = task([{"taskType": "authentication"}, {"taskType": "imageInference",
                                                     "model": "google:4@2", "seed": 7}])
    assert picture_seed(kie_a) != picture_seed(kie_b)
    assert picture_seed(kie_a) == picture_seed(task({"model": "a", "input": {"seed": 1}}))
    assert picture_seed(runware) == "a cup\x1fgoogle:4@2"
    assert picture_seed(task({"contents": []}, model="gemini-3-pro-image")).endswith(
        "gemini-3-pro-image")
    assert picture_seed(task({"prompt": "a cup"})) == "a cup"  # no model named: the prompt
