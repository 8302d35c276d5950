"""Images, audio and moderations through the official SDK: relayed to the mock, held and charged per unit."""
from __future__ import annotations

import asyncio
import functools
import math
import secrets
import threading
from decimal import Decimal
from typing import Any

import openai
import pytest
import requests

from tests import mock_media, openai_tokens
from tests import mock_upstream as up
from tests.world import Tenant, World
from tools.stack import wait_until


def _priced(world: World, units: dict[str, float], prompt: float = 0, prefix: str = "media",
            **channel: Any) -> tuple[str, str]:
    """A fresh model priced per unit (and per token), served by one mock channel: (model, tag)."""
    model = f"{prefix}-{secrets.token_hex(4)}"
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": prompt, "completion": 0, "units": units})
    _, tag = world.channel([model], **channel)
    return model, tag


def _rows(world: World, t: Tenant) -> list[dict[str, Any]]:
    return world.usage(t.user_id)


def _charged(world: World, t: Tenant, credits: Decimal, before: Decimal = Decimal(100)) -> dict[str, Any]:
    """The tenant's one usage row: complete, at `credits`; the balance moved by exactly that, nothing held."""
    rows = _rows(world, t)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["status"] == "complete", row
    assert Decimal(str(row["credits"])) == credits
    assert world.balance(t.user_id) == before - credits
    assert world.held(t.user_id) == 0
    assert world.verify()["ok"]
    return row


def _untouched(world: World, t: Tenant, before: Decimal = Decimal(100)) -> None:
    assert _rows(world, t) == []
    assert world.balance(t.user_id) == before and world.held(t.user_id) == 0
    assert world.verify()["ok"]


_wav = functools.partial(mock_media.wav, rate=8000)  # silent 8 kHz PCM WAV of the seconds given


# --- images ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["b64_json", "url"])
def test_images_are_charged_per_image_at_their_size_and_quality(world: World, fmt: str) -> None:
    model, tag = _priced(world, {"image": 2, "image/1024x1024/hd": 5, "image/1792x1024": 3})
    t = world.tenant()
    result = t.client.images.generate(model=model, prompt="a red fox", n=2, size="1024x1024", quality="hd",
                                      response_format=fmt)
    assert len(result.data) == 2
    if fmt == "b64_json":
        assert all(d.b64_json and d.url is None for d in result.data)
    else:
        assert all(d.url and d.url.startswith("https://") for d in result.data)
    row = _charged(world, t, Decimal(10))  # 2 images x 5 credits
    assert row["prompt_tokens"] == 2 and row["completion_tokens"] == 0
    sent = world.mock.received(tag)[-1]
    assert sent.path == "images/generations" and sent.body["n"] == 2 and sent.body["quality"] == "hd"

    # A size priced without a quality of its own; a size priced by the plain "image" entry.
    t2 = world.tenant()
    t2.client.images.generate(model=model, prompt="a fox", size="1792x1024", quality="standard")
    t2.client.images.generate(model=model, prompt="a fox", size="512x512")
    assert sorted(Decimal(str(r["credits"])) for r in _rows(world, t2)) == [2, 3]
    assert world.balance(t2.user_id) == 95 and world.verify()["ok"]


def test_images_hold_every_image_asked_for_and_settle_to_those_returned(world: World) -> None:
    model, tag = _priced(world, {"image": 4})
    release = asyncio.Event()
    world.mock.script(tag, mock_media.images(returned=1, release=release))
    t = world.tenant()
    done: list[Any] = []
    caller = threading.Thread(target=lambda: done.append(
        t.client.images.generate(model=model, prompt="three cats", n=3)))
    caller.start()
    try:
        # While the upstream works, the hold is the worst case: three images.
        wait_until(lambda: world.held(t.user_id) == 12, 20, "the hold for three images")
        assert world.balance(t.user_id) == 88
    finally:
        world.mock._loop.call_soon_threadsafe(release.set)
        caller.join(30)
    assert len(done) == 1 and len(done[0].data) == 1
    row = _charged(world, t, Decimal(4))  # one image came back: one is paid for
    assert row["prompt_tokens"] == 1


