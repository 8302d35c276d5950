"""Reading the stack's Prometheus metrics and JSON logs, for tests."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import requests
from prometheus_client.parser import text_string_to_metric_families

from tools.stack import Stack

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def metrics_url(stack: Stack, process: str) -> str:
    if process == "edge":
        return f"{stack.url}/metrics"
    return f"http://127.0.0.1:{stack.metrics_ports[process]}/metrics"


def scrape(stack: Stack, process: str) -> Samples:
    resp = requests.get(metrics_url(stack, process), timeout=10)
    resp.raise_for_status()
    assert resp.headers["Content-Type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(resp.text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of `name` whose labels include `labels` (0 when none)."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def log_lines(stack: Stack, process: str) -> list[dict[str, Any]]:
    path: Path = stack.log_dir / f"{process}.log"
    lines = []
    for raw in path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue  # a stray non-JSON line (a crash trace) is not ours to parse
        if isinstance(line, dict):
            lines.append(line)
    return lines
