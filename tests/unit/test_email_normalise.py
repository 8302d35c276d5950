"""One mailbox, one spelling: the key the sign-up bonus is granted once per."""
from __future__ import annotations

import pytest

from services.auth.accounts import _check_email, spelled_as_stored
from services.auth.errors import InvalidRequest
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
    ("a.b@gmail.com.", "ab@gmail.com"),  # a trailing dot is the same domain
    ("A.B@GMAIL.COM.", "ab@gmail.com"),
    ("\uff41\uff4e\uff4e@example.com", "ann@example.com"),  # fullwidth letters: NFKC
    ("ann@B\u00dcCHER.de", "ann@xn--bcher-kva.de"),  # IDNA, whatever the case
    ("ann@xn--bcher-kva.de", "ann@xn--bcher-kva.de"),
    ("STRASSE@example.com", "strasse@example.com"),
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


@pytest.mark.parametrize(("email", "code"), [
    ('"a.b"@gmail.com', "email_quoted_local_part"),
    ('"ann"@example.com', "email_quoted_local_part"),
    ("a.b@gmail.com.", "email_domain_trailing_dot"),
    ("ann@example.com.", "email_domain_trailing_dot"),
    ("\u00e4nn@example.com", "email_non_ascii_local_part"),
    ("ann\u0430@example.com", "email_non_ascii_local_part"),  # a Cyrillic a
    ("not-an-email", "invalid_email"),
    ("ann@" + "x" * 64 + ".com", "invalid_email"),  # a label IDNA cannot hold
])
def test_sign_up_refuses_addresses_with_more_than_one_spelling(email: str, code: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        _check_email(email)
    assert refused.value.code == code and refused.value.param == "email"


@pytest.mark.parametrize(("email", "stored"), [
    ("ann@example.com", "ann@example.com"),
    ("  Ann@Example.com ", "Ann@Example.com"),  # an ASCII domain as typed (sign-in ignores case)
    ("ann@b\u00fccher.de", "ann@xn--bcher-kva.de"),
    ("\uff41nn@\uff45xample.com", "ann@example.com"),
])
def test_sign_up_stores_one_spelling(email: str, stored: str) -> None:
    assert _check_email(email) == stored


@pytest.mark.parametrize("typed", [
    "ann@b\u00fccher.de", "ann@B\u00dcCHER.DE", " ann@b\u00fccher.de ", "Ann@xn--BCHER-kva.de", "ann@b\u00fccher.de.",
    "\uff41nn@b\u00fccher.de",
])
def test_every_lookup_spelling_finds_the_stored_one(typed: str) -> None:
    """Sign-in and password reset look an account up by spelled_as_stored(typed), compared
    case-insensitively with what sign-up stored (store.find_account)."""
    assert spelled_as_stored(typed).lower() == _check_email("ann@b\u00fccher.de").lower() == "ann@xn--bcher-kva.de"
