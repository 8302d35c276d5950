"""How long audio is held for (services/inference/audio.py): a header is the client's to write,
so only what cannot lie is taken at its word."""
from __future__ import annotations

import base64
import struct

from services.inference.audio import AUDIO_FLOOR_BYTES_PER_S, held_seconds, input_audio_tokens
from tests.mock_media import wav


def test_pcm_wav_is_held_for_exactly_its_samples() -> None:
    assert held_seconds(wav(30)) == 30
    assert held_seconds(wav(2.5, rate=8_000, channels=2)) == 2.5
    part = {"type": "input_audio", "input_audio": {"data": base64.b64encode(wav(30)).decode(), "format": "wav"}}
    assert input_audio_tokens(part) == 300  # 10 tokens a second


def test_a_wav_declaring_fewer_samples_than_it_carries_is_held_for_all_of_them() -> None:
    data = bytearray(wav(30))
    struct.pack_into("<I", data, 40, 3_200)  # the data chunk claims 0.1 s of the 30 s it holds
    assert held_seconds(bytes(data)) == 30


def test_a_wav_claiming_an_implausible_rate_is_held_by_its_size() -> None:
    data = bytearray(wav(1))
    struct.pack_into("<II", data, 24, 4_000_000, 8_000_000)  # 4 MHz: 32,000 samples would last 8 ms
    assert held_seconds(bytes(data)) == len(data) / AUDIO_FLOOR_BYTES_PER_S


def test_an_mp3_whose_header_claims_one_frame_is_held_by_its_size() -> None:
    # An MPEG-1 layer III frame header (128 kbps, 44.1 kHz) and a Xing header saying: one frame.
    frame = bytearray(417)
    frame[0:4] = b"\xff\xfb\x90\x00"
    frame[36:44] = b"Xing" + struct.pack(">I", 1)
    frame[44:48] = struct.pack(">I", 1)
    data = bytes(frame) * 2000  # 834 KB: a minute of audio at 128 kbps
    assert held_seconds(data) == len(data) / AUDIO_FLOOR_BYTES_PER_S


def test_bytes_no_decoder_knows_are_held_by_their_size() -> None:
    assert held_seconds(b"\x01\x02" * 3_000) == 6_000 / AUDIO_FLOOR_BYTES_PER_S
    assert input_audio_tokens({"type": "input_audio", "input_audio": {"data": "not base64!", "format": "wav"}}) == 3
    assert input_audio_tokens({"type": "input_audio", "input_audio": {}}) == 0
