"""multipart/form-data bodies (image edits, audio uploads): parsed whole from bytes, and written again."""
from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from python_multipart.multipart import MultipartParser, parse_options_header

MAX_PARTS = 64


class FormError(ValueError):
    """The body is not a multipart/form-data form this server reads."""


@dataclass
class Part:
    name: str
    data: bytes
    filename: str | None = None  # set for a file
    content_type: str = ""

    @property
    def text(self) -> str:
        return self.data.decode("utf-8", errors="replace")


@dataclass
class Form:
    parts: list[Part] = field(default_factory=list)

    def value(self, name: str) -> str | None:
        """A plain field's value (the first of that name)."""
        for p in self.parts:
            if p.name == name and p.filename is None:
                return p.text
        return None

    def files(self, name: str) -> list[Part]:
        """The files sent under `name` (or `name[]`, as the SDKs send lists)."""
        return [p for p in self.parts if p.filename is not None and p.name in (name, f"{name}[]")]

    def fields(self) -> dict[str, str]:
        return {p.name: p.text for p in self.parts if p.filename is None}

    def with_value(self, name: str, value: str) -> Form:
        """The same form with one plain field set (replaced where it was, else added)."""
        parts, done = [], False
        for p in self.parts:
            if p.name == name and p.filename is None:
                if not done:
                    parts.append(Part(name, value.encode()))
                    done = True
                continue
            parts.append(p)
        if not done:
            parts.append(Part(name, value.encode()))
        return Form(parts)

    def encode(self) -> tuple[bytes, str]:
        """The form as a body, and its Content-Type (with a fresh boundary)."""
        boundary = "chatkore-" + secrets.token_hex(16)
        out: list[bytes] = []
        for p in self.parts:
            disposition = f'form-data; name="{_quoted(p.name)}"'
            if p.filename is not None:
                disposition += f'; filename="{_quoted(p.filename)}"'
            head = f"--{boundary}\r\nContent-Disposition: {disposition}\r\n"
            if p.filename is not None:
                head += f"Content-Type: {_quoted(p.content_type) or 'application/octet-stream'}\r\n"
            out += [head.encode(), b"\r\n", p.data, b"\r\n"]
        out.append(f"--{boundary}--\r\n".encode())
        return b"".join(out), f"multipart/form-data; boundary={boundary}"


def _quoted(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', "%22").replace("\r", "").replace("\n", "")


def is_form(content_type: str) -> bool:
    return parse_options_header(content_type)[0] == b"multipart/form-data"


def parse(body: bytes, content_type: str) -> Form:
    """A whole multipart/form-data body; FormError when it is not one."""
    kind, options = parse_options_header(content_type)
    boundary = options.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary or len(boundary) > 200:
        raise FormError("expected a multipart/form-data body with a boundary")
    form = Form()
    state: dict[str, object] = {}
    chunks: list[bytes] = []

    def on_part_begin() -> None:
        state.clear()
        state["headers"] = {}
        chunks.clear()

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] = state.get("field", b"") + data[start:end]  # type: ignore[operator]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] = state.get("value", b"") + data[start:end]  # type: ignore[operator]

    def on_header_end() -> None:
        headers = state["headers"]
        assert isinstance(headers, dict)
        headers[bytes(state.pop("field", b"")).lower()] = bytes(state.pop("value", b""))  # type: ignore[arg-type]

    def on_part_data(data: bytes, start: int, end: int) -> None:
        chunks.append(data[start:end])

    def on_part_end() -> None:
        headers = state.get("headers") or {}
        assert isinstance(headers, dict)
        disposition, params = parse_options_header(headers.get(b"content-disposition", b""))
        name = params.get(b"name")
        if disposition != b"form-data" or name is None:
            raise FormError("a part of the form has no name")
        if len(form.parts) >= MAX_PARTS:
            raise FormError(f"the form has more than {MAX_PARTS} parts")
        filename = params.get(b"filename")
        form.parts.append(Part(name.decode("utf-8", "replace"), b"".join(chunks),
                               filename.decode("utf-8", "replace") if filename is not None else None,
                               headers.get(b"content-type", b"").decode("latin-1")))

    callbacks = {"on_part_begin": on_part_begin, "on_header_field": on_header_field,
                 "on_header_value": on_header_value, "on_header_end": on_header_end,
                 "on_part_data": on_part_data, "on_part_end": on_part_end}
    parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
    try:
        parser.write(body)
        parser.finalize()
    except FormError:
        raise
    except Exception as exc:  # the parser's own errors: a malformed body
        raise FormError(f"malformed multipart body: {type(exc).__name__}") from None
    if not form.parts:
        raise FormError("the form is empty")
    # A plain field sent twice would be read one way here and another upstream (`n=10 … n=1`);
    # only array fields (`name[]`, as the SDKs send lists) may repeat.
    seen: set[str] = set()
    for p in form.parts:
        if p.filename is None and not p.name.endswith("[]"):
            if p.name in seen:
                raise FormError(f"the field '{p.name[:64]}' is sent more than once")
            seen.add(p.name)
    return form
