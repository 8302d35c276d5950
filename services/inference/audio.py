"""Audio a prompt carries: its length from the file's header (mutagen), and what chat's
`input_audio` parts count as tokens before the upstream reports its own usage.

OpenAI bills audio input by its length, about 10 tokens a second (gpt-4o audio, gpt-audio).
The hold is sized from that; the charge is the upstream's own count (`audio_tokens` in
`prompt_tokens_details`). The base64 text itself is never counted as text tokens: a 30 s
recording would otherwise count half a million tokens and be refused as too long.
"""
from __future__ import annotations

import base64
import binascii
import io
import math
import wave
from typing import Any

import mutagen

TOKENS_PER_SECOND = 10
# Audio could play at least as long as its size at this few bytes a second (4.8 kbps, below
# Opus's ~6 kbps speech floor): the length of a file whose header states none.
AUDIO_FLOOR_BYTES_PER_S = 600
WAV_HEADER_BYTES = 44
MIN_PCM_RATE, MAX_PCM_RATE = 8_000, 192_000  # sample rates a WAV header may claim to be taken at its word


def audio_seconds(data: bytes) -> float | None:
    """The duration an audio file's header states (mutagen reads MP3, MP4/M4A, Ogg, FLAC, WAV, ...)."""
    try:
        found = mutagen.File(io.BytesIO(data))
    except Exception:  # mutagen's many format errors: the length stays unknown
        return None
    length = getattr(getattr(found, "info", None), "length", None)
    if isinstance(length, (int, float)) and math.isfinite(length) and length > 0:
        return float(length)
    return None


def input_audio_tokens(part: dict[str, Any]) -> int:
    """Tokens of a chat `input_audio` content part: {"type": "input_audio", "input_audio":
    {"data": base64, "format": "wav"|"mp3"}}. Malformed data counts as its text would (the
    upstream refuses it, and nothing is charged for a refused call)."""
    audio = part.get("input_audio")
    data = audio.get("data") if isinstance(audio, dict) else None
    if not isinstance(data, str) or not data:
        return 0
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        return math.ceil(len(data) / 4)  # about what tiktoken makes of base64 text
    return max(1, math.ceil(held_seconds(raw) * TOKENS_PER_SECOND))


def held_seconds(data: bytes) -> float:
    """How long audio is held for. PCM WAV plays exactly as long as its samples: their count at
    the header's rate (a plausible one). Anything else could play at least as long as its size at
    AUDIO_FLOOR_BYTES_PER_S, whatever its header states: a header is the client's to write (an
    MP3 whose Xing header claims one frame is decoded, and billed, whole)."""
    pcm = _pcm_seconds(data)
    if pcm is not None:
        return pcm
    return max(audio_seconds(data) or 0.0, len(data) / AUDIO_FLOOR_BYTES_PER_S)


def _pcm_seconds(data: bytes) -> float | None:
    try:
        with wave.open(io.BytesIO(data)) as w:  # PCM only: anything else is refused here
            rate, frame_bytes, frames = w.getframerate(), w.getsampwidth() * w.getnchannels(), w.getnframes()
    except (wave.Error, EOFError, ValueError, OSError):
        return None
    if not MIN_PCM_RATE <= rate <= MAX_PCM_RATE or frame_bytes <= 0:
        return None
    # The samples the header declares, or every byte past a canonical 44-byte header if there
    # are more (a data chunk declared short): whichever is longer.
    return max(frames, (len(data) - WAV_HEADER_BYTES) // frame_bytes) / rate
