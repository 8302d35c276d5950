"""The two catalogues say the same things, every text a page asks for exists, and a request gets
the language its switch or its browser prefers."""
from __future__ import annotations

import re
from pathlib import Path

import pytest
from aiohttp.test_utils import make_mocked_request

from edge import i18n
from edge.errors import OpenAIError
from edge.pages import STATIC, render

WEB = Path(i18n.__file__).resolve().parent / "web"
# ck.t("key"...), and the keys pages list in arrays to look up later (["console.nav.keys", ...]).
_USED = re.compile(r"""ck\.t\(\s*["']([\w.]+)["']|\{\{t:([\w.-]+)\}\}""")
_PREFIXES = "nav|common|auth|password|chat|console|usage|ops|docs|home|pricing|topup|demo|error|status|health|title"
_LISTED = re.compile(rf"""["']((?:{_PREFIXES})\.[\w.]+)["']""")


def test_every_key_is_in_both_catalogues_with_the_same_placeholders() -> None:
    zh, en = i18n.catalogue("zh-CN"), i18n.catalogue("en")
    assert sorted(set(zh) - set(en)) == [], "in zh-CN.json only"
    assert sorted(set(en) - set(zh)) == [], "in en.json only"
    for key in zh:
        assert i18n.placeholders(zh[key]) == i18n.placeholders(en[key]), key
        assert zh[key].strip() and en[key].strip(), f"{key} is empty"


def test_every_text_a_page_asks_for_exists() -> None:
    zh = i18n.catalogue("zh-CN")
    sources = list((WEB / "static").glob("*.js")) + list((WEB / "static").glob("*.html"))
    asked = set()
    for path in sources:
        text = path.read_text(encoding="utf-8")
        asked |= {a or b for a, b in _USED.findall(text)} | set(_LISTED.findall(text))
    assert len(asked) > 100
    assert sorted(k for k in asked if k not in zh) == []


def test_a_page_renders_its_language() -> None:
    html = (STATIC / "console.html").read_text(encoding="utf-8")
    zh = render(html, "zh-CN")
    assert '<html lang="zh-CN">' in zh and "/i18n/zh-CN.js" in zh and "<title>控制台 · chatkore</title>" in zh
    assert "{{" not in render(html, "en") and '<html lang="en">' in render(html, "en")


@pytest.mark.parametrize(("header", "cookie", "lang"), [
    ("zh-CN,zh;q=0.9,en;q=0.8", None, "zh-CN"),
    ("zh", None, "zh-CN"),
    ("zh-TW", None, "zh-CN"),
    ("en-US,en;q=0.9", None, "en"),
    ("en;q=0.5, zh-CN;q=0.9", None, "zh-CN"),
    ("fr-FR, de;q=0.8, zh;q=0.5", None, "zh-CN"),
    ("fr-FR", None, "en"),
    ("zh;q=0, en", None, "en"),
    ("", None, "en"),
    ("zh;q=abc;,,;;", None, "en"),
    ("zh-CN", "en", "en"),
    ("en-US", "zh-CN", "zh-CN"),
    ("zh-CN", "klingon", "zh-CN"),
])
def test_language_of_a_request(header: str, cookie: str | None, lang: str) -> None:
    headers = {"Accept-Language": header}
    if cookie is not None:
        headers["Cookie"] = f"{i18n.COOKIE}={cookie}"
    assert i18n.language(make_mocked_request("GET", "/console", headers=headers)) == lang


def test_api_errors_are_translated_by_code_and_v1_errors_are_not() -> None:
    zh = {"Accept-Language": "zh-CN"}
    wrong = OpenAIError(401, "Incorrect email or password.", code="invalid_credentials")
    translated = i18n.localize(make_mocked_request("POST", "/api/login", headers=zh), wrong)
    assert translated.message == "邮箱或密码错误。" and translated.code == "invalid_credentials"
    assert translated.status == 401
    by_param = OpenAIError(400, "'limit' must be an integer", param="limit")
    assert i18n.localize(make_mocked_request("GET", "/api/usage", headers=zh), by_param).message == "参数“limit”无效。"
    for path in ("/v1/chat/completions", "/admin/v1/users"):
        assert i18n.localize(make_mocked_request("POST", path, headers=zh), wrong).message == wrong.message
    english = i18n.localize(make_mocked_request("POST", "/api/login", headers={"Accept-Language": "en"}), wrong)
    assert english.message == wrong.message
