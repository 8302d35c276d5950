"""What every client meets first: paths, headers, health, the chatgpt-web endpoints."""
from __future__ import annotations

import datetime as dt
from decimal import Decimal

import requests

from tests import openai_tokens
from tests.world import World

MSG = [{"role": "user", "content": "hi"}]


def _gpt4_charge() -> Decimal:
    """A gpt-4 call of MSG as the mock answers it (9 tokens: max_tokens=10 does not cut it), at the
    seeded prices of 30 and 60 credits per 1,000 prompt and completion tokens."""
    prompt = openai_tokens.chat_prompt_tokens(MSG, "gpt-4")
    completion = openai_tokens.text_tokens("This is a test! You said: hi", "gpt-4")
    assert completion < 10
    return (prompt * 30 + completion * 60) / Decimal(1000)


def test_repeated_slashes_and_double_v1(world: World) -> None:
    t = world.tenant()
    headers = {"Authorization": f"Bearer {t.key}"}
    resp = requests.post(world.url + "//v1/chat/completions", json={"model": "gpt-3.5-turbo", "messages": MSG},
                         headers=headers, timeout=30)
    assert resp.status_code == 200 and resp.json()["object"] == "chat.completion"
    for path in ("/v1/v1/dashboard/billing/subscription", "/v1/dashboard/billing/subscription"):
        resp = requests.get(world.url + path, headers=headers, timeout=30)
        assert resp.status_code == 200 and resp.json()["object"] == "billing_subscription"


def test_every_response_has_a_request_id(world: World) -> None:
    seen = set()
    for method, path in (("GET", "/healthz"), ("GET", "/v1/models"), ("POST", "/v1/chat/completions"),
                         ("GET", "/nope")):
        resp = requests.request(method, world.url + path, timeout=30)
        seen.add(resp.headers["x-request-id"])
    assert len(seen) == 4


def test_healthz(world: World) -> None:
    resp = requests.get(world.url + "/healthz", timeout=10)
    assert resp.status_code == 200
    assert resp.json()["services"] == {"auth": "serving", "billing": "serving", "inference": "serving"}


def test_chatgpt_web_balance(world: World) -> None:
    t = world.tenant(credits=100)
    t.client.chat.completions.create(model="gpt-4", messages=MSG, max_tokens=10)
    balance = float(world.balance(t.user_id))
    headers = {"Authorization": f"Bearer {t.key}"}
    sub = requests.get(world.url + "/v1/dashboard/billing/subscription", headers=headers, timeout=10).json()
    today = dt.datetime.now(dt.UTC).date()
    start = today.replace(day=1).isoformat()
    end = (today + dt.timedelta(days=1)).isoformat()
    usage = requests.get(world.url + f"/v1/v1/dashboard/billing/usage?start_date={start}&end_date={end}",
                         headers=headers, timeout=10).json()
    # chatgpt-web shows hard_limit_usd - total_usage / 100: that must be the balance. Exactly:
    # the limit is the 100 credits the user started with, the usage the call's charge in hundredths.
    [row] = world.usage(t.user_id)
    charged = Decimal(str(row["credits"]))
    assert charged == _gpt4_charge() and Decimal(str(balance)) == 100 - charged
    assert sub["hard_limit_usd"] == 100
    assert Decimal(str(usage["total_usage"])) == charged * 100


def test_chatgpt_web_usage_includes_its_end_date(world: World) -> None:
    """chatgpt-web asks for start_date=YYYY-MM-01&end_date=<last day of the month>: on that last
    day, today's spending must count; daily_costs has one entry per day, as OpenAI's had."""
    t = world.tenant(credits=100)
    t.client.chat.completions.create(model="gpt-4", messages=MSG, max_tokens=10)
    spent = 100 - world.balance(t.user_id)
    today = dt.datetime.now(dt.UTC).date()
    start = today.replace(day=1)
    headers = {"Authorization": f"Bearer {t.key}"}
    usage = requests.get(world.url + f"/v1/dashboard/billing/usage?start_date={start}&end_date={today}",
                         headers=headers, timeout=10).json()
    assert spent == _gpt4_charge()
    assert usage["total_usage"] == float(spent * 100)
    days = usage["daily_costs"]
    assert len(days) == (today - start).days + 1
    assert [dt.datetime.fromtimestamp(d["timestamp"], dt.UTC).date() for d in days] == [
        start + dt.timedelta(days=i) for i in range(len(days))]
    assert sum(item["cost"] for d in days for item in d["line_items"]) == usage["total_usage"]
    assert days[-1]["line_items"][0]["cost"] == usage["total_usage"]
    backwards = requests.get(world.url + "/v1/dashboard/billing/usage?start_date=2026-01-02&end_date=2026-01-01",
                             headers=headers, timeout=10)
    assert backwards.status_code == 400 and backwards.json()["error"]["param"] == "end_date"