def test_image_edits_and_variations_upload_the_image_with_the_upstream_model_name(world: World) -> None:
    model = f"media-{secrets.token_hex(4)}"
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 0, "completion": 0, "units": {"image": 1.5}})
    _, tag = world.channel([model], model_map={model: "dall-e-2"})
    t = world.tenant()
    edited = t.client.images.edit(model=model, image=("fox.png", mock_media.PNG_1X1, "image/png"),
                                  prompt="add a hat", n=2, response_format="b64_json")
    varied = t.client.images.create_variation(model=model, image=("fox.png", mock_media.PNG_1X1, "image/png"))
    assert len(edited.data) == 2 and len(varied.data) == 1
    sent = world.mock.received(tag)
    assert [r.path for r in sent] == ["images/edits", "images/variations"]
    for r in sent:
        assert r.body["model"] == "dall-e-2"  # model_map applied inside the form
        assert next(iter(r.files.values())) == mock_media.PNG_1X1
    assert sent[0].body["prompt"] == "add a hat" and sent[0].body["n"] == "2"
    assert sorted(Decimal(str(r["credits"])) for r in _rows(world, t)) == [Decimal("1.5"), 3]
    assert world.balance(t.user_id) == Decimal("95.5") and world.held(t.user_id) == 0
    assert world.verify()["ok"]


