"""Prices per unit (images, characters, minutes), the multipart forms that carry uploads, audio lengths."""
from __future__ import annotations

import json

import pytest

from services.billing.pricing import Price, Usage, cost, per_unit, plan_hold, rates_of, unit_price, valid_unit
from services.common import multipart
from services.inference.audio import audio_seconds
from services.inference.media import transcript_as
from tests.mock_media import wav

ROW = Price("dall-e-3", 0, 0, 0, 0, 0, units={"image": 40_000_000, "image/1024x1792": 80_000_000,
                                               "image/1024x1024/hd": 80_000_000, "1k_characters": 15_000_000,
                                               "minute": 6_000_000})


@pytest.mark.parametrize(("unit", "entry"), [
    ("image/1024x1024/hd", "image/1024x1024/hd"),
    ("image/1024x1024/standard", "image"),
    ("image/1024x1792/hd", "image/1024x1792"),
    ("image", "image"),
    ("1k_characters", "1k_characters"),
])
def test_a_unit_is_priced_by_its_most_specific_entry(unit: str, entry: str) -> None:
    assert unit_price(ROW, unit) == (entry, ROW.units[entry])


@pytest.mark.parametrize(("unit", "count", "micro"), [
    ("image/1024x1024/hd", 2, 160_000_000),     # two images at 80 credits
    ("image/512x512/standard", 1, 40_000_000),
    ("1k_characters", 200, 3_000_000),          # 200 characters at 15 per 1,000
    ("1k_characters", 1, 15_000),
    ("minute", 90, 9_000_000),                  # a minute and a half at 6
    ("minute", 1, 100_000),
])
def test_a_call_counted_in_a_unit_costs_count_times_its_price(unit: str, count: int, micro: int) -> None:
    found = unit_price(ROW, unit)
    assert found is not None
    price = per_unit(ROW, *found)
    assert cost(rates_of(price), Usage(count, 0)) == micro
    plan = plan_hold(price, count, 0, 1)
    assert plan.desired == plan.minimum == micro and plan.per_choice_limit == 0  # held exactly, no completion


def test_a_minute_price_that_does_not_divide_by_sixty_rounds_up_once() -> None:
    row = Price("whisper", 0, 0, 0, 0, 0, units={"minute": 1})
    assert cost(rates_of(per_unit(row, "minute", 1)), Usage(60, 0)) == 2  # ceil(1000/60)=17 x 60 / 1000 -> 2
    assert unit_price(row, "image") is None


@pytest.mark.parametrize(("unit", "ok"), [
    ("image", True), ("image/256x256", True), ("image/256x256/hd", True), ("image/a/b/c", False),
    ("image//hd", False), ("1k_characters", True), ("1k_characters/x", False), ("minute", True),
    ("second", False), ("", False), ("image/" + "x" * 70, False),
])
def test_unit_names(unit: str, ok: bool) -> None:
    assert valid_unit(unit) is ok


def test_a_form_round_trips_with_binary_files_and_a_replaced_field() -> None:
    data = b"\x00\r\n--boundary-like\r\n\xff" * 100
    form = multipart.Form([multipart.Part("model", b"public"), multipart.Part("n", b"2"),
                           multipart.Part("image[]", data, 'we"ird.png', "image/png")])
    body, content_type = form.with_value("model", "upstream").encode()
    again = multipart.parse(body, content_type)
    assert again.fields() == {"model": "upstream", "n": "2"}
    [image] = again.files("image")
    assert image.data == data and image.filename == "we%22ird.png" and image.content_type == "image/png"


@pytest.mark.parametrize(("body", "content_type"), [
    (b"garbage", "multipart/form-data; boundary=zz"),
    (b"--zz--\r\n", "multipart/form-data; boundary=zz"),
    (b"{}", "application/json"),
    (b"--zz\r\n\r\nno name\r\n--zz--\r\n", "multipart/form-data; boundary=zz"),
])
def test_what_is_not_a_form_is_refused(body: bytes, content_type: str) -> None:
    with pytest.raises(multipart.FormError):
        multipart.parse(body, content_type)


def test_a_plain_field_sent_twice_is_refused_but_array_fields_repeat() -> None:
    twice = multipart.Form([multipart.Part("n", b"10"), multipart.Part("prompt", b"x"), multipart.Part("n", b"1")])
    body, content_type = twice.encode()
    with pytest.raises(multipart.FormError, match="'n' is sent more than once"):
        multipart.parse(body, content_type)
    arrays = multipart.Form([multipart.Part("timestamp_granularities[]", b"word"),
                             multipart.Part("timestamp_granularities[]", b"segment"),
                             multipart.Part("image[]", b"a", "a.png"), multipart.Part("image[]", b"b", "b.png")])
    body, content_type = arrays.encode()
    assert len(multipart.parse(body, content_type).parts) == 4


@pytest.mark.parametrize(("fmt", "expected", "content_type"), [
    ("json", b'{"text":"Hi there."}', "application/json"),
    ("text", b"Hi there.\n", "text/plain; charset=utf-8"),
    ("srt", b"1\n00:00:00,000 --> 00:00:01,500\nHi\n\n2\n00:00:01,500 --> 01:00:02,042\nthere.\n",
     "text/plain; charset=utf-8"),
    ("vtt", b"WEBVTT\n\n00:00:00.000 --> 00:00:01.500\nHi\n\n00:00:01.500 --> 01:00:02.042\nthere.\n",
     "text/plain; charset=utf-8"),
])
def test_a_verbose_transcript_converts_to_the_format_asked(fmt: str, expected: bytes, content_type: str) -> None:
    verbose = json.dumps({"text": "Hi there.", "duration": 3602.0417, "segments": [
        {"start": 0, "end": 1.5, "text": " Hi"}, {"start": 1.5, "end": 3602.0417, "text": " there."}]}).encode()
    body, kind = transcript_as(fmt, verbose)
    assert kind == content_type
    assert body.replace(b" ", b"") == expected.replace(b" ", b"") if fmt == "json" else body == expected


def test_audio_length_comes_from_the_header_or_is_unknown() -> None:
    assert audio_seconds(wav(2.5, rate=8000)) == pytest.approx(2.5)
    assert audio_seconds(b"\x1aE\xdf\xa3 not really webm") is None
    assert audio_seconds(b"") is None
