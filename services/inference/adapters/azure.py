"""`azure` channels: Azure OpenAI's deployment URLs, `api-key` header and `api-version`.

The channel's base_url is the resource endpoint (https://NAME.openai.azure.com). The
deployment for a model is `settings.deployments[public model]`, else the model_map's
name for it. Azure's streams differ from OpenAI's in ways clients trip over: a first
chunk with no choices (prompt_filter_results), and content-filter chunks whose choices
carry no `delta` and whose id/created/model are empty. Both reach our client as proper
chunks (the first carries nothing for the client and is dropped by the tally).
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from services.inference.adapters.base import Exchange, Outgoing
from services.inference.errors import InvalidRequest
from services.inference.failures import Failure, UpstreamError, classify
from services.inference.payloads import MEDIA, Endpoint, dumps, upstream_object

if TYPE_CHECKING:
    from services.inference.channel import Channel

DEFAULT_API_VERSION = "2024-10-21"
# api-versions older than this answer 400 to `stream_options`, so usage must be counted.
STREAM_USAGE_SINCE = "2024-09-01"
_API_VERSION = re.compile(r"^\d{4}-\d{2}-\d{2}(-preview)?$")


def api_version(channel: Channel) -> str:
    value = channel.settings.get("api_version")
    return value if isinstance(value, str) and value else DEFAULT_API_VERSION


def deployment(channel: Channel, out: Outgoing) -> str:
    deployments = channel.settings.get("deployments")
    if isinstance(deployments, dict) and isinstance(deployments.get(out.public_model), str):
        return deployments[out.public_model]
    return out.model


class AzureExchange(Exchange):
    def chunks(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        choices = event.get("choices")
        if isinstance(choices, list):
            for choice in choices:
                if isinstance(choice, dict) and not isinstance(choice.get("delta"), dict):
                    choice["delta"] = {}
        return [event]

    def failure(self, status: int, payload: bytes, headers: Any) -> UpstreamError:
        error = classify(status, payload, headers, self.channel)
        if status == 404 and error.error.get("code") in ("DeploymentNotFound", "404"):
            # A deployment or api-version that does not exist is this channel's
            # misconfiguration, not the client's mistake: try the next channel.
            return UpstreamError(Failure.SERVER, error.message, status=status, error=error.error)
        return error


class AzureAdapter:
    endpoints = frozenset(Endpoint) - {Endpoint.MESSAGES} - MEDIA

    def refusal(self, endpoint: Endpoint, body: dict[str, Any]) -> InvalidRequest | None:
        if endpoint not in self.endpoints:
            return InvalidRequest(f"This model is not available through {endpoint.value}.", param="model")
        return None

    def exchange(self, channel: Channel, out: Outgoing) -> Exchange:
        version = api_version(channel)
        obj = upstream_object(out.endpoint, out.body, out.model, stream=out.stream,
                              budget=out.budget or None)
        if out.stream and version < STREAM_USAGE_SINCE:
            obj.pop("stream_options", None)
        base = channel.base_url.removesuffix("/openai")
        url = (f"{base}/openai/deployments/{quote(deployment(channel, out), safe='')}{out.endpoint.value}"
               f"?api-version={quote(version, safe='')}")
        key = channel.api_key.reveal()
        return AzureExchange(channel, url, {"api-key": key} if key else {}, dumps(obj))

    def validate_settings(self, settings: dict[str, Any]) -> str | None:
        version = settings.get("api_version")
        if version is not None and not (isinstance(version, str) and _API_VERSION.match(version)):
            return "'settings.api_version' must look like 2024-10-21 or 2025-01-01-preview"
        deployments = settings.get("deployments")
        if deployments is not None and not (isinstance(deployments, dict) and all(
                isinstance(v, str) and v for v in deployments.values())):
            return "'settings.deployments' must map public model names to deployment names"
        return None
