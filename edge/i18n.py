"""The pages' two languages: the catalogues, which one a request gets, and /api errors in it.

One JSON catalogue per language in edge/web/i18n/ (`zh-CN.json` first, `en.json`), flat keys
to strings with `{name}` placeholders. The pages get theirs as /i18n/<lang>.js (no inline
script); the /api error answers are translated here by their `code`, which stays the same in
every language. /v1 and /admin/v1 keep OpenAI's English: SDKs and tools read those.
"""
from __future__ import annotations

import json
import re
from functools import cache
from pathlib import Path

from aiohttp import web

from edge.errors import OpenAIError

CATALOGUES = Path(__file__).resolve().parent / "web" / "i18n"
LANGUAGES = ("zh-CN", "en")  # Chinese first: the source of every key
DEFAULT = "en"  # when the browser prefers neither (an SDK, curl, a tool)
COOKIE = "ck_lang"  # the page's language switch, remembered by the browser
_PLACEHOLDER = re.compile(r"\{(\w+)\}")


@cache
def catalogue(lang: str) -> dict[str, str]:
    data = json.loads((CATALOGUES / f"{lang}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"{lang}.json must map keys to strings")
    return data


@cache
def script(lang: str) -> bytes:
    """The catalogue as a script the pages load before their own (CSP allows only files)."""
    payload = json.dumps({"lang": lang, "messages": catalogue(lang)}, ensure_ascii=False, sort_keys=True)
    return f"window.CK_I18N = {payload};\n".encode()


def placeholders(text: str) -> set[str]:
    return set(_PLACEHOLDER.findall(text))


def t(lang: str, key: str, **values: object) -> str:
    text = catalogue(lang).get(key) or catalogue(DEFAULT).get(key) or key
    return _PLACEHOLDER.sub(lambda m: str(values.get(m.group(1), m.group(0))), text)


def _accepted(header: str) -> list[tuple[float, int, str]]:
    ranked = []
    for i, part in enumerate(header.split(",")[:32]):
        tag, _, params = part.strip().partition(";")
        q = 1.0
        for p in params.split(";"):
            name, _, value = p.strip().partition("=")
            if name == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        ranked.append((-q, i, tag.strip().lower()))
    return sorted(ranked)


def language(request: web.Request) -> str:
    """The switch's choice if made; else the first of the browser's languages we have."""
    chosen = request.cookies.get(COOKIE, "")
    if chosen in LANGUAGES:
        return chosen
    for neg_q, _, tag in _accepted(request.headers.get("Accept-Language", "")):
        if neg_q >= 0:
            break
        if tag == "zh" or tag.startswith("zh-"):
            return "zh-CN"
        if tag == "en" or tag.startswith("en-"):
            return "en"
    return DEFAULT


def localize(request: web.Request, error: OpenAIError) -> OpenAIError:
    """An /api error in the user's language: by its code, else by its status (naming the param)."""
    if not request.path.startswith("/api/"):
        return error
    lang = language(request)
    if lang == DEFAULT:
        return error
    messages = catalogue(lang)
    values = {"param": error.param or ""}
    for key in (f"error.{error.code}.{error.param}", f"error.{error.code}",
                f"error.status.{error.status}.param" if error.param else "", f"error.status.{error.status}"):
        if key and key in messages:
            return _with_message(error, t(lang, key, **values))
    return _with_message(error, t(lang, "error.other"))


def _with_message(error: OpenAIError, message: str) -> OpenAIError:
    return OpenAIError(error.status, message, type=error.type, param=error.param, code=error.code,
                       headers=error.headers)
