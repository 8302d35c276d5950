"""One mailbox, one spelling: the key the sign-up bonus is granted once per."""
from __future__ import annotations

import pytest

from services.auth.notice import plain
from services.auth.verification import bonus_reference, normalise_email


@pytest.mark.parametrize(("email", "mailbox"), [
    ("Ann@Example.com", "ann@example.com"),
    ("ann+farm@example.com", "ann@example.com"),
    ("ann+a+b@example.com", "ann@example.com"),
    ("a.n.n@example.com", "a.n.n@example.com"),  # dots matter outside Gmail
    ("A.n.N+x@Gmail.com", "ann@gmail.com"),
    ("ann@googlemail.com", "ann@gmail.com"),
    ("  ann@example.com ", "ann@example.com"),
    ("we@ird@example.com", "we@ird@example.com"),
])
def test_normalised(email: str, mailbox: str) -> None:
    assert normalise_email(email) == mailbox


def test_one_reference_per_mailbox_and_no_address_in_it() -> None:
    assert bonus_reference("A.nn+x@gmail.com") == bonus_reference("ann@googlemail.com")
    assert bonus_reference("ann@example.com") != bonus_reference("anne@example.com")
    assert "ann" not in bonus_reference("ann@example.com") and len(bonus_reference("x@y.z")) <= 200


def test_notice_text_is_plain() -> None:
    assert plain(" a\x00b\u202e\n c \r\n", 100, "x", lines=True) == "ab\n c"
    assert plain("a\nb", 100, "x", lines=False) == "ab"
