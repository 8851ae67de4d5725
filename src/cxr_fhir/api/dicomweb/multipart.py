"""multipart/related bodies of a STOW-RS request (RFC 2046 §5.1, RFC 2387, PS3.18 §8.6.1.2):
the request's media type, its boundary, and the parts, each with its own headers and bytes."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from email.message import Message

DICOM = "application/dicom"
MAX_BOUNDARY = 70  # RFC 2046: 1 to 70 characters
MAX_LINE = 998  # RFC 5322: the longest line, so the longest transport padding after a boundary
CRLF = b"\r\n"


class MediaTypeError(Exception):
    """The request is not multipart/related; type="application/dicom" (415)."""


class MalformedMultipart(Exception):
    """The body does not follow its multipart framing (400)."""


@dataclass(frozen=True)
class Part:
    index: int  # 1-based position in the body, for the audit trail when nothing else names the part
    content_type: str  # lower-cased, without parameters
    data: bytes


def _params(header: str) -> tuple[str, dict[str, str]]:
    """(media type, parameters) of a Content-Type, quotes removed, names lower-cased; the stdlib's
    RFC 2045 parser, which knows quoted strings (a boundary may hold ';' and '=')."""
    msg = Message()
    msg["content-type"] = header
    params = msg.get_params(header="content-type") or []
    media = (params[0][0] if params else "").strip().lower()
    return media, {str(k).strip().lower(): str(v).strip() for k, v in params[1:]}


def boundary_of(content_type: str) -> str:
    """The boundary of a STOW-RS request, or MediaTypeError (415) / MalformedMultipart (400)."""
    media, params = _params(content_type)
    if media != "multipart/related":
        raise MediaTypeError(f"Content-Type {media or '(none)'!r}: a STOW-RS request is "
                             'multipart/related; type="application/dicom"')
    kind = params.get("type", "").lower()
    if kind != DICOM:
        raise MediaTypeError(f"multipart/related of type {kind or '(none)'!r}: this server stores "
                             'type="application/dicom" only (no metadata and bulk data parts)')
    boundary = params.get("boundary", "")
    if not 1 <= len(boundary) <= MAX_BOUNDARY:
        raise MalformedMultipart("the Content-Type has no valid boundary parameter")
    return boundary


def split(body: bytes, boundary: str) -> list[Part]:
    """The parts between the first delimiter and the closing one (preamble and epilogue ignored)."""
    delimiter = b"--" + boundary.encode("latin-1")
    found = _delimiter(body, delimiter, 0)
    if found is None:
        raise MalformedMultipart("the body holds no part: its boundary never appears")
    parts: list[Part] = []
    _, closing, start = found
    while not closing:
        found = _delimiter(body, delimiter, start)
        if found is None:
            raise MalformedMultipart("the body ends before its closing boundary (truncated?)")
        end, closing, next_start = found
        parts.append(_part(len(parts) + 1, body[start:end]))
        start = next_start
    if not parts:
        raise MalformedMultipart("the multipart body holds no part")
    return parts


def _candidates(body: bytes, delimiter: bytes, pos: int) -> Iterator[tuple[int, int]]:
    """(where the content before it ends, where the rest of its line begins) of each CRLF
    "--boundary" from ``pos`` on, and of "--boundary" opening the body."""
    if pos == 0 and body.startswith(delimiter):
        yield 0, len(delimiter)
    hit = body.find(CRLF + delimiter, pos)
    while hit >= 0:
        yield hit, hit + 2 + len(delimiter)
        hit = body.find(CRLF + delimiter, hit + 2)


def _delimiter(body: bytes, delimiter: bytes, pos: int) -> tuple[int, bool, int] | None:
    """The next delimiter line from ``pos`` on: (where the part before it ends, whether it is the
    closing one, where the next part begins). "--boundary" is a delimiter only when "--" or blanks
    and CRLF follow it; followed by anything else it is content."""
    for end, after in _candidates(body, delimiter, pos):
        if body[after:after + 2] == b"--":
            return end, True, len(body)
        eol = body.find(CRLF, after, after + MAX_LINE)  # bounded: no rescan of the body per candidate
        if eol >= 0 and not body[after:eol].strip(b" \t"):
            return end, False, eol + 2
    return None


def _part(index: int, raw: bytes) -> Part:
    """Headers up to the first empty line, then the content. A part without a Content-Type is taken
    as the request's type (application/dicom), as the root type of multipart/related says."""
    if raw.startswith(CRLF):
        head, data = b"", raw[2:]
    else:
        cut = raw.find(CRLF + CRLF)
        if cut < 0:
            raise MalformedMultipart(f"part {index} has no empty line after its headers")
        head, data = raw[:cut], raw[cut + 4:]
    content_type = DICOM
    for line in head.split(CRLF) if head else []:
        name, sep, value = line.partition(b":")
        if not sep:
            raise MalformedMultipart(f"part {index} has a header line without a colon")
        if name.strip().lower() == b"content-type":
            content_type = _params(value.decode("latin-1"))[0]
    return Part(index, content_type, data)
