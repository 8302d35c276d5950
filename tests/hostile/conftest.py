"""A stack with tight limits for the hostile-input and fault tests, and the log check's place last."""
from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.world import World

# Small limits, so each can be crossed cheaply; a short stream limit for endless upstreams.
TIGHT_ENV = {
    "CHATKORE_MAX_JSON_DEPTH": "16",
    "CHATKORE_MAX_STRING_CHARS": "5000",
    "CHATKORE_MAX_MESSAGES": "50",
    "CHATKORE_MAX_HEADER_BYTES": "4096",
    "CHATKORE_HEADER_TIMEOUT_S": "1",
    "CHATKORE_BODY_TIMEOUT_S": "1.5",
    "CHATKORE_AUTH_FAILURES_PER_MIN": "5",
    "CHATKORE_SIGNUPS_PER_HOUR": "3",
    "CHATKORE_MAX_STREAM_S": "2",
    "CHATKORE_TRUSTED_PROXIES": "127.0.0.100/32, 127.0.0.101",  # stand-ins for an ingress
}


@pytest.fixture(scope="session")
def tight(make_stack, mock) -> Iterator[World]:
    """A stack of its own with TIGHT_ENV. At the end no hold is open and the books balance."""
    w = World(make_stack(name="tight", env=TIGHT_ENV), mock)
    yield w
    report = w.verify()
    assert report["ok"] and report["open_holds"] == 0, report


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The log check reads what the whole run wrote: it goes last.
    last = [i for i in items if i.name == "test_no_issued_secret_in_any_log"]
    items[:] = [i for i in items if i not in last] + last
