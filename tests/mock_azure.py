"""A scripted Azure OpenAI upstream ({tag}/openai/deployments/{name}/...?api-version=) for tests.

Azure's differences from OpenAI, as clients meet them: the `api-key` header, a required
`api-version`, the model chosen by the deployment in the URL, `stream_options` refused
by api-versions before 2024-09-01, a first stream chunk with no choices carrying
prompt_filter_results, content_filter_results on choices, and (with the asynchronous
content filter) a chunk whose choice has no `delta` and whose id, model and created are empty.
"""
from __future__ import annotations

import json
import re
from typing import Any

from aiohttp import web

from services.demo import replies

_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")
_SAFE = {"hate": {"filtered": False, "severity": "safe"}, "self_harm": {"filtered": False, "severity": "safe"},
         "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


def _sse(obj: Any) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def ok(*, deployments: dict[str, str] | None = None):  # noqa: ANN201 - a mock Behavior
    """Azure's answer. `deployments` (name -> model) limits which deployments exist."""

    async def behave(request: web.Request, body: dict[str, Any], path: str) -> web.StreamResponse:
        match = re.match(r"^deployments/([^/]+)/(chat/completions|completions|embeddings)$", path)
        if not request.headers.get("api-key"):
            return _error(401, "401", "Access denied due to invalid subscription key or wrong API endpoint.")
        version = request.query.get("api-version", "")
        if not match or not _VERSION.match(version):
            return _error(404, "404", "Resource not found")
        deployment, operation = match[1], match[2]
        if deployments is not None and deployment not in deployments:
            return _error(404, "DeploymentNotFound", "The API deployment for this resource does not exist.")
        if "stream_options" in body and version < "2024-09-01":
            return web.json_response({"error": {"message": "Unrecognized request argument supplied: stream_options",
                                                "type": "invalid_request_error", "param": None, "code": None}},
                                     status=400)
        body = {**body, "model": (deployments or {}).get(deployment, deployment)}  # Azure ignores "model"
        if operation == "embeddings":
            return web.json_response(replies.embeddings(body))
        if operation == "completions":
            return web.json_response(replies.completion(body))
        if not body.get("stream"):
            reply = replies.chat(body)
            reply["prompt_filter_results"] = [{"prompt_index": 0, "content_filter_results": _SAFE}]
            for choice in reply["choices"]:
                choice["content_filter_results"] = _SAFE
            return web.json_response(reply)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(_sse({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                                   "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": _SAFE}]}))
        usage = None
        for chunk in replies.chat_stream(body, 8):
            if not chunk["choices"]:
                usage = chunk
                continue
            for choice in chunk["choices"]:
                choice["content_filter_results"] = _SAFE if choice["delta"].get("content") else {}
            await response.write(_sse(chunk))
        # The asynchronous filter's verdict: no delta, no id, no model, created 0.
        await response.write(_sse({"id": "", "object": "", "created": 0, "model": "", "choices": [{
            "index": 0, "finish_reason": None, "content_filter_results": _SAFE,
            "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": 40}}]}))
        if usage is not None:
            await response.write(_sse(usage))
        await response.write(b"data: [DONE]\n\n")
        return response

    return behave
