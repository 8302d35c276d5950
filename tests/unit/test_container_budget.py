"""The JSON container budget, against a byte-by-byte reference, over random texts cut at random places."""
from __future__ import annotations

import random

import pytest

from services.common.jsoncodec import ContainerBudget, TooManyContainers, check_containers


def _reference(text: bytes) -> tuple[int, bool]:
    """Brackets outside strings, and whether the text kept to JSON's escapes (a backslash outside a
    string stops any parser there, so only the brackets before it could ever be built)."""
    count, in_string, escaped = 0, False, False
    for byte in text:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:
                escaped = True
            elif byte == 0x22:
                in_string = False
        elif byte == 0x5C:
            return count, False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x7B, 0x5B):
            count += 1
    return count, True


def _accepts(parts: list[bytes], budget: int) -> bool:
    counter = ContainerBudget(budget)
    try:
        for part in parts:
            counter.feed(part)
    except TooManyContainers:
        return False
    return True


def test_matches_the_reference_however_the_text_is_cut() -> None:
    rng = random.Random(13)
    alphabet = b'{}[]"\\ab\n,:'
    for _ in range(5000):
        text = bytes(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        count, clean = _reference(text)
        cuts = sorted(rng.sample(range(len(text) + 1), min(len(text) + 1, rng.randint(0, 5))))
        parts = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
        for budget in {0, max(count - 1, 0), count, 100}:
            accepted = _accepts(parts, budget)
            if count > budget:
                assert not accepted, (text, parts, budget)
            elif clean:
                assert accepted, (text, parts, budget)


@pytest.mark.parametrize("text, containers", [
    (b'{"a": [1, {"b": "[{[{"}]}', 3),
    (b'{"a": "\\"[{", "b": "\\\\", "c": []}', 2),
    (b'["\\\\\\"{"]', 1),
    (b"[" + b"{}," * 1000 + b"{}]", 1002),
])
def test_counts_only_containers_outside_strings(text: bytes, containers: int) -> None:
    check_containers(text, containers)
    with pytest.raises(TooManyContainers):
        check_containers(text, containers - 1)