def test_bad_image_calls_are_refused_and_cost_nothing(world: World) -> None:
    model, tag = _priced(world, {"image/1024x1024": 2})
    t = world.tenant()
    cases = [
        ({"prompt": "x", "n": 11}, "n"),
        ({"prompt": "x", "n": "two"}, "n"),
        ({"prompt": "x", "n": "\u00b2"}, "n"),  # "²".isdigit() is True, int("²") fails
        ({"prompt": "x", "n": "--5"}, "n"),
        ({"prompt": "x", "n": "\u0663"}, "n"),  # an Arabic-Indic 3
        ({"n": 1}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "x", "response_format": "gif"}, "response_format"),
        ({"prompt": "x", "size": "256x256"}, "size"),  # no price for that size
        ({"prompt": "x", "stream": True}, "stream"),
    ]
    for body, param in cases:
        resp = requests.post(world.url + "/v1/images/generations", json={"model": model, **body},
                             headers={"Authorization": f"Bearer {t.key}"}, timeout=30)
        assert resp.status_code == 400, (body, resp.text)
        assert resp.json()["error"]["param"] == param, (body, resp.text)
    with pytest.raises(openai.NotFoundError) as missing:
        t.client.images.generate(model=f"no-such-{secrets.token_hex(3)}", prompt="x")
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    not_a_form = {"Authorization": f"Bearer {t.key}", "Content-Type": "multipart/form-data; boundary=q"}
    resp = requests.post(world.url + "/v1/images/edits", data=b"not a form", headers=not_a_form, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["type"] == "invalid_request_error"
    resp = requests.post(world.url + "/v1/images/edits", files={"prompt": (None, "x"), "model": (None, model)},
                         headers={"Authorization": f"Bearer {t.key}"}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "image"
    png = ("a.png", mock_media.PNG_1X1, "image/png")
    for n in ("--5", "\u00b2", "1.5"):
        resp = requests.post(world.url + "/v1/images/edits", headers={"Authorization": f"Bearer {t.key}"},
                             files={"prompt": (None, "x"), "model": (None, model), "image": png, "n": (None, n)},
                             timeout=30)
        assert resp.status_code == 400, (n, resp.text)
        assert resp.json()["error"] == {"message": resp.json()["error"]["message"], "type": "invalid_request_error",
                                        "param": "n", "code": "invalid_type"}, n
    # `n` twice: one hold for 1 image while the upstream might make 10.
    resp = requests.post(world.url + "/v1/images/edits", headers={"Authorization": f"Bearer {t.key}"},
                         files=[("prompt", (None, "x")), ("model", (None, model)), ("image", png),
                                ("n", (None, "10")), ("n", (None, "1"))], timeout=30)
    assert resp.status_code == 400 and "more than once" in resp.json()["error"]["message"], resp.text
    # Array fields repeat by design: several images under `image[]` are one call.
    with pytest.raises(openai.BadRequestError) as unpriced:  # the form is read; its size has no price here
        t.client.images.edit(model=model, prompt="x", image=[png, png], size="256x256")
    assert unpriced.value.param == "size"
    assert world.mock.received(tag) == []
    _untouched(world, t)


def test_an_upstream_failure_on_images_costs_nothing(world: World) -> None:
    model, tag = _priced(world, {"image": 2})
    world.mock.script(tag, up.fail(500))
    t = world.tenant()
    with pytest.raises(openai.APIStatusError) as failed:
        t.client.images.generate(model=model, prompt="x", n=2)
    assert failed.value.status_code == 502
    rows = _rows(world, t)
    assert len(rows) == 1 and rows[0]["status"] == "upstream_error" and Decimal(str(rows[0]["credits"])) == 0
    assert world.balance(t.user_id) == 100 and world.held(t.user_id) == 0 and world.verify()["ok"]


def test_an_empty_balance_cannot_buy_an_image(world: World) -> None:
    model, tag = _priced(world, {"image": 2})
    t = world.tenant(credits=3)
    with pytest.raises(openai.APIStatusError) as refused:
        t.client.images.generate(model=model, prompt="x", n=2)  # 4 credits
    assert refused.value.status_code == 402
    assert world.mock.received(tag) == []
    _untouched(world, t, Decimal(3))


def test_unit_prices_are_shown_by_the_admin_api_and_the_public_price_list(world: World) -> None:
    model, _ = _priced(world, {"image": 2, "image/1024x1024/hd": 4.5})
    prices = {p["model"]: p for p in world.admin("GET", "/admin/v1/prices")["data"]}
    assert prices[model]["units"] == {"image": 2, "image/1024x1024/hd": 4.5}
    assert prices["dall-e-3"]["units"]["image/1024x1024/hd"] == 80  # the seeded list
    public = {p["model"]: p for p in requests.get(world.url + "/api/pricing", timeout=30).json()["data"]}
    assert public[model]["units"] == {"image": 2, "image/1024x1024/hd": 4.5}
    for bad in ({"pixel": 1}, {"image/a/b/c": 1}, {"image": -1}, {"image": "x"}, ["image"]):
        resp = world.http.put(world.url + f"/admin/v1/prices/{model}",
                              json={"prompt": 0, "completion": 0, "units": bad}, timeout=30)
        assert resp.status_code == 400 and resp.json()["error"]["param"].startswith("units"), (bad, resp.text)
    # A price change that does not name the units keeps them.
    world.admin("PUT", f"/admin/v1/prices/{model}", {"prompt": 1, "completion": 0})
    prices = {p["model"]: p for p in world.admin("GET", "/admin/v1/prices")["data"]}
    assert prices[model]["units"] == {"image": 2, "image/1024x1024/hd": 4.5}


# --- speech ---------------------------------------------------------------------------------------


def test_speech_streams_the_audio_through_and_is_charged_per_1k_characters(world: World) -> None:
    model, tag = _priced(world, {"1k_characters": 6})
    t = world.tenant()
    text = "Hello there, this is chatkore speaking. " * 5  # 200 characters
    with t.client.audio.speech.with_streaming_response.create(model=model, voice="alloy", input=text,
                                                               response_format="mp3") as reply:
        assert reply.headers["content-type"] == "audio/mpeg"
        audio = b"".join(reply.iter_bytes())
    assert audio == mock_media.SPEECH
    row = _charged(world, t, Decimal(len(text)) * 6 / 1000)
    assert row["prompt_tokens"] == len(text)
    assert world.mock.received(tag)[-1].body["input"] == text


def test_speech_left_by_its_client_is_paid_and_a_failed_one_is_free(world: World) -> None:
    model, tag = _priced(world, {"1k_characters": 10})
    t = world.tenant()
    text = "A long story that the client will not wait for. " * 4
    world.mock.script(tag, mock_media.speech(stall=True))
    with t.client.audio.speech.with_streaming_response.create(model=model, voice="alloy", input=text) as reply:
        first = next(reply.iter_bytes(1024))
        assert first and mock_media.SPEECH.startswith(first)
    # The client hung up after the first piece: the upstream call is dropped, and the whole input paid for.
    wait_until(lambda: world.mock.state(tag).disconnects == 1, 20, "the upstream call to be dropped")
    row = wait_until(lambda: _rows(world, t), 20, "the usage row of the abandoned speech")[0]
    assert row["status"] == "client_gone" and row["prompt_tokens"] == len(text)
    assert Decimal(str(row["credits"])) == Decimal(len(text)) * 10 / 1000
    wait_until(lambda: world.held(t.user_id) == 0, 10, "the hold to close")
    assert world.balance(t.user_id) == 100 - Decimal(str(row["credits"])) and world.verify()["ok"]

    t2 = world.tenant()
    world.mock.script(tag, up.fail(500))
    with pytest.raises(openai.APIStatusError) as failed:
        t2.client.audio.speech.create(model=model, voice="alloy", input=text)
    assert failed.value.status_code == 502
    rows = _rows(world, t2)
    assert len(rows) == 1 and rows[0]["status"] == "upstream_error" and Decimal(str(rows[0]["credits"])) == 0
    assert world.balance(t2.user_id) == 100 and world.held(t2.user_id) == 0 and world.verify()["ok"]


def test_speech_without_a_character_price_is_refused_and_costs_nothing(world: World) -> None:
    # A token-priced model would pay for its input only, never for the audio it makes (DESIGN §6).
    model, tag = _priced(world, {}, prompt=1000)  # a credit a token
    t = world.tenant()
    with pytest.raises(openai.BadRequestError) as refused:
        t.client.audio.speech.create(model=model, voice="alloy", input="Tokens do not price this speech.")
    assert refused.value.status_code == 400 and refused.value.param == "model"
    assert world.mock.received(tag) == []
    _untouched(world, t)


def test_bad_speech_calls_are_refused_and_cost_nothing(world: World) -> None:
    model, tag = _priced(world, {"1k_characters": 6})
    t = world.tenant()
    for body, param in [({"voice": "alloy"}, "input"), ({"input": "x"}, "voice"),
                        ({"input": "x" * 4097, "voice": "alloy"}, "input"),
                        ({"input": "x", "voice": "alloy", "response_format": "ogg"}, "response_format"),
                        ({"input": "x", "voice": "alloy", "speed": 9}, "speed")]:
        resp = requests.post(world.url + "/v1/audio/speech", json={"model": model, **body},
                             headers={"Authorization": f"Bearer {t.key}"}, timeout=30)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, (body, resp.text)
    assert world.mock.received(tag) == []
    _untouched(world, t)


# --- transcriptions and translations --------------------------------------------------------------


def test_transcription_is_charged_per_minute_of_the_audio_the_upstream_reports(world: World) -> None:
    model, tag = _priced(world, {"minute": 6})  # 0.1 credit a second
    world.mock.script(tag, mock_media.transcription(duration=3.2))
    t = world.tenant()
    result = t.client.audio.transcriptions.create(model=model, file=("hello.wav", _wav(3.2), "audio/wav"))
    assert result.text == "Hello from the mock."
    assert result.model_dump(exclude_none=True) == {"text": "Hello from the mock."}  # json, as asked
    row = _charged(world, t, Decimal("0.4"))  # 3.2 s, billed as 4 whole seconds
    assert row["prompt_tokens"] == 4
    sent = world.mock.received(tag)[-1]
    assert sent.path == "audio/transcriptions" and sent.body["model"] == model
    assert sent.body["response_format"] == "verbose_json"  # asked so that the upstream names the duration
    assert sent.files["file"] == _wav(3.2)


def _lying_mp3() -> bytes:
    """Five 320 kbps MP3 frames, then 3,000 at 32 kbps: mutagen reads 7.9 s, the file plays 78.5 s."""
    def frame(bitrate_index: int, size: int) -> bytes:
        return bytes([0xFF, 0xFB, bitrate_index << 4, 0xC4]) + bytes(size - 4)
    return frame(14, 1044) * 5 + frame(1, 104) * 3000


@pytest.mark.parametrize("fmt", ["text", "srt", "vtt"])
def test_a_lying_header_is_not_what_a_text_transcript_is_charged(world: World, fmt: str) -> None:
    model, tag = _priced(world, {"minute": 6})
    mp3 = _lying_mp3()
    segments = [{"id": 0, "start": 0.0, "end": 61.25, "text": " Hello from"},
                {"id": 1, "start": 61.25, "end": 78.5, "text": " the mock."}]
    world.mock.script(tag, mock_media.transcription(duration=78.5, segments=segments))
    t = world.tenant()
    result = t.client.audio.transcriptions.create(model=model, file=("long.mp3", mp3, "audio/mpeg"),
                                                  response_format=fmt)
    expected = {"text": "Hello from the mock.\n",
                "srt": "1\n00:00:00,000 --> 00:01:01,250\nHello from\n\n2\n00:01:01,250 --> 00:01:18,500\nthe mock.\n",
                "vtt": "WEBVTT\n\n00:00:00.000 --> 00:01:01.250\nHello from\n\n"
                       "00:01:01.250 --> 00:01:18.500\nthe mock.\n"}
    assert result == expected[fmt]
    assert world.mock.received(tag)[-1].body["response_format"] == "verbose_json"
    row = _charged(world, t, Decimal("7.9"))  # the 79 s the upstream heard, not the header's 8
    assert row["prompt_tokens"] == 79


def test_a_lying_header_is_held_at_what_its_size_could_play(world: World) -> None:
    model, tag = _priced(world, {"minute": 6})
    mp3 = _lying_mp3()  # 317,220 bytes: 529 s at 600 bytes a second, whatever the header says
    release = asyncio.Event()
    world.mock.script(tag, mock_media.transcription(release=release))  # and no duration in the reply
    t = world.tenant()
    done: list[Any] = []
    caller = threading.Thread(target=lambda: done.append(t.client.audio.transcriptions.create(
        model=model, file=("long.mp3", mp3, "audio/mpeg"), response_format="json")))
    caller.start()
    try:
        wait_until(lambda: world.held(t.user_id) == Decimal("52.9"), 20, "the hold for 529 seconds of audio")
    finally:
        world.mock._loop.call_soon_threadsafe(release.set)
        caller.join(30)
    assert [d.text for d in done] == ["Hello from the mock."]
    row = _charged(world, t, Decimal("52.9"))  # the upstream named no duration: the held worst case
    assert row["prompt_tokens"] == 529


def test_the_duration_the_upstream_reports_is_what_is_charged(world: World) -> None:
    model, tag = _priced(world, {"minute": 6})
    t = world.tenant()
    world.mock.script(tag, mock_media.transcription(duration=7.5))
    verbose = t.client.audio.transcriptions.create(model=model, file=("a.wav", _wav(3), "audio/wav"),
                                                   response_format="verbose_json")
    assert verbose.duration == 7.5
    world.mock.script(tag, mock_media.transcription(usage_seconds=11))
    t.client.audio.translations.create(model=model, file=("a.wav", _wav(3), "audio/wav"))
    rows = sorted(_rows(world, t), key=lambda r: r["prompt_tokens"])
    assert [(r["prompt_tokens"], Decimal(str(r["credits"]))) for r in rows] == [(8, Decimal("0.8")),
                                                                               (11, Decimal("1.1"))]
    assert world.mock.received(tag)[-1].path == "audio/translations"
    assert world.balance(t.user_id) == Decimal("98.1") and world.held(t.user_id) == 0 and world.verify()["ok"]


def test_audio_of_unknown_length_is_held_at_the_worst_case_its_size_allows(world: World) -> None:
    model, tag = _priced(world, {"minute": 6})
    release = asyncio.Event()
    world.mock.script(tag, mock_media.transcription(release=release))
    t = world.tenant()
    blob = secrets.token_bytes(30_000)  # no header mutagen knows: 50 s at the 4.8 kbps floor
    done: list[Any] = []
    caller = threading.Thread(target=lambda: done.append(t.client.audio.transcriptions.create(
        model=model, file=("voice.webm", blob, "audio/webm"), response_format="text")))
    caller.start()
    try:
        wait_until(lambda: world.held(t.user_id) == 5, 20, "the hold for 50 seconds of audio")
    finally:
        world.mock._loop.call_soon_threadsafe(release.set)
        caller.join(30)
    assert done == ["Hello from the mock.\n"]  # text passes through as text
    row = _charged(world, t, Decimal(5))  # the upstream named no duration: the held worst case
    assert row["prompt_tokens"] == 50


def test_bad_transcription_calls_are_refused_and_cost_nothing(world: World) -> None:
    model, tag = _priced(world, {"minute": 6})
    unpriced, unpriced_tag = _priced(world, {"image": 1})
    t = world.tenant()
    auth = {"Authorization": f"Bearer {t.key}"}
    url = world.url + "/v1/audio/transcriptions"
    wav = ("a.wav", _wav(1), "audio/wav")
    for files, param in [({"model": (None, model)}, "file"), ({"file": wav}, "model"),
                         ({"model": (None, model), "file": wav, "response_format": (None, "mp3")}, "response_format"),
                         ({"model": (None, model), "file": wav, "temperature": (None, "hot")}, "temperature"),
                         ({"model": (None, unpriced), "file": wav}, "model")]:
        resp = requests.post(url, files=files, headers=auth, timeout=30)
        assert resp.status_code == 400 and resp.json()["error"]["param"] == param, (files.keys(), resp.text)
    # Two audio files (one would be held, the other transcribed) are refused.
    resp = requests.post(url, files=[("model", (None, model)), ("file", wav),
                                     ("file", ("b.wav", _wav(30), "audio/wav"))], headers=auth, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "file", resp.text
    # So is a plain field sent twice (read one way here, another upstream).
    for files in [[("model", (None, model)), ("file", wav), ("response_format", (None, "json")),
                   ("response_format", (None, "text"))],
                  [("model", (None, "nothing")), ("model", (None, model)), ("file", wav)]]:
        resp = requests.post(url, files=files, headers=auth, timeout=30)
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error" and "more than once" in error["message"], error
    resp = requests.post(url, json={"model": model}, headers=auth, timeout=30)
    assert resp.status_code == 415
    assert world.mock.received(tag) == [] and world.mock.received(unpriced_tag) == []
    _untouched(world, t)


# --- moderations ----------------------------------------------------------------------------------


def test_moderations_are_free_but_need_a_key_and_count_toward_the_rate_limit(world: World) -> None:
    model, tag = _priced(world, {})  # zero prices, as OpenAI's moderations
    t = world.tenant(rpm=2)
    result = t.client.moderations.create(model=model, input=["I will kill the process", "hello"])
    assert [r.flagged for r in result.results] == [True, False]
    assert result.model == model
    row = _charged(world, t, Decimal(0))
    texts = ["I will kill the process", "hello"]
    assert row["prompt_tokens"] == sum(openai_tokens.text_tokens(text, model) for text in texts)
    t.client.moderations.create(model=model, input="again")
    with pytest.raises(openai.RateLimitError):
        t.client.moderations.create(model=model, input="a third in the same minute")
    with pytest.raises(openai.AuthenticationError):
        world.client("sk-not-a-key").moderations.create(model=model, input="hello")
    assert len(world.mock.received(tag)) == 2
    assert world.balance(t.user_id) == 100 and world.verify()["ok"]


def test_a_priced_moderation_model_is_charged_by_its_input_tokens(world: World) -> None:
    model, _ = _priced(world, {}, prompt=1000)
    t = world.tenant()
    t.client.moderations.create(model=model, input="count these words please")
    counted = openai_tokens.text_tokens("count these words please", model)
    _charged(world, t, Decimal(counted))
    resp = requests.post(world.url + "/v1/moderations", json={"model": model},
                         headers={"Authorization": f"Bearer {t.key}"}, timeout=30)
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "input"
    assert len(_rows(world, t)) == 1 and math.isclose(float(world.balance(t.user_id)), 100 - counted)


def test_concurrent_images_on_a_balance_for_five_never_overdraw(world: World) -> None:
    model, tag = _priced(world, {"image": 2})
    # Every call that got a hold waits upstream at a gate until all the others are held or refused.
    gate = world.mock.gate()
    world.mock.always(tag, mock_media.images(gate=gate))
    t = world.tenant(credits=10)
    outcomes: list[Any] = []

    def one() -> None:
        try:
            outcomes.append(len(t.client.images.generate(model=model, prompt="a cat").data))
        except openai.APIStatusError as exc:
            outcomes.append(exc.status_code)

    callers = [threading.Thread(target=one) for _ in range(15)]
    try:
        for c in callers:
            c.start()
        wait_until(lambda: len(outcomes) + gate.arrived == 15, 30, "every call to be held upstream or refused")
        assert outcomes == [402] * (15 - gate.arrived) and gate.passed == 0
        upstream = gate.arrived
    finally:
        gate.open()
    for c in callers:
        c.join(60)
    assert len(outcomes) == 15
    paid = outcomes.count(1)
    assert 1 <= paid <= 5 and outcomes.count(402) == 15 - paid, outcomes
    # All in flight at once, each held 2 credits of the 10: exactly five.
    assert paid == upstream == 5
    rows = _rows(world, t)
    assert len(rows) == paid and all(r["status"] == "complete" and Decimal(str(r["credits"])) == 2 for r in rows)
    assert world.balance(t.user_id) == 10 - 2 * paid and world.held(t.user_id) == 0
    assert len(world.mock.received(tag)) == paid  # a refused call never reached the upstream
    assert world.verify()["ok"]


def test_a_multimodal_moderation_is_charged_for_its_text(world: World) -> None:
    model, tag = _priced(world, {}, prompt=1000)
    t = world.tenant()
    parts = [{"type": "text", "text": "is this fine"}, {"type": "image_url", "image_url": {"url": "https://x.example/a.png"}}]
    result = t.client.moderations.create(model=model, input=parts)  # type: ignore[arg-type]
    assert len(result.results) == 2
    assert world.mock.received(tag)[-1].body["input"] == parts
    counted = openai_tokens.text_tokens("is this fine", model)
    row = _charged(world, t, Decimal(counted))
    assert row["prompt_tokens"] == counted
