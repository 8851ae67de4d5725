"""Resource JSON -> search index rows, and the FHIR value formats the index speaks (dates, strings)."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from ...domain.errors import InvalidRequest
from ...fhir.search_params import PARAMS
from ...records.tables import FhirIndex

_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
                   r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")
FAR_PAST = datetime(1, 1, 1, tzinfo=UTC)
FAR_FUTURE = datetime(9999, 12, 31, tzinfo=UTC)


class BadDate(InvalidRequest):
    """Not a FHIR date, or not a real one."""


def date_range(text: str) -> tuple[datetime, datetime]:
    """The half-open UTC interval [lo, hi) a FHIR date/dateTime/instant covers at its precision."""
    m = _DATE.match(text.strip())
    if not m:
        raise BadDate(f"not a FHIR date: {text!r}")
    year, month, day, hour, minute, second, frac, tz = m.groups()
    try:
        if month is None:
            lo = datetime(int(year), 1, 1, tzinfo=UTC)
            return lo, lo.replace(year=lo.year + 1) if lo.year < 9999 else FAR_FUTURE
        if day is None:
            lo = datetime(int(year), int(month), 1, tzinfo=UTC)
            hi = lo.replace(year=lo.year + 1, month=1) if lo.month == 12 else lo.replace(month=lo.month + 1)
            return lo, hi
        if hour is None:
            lo = datetime(int(year), int(month), int(day), tzinfo=UTC)
            return lo, lo + timedelta(days=1)
        # The fraction's digits, not float(frac): float('.207') * 1e6 is 206999.99..., an interval
        # that missed the instant it was written from. Beyond microseconds the digits are dropped.
        digits = frac[1:7] if frac else ""
        naive = datetime(int(year), int(month), int(day), int(hour), int(minute), int(second or 0),
                         int(digits.ljust(6, "0")) if digits else 0)
    except ValueError as exc:
        raise BadDate(f"not a real date: {text!r}") from exc
    if tz in (None, "Z"):
        lo = naive.replace(tzinfo=UTC)
    else:
        sign = 1 if tz[0] == "+" else -1
        lo = (naive - sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))).replace(tzinfo=UTC)
    # At the value's precision: .2 covers a tenth of a second, .207 a millisecond, and so on.
    step = (timedelta(microseconds=10 ** (6 - len(digits))) if digits else timedelta(seconds=1) if second
            else timedelta(minutes=1))
    return lo, lo + step


def normalise(text: str) -> str:
    """FHIR string search is case- and accent-insensitive."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).casefold().strip()


def walk(node: Any, path: str) -> Iterator[Any]:
    """Every value at a dotted path; lists flatten; ``x[x]`` matches all choice variants."""
    steps = path.split(".")

    def go(value: Any, i: int) -> Iterator[Any]:
        if isinstance(value, list):
            for item in value:
                yield from go(item, i)
            return
        if i == len(steps):
            yield value
            return
        if not isinstance(value, dict):
            return
        step = steps[i]
        if step.endswith("[x]"):
            stem = step[:-3]
            for key, child in value.items():
                if key.startswith(stem) and key[len(stem):][:1].isupper():
                    yield from go(child, i + 1)
        elif step in value:
            yield from go(value[step], i + 1)

    yield from go(node, 0)


def reference_key(reference: str) -> str:
    """'http://host/fhir/Patient/1/_history/2' -> 'Patient/1'."""
    parts = reference.split("/_history/")[0].rstrip("/").split("/")
    return "/".join(parts[-2:]) if len(parts) >= 2 else reference


def _tokens(value: Any) -> Iterator[tuple[str | None, str]]:
    if isinstance(value, bool):
        yield None, "true" if value else "false"
    elif isinstance(value, str):
        yield None, value
    elif isinstance(value, dict):
        if "coding" in value:
            for coding in value["coding"]:
                if coding.get("code"):
                    yield coding.get("system"), coding["code"]
        elif "value" in value and isinstance(value["value"], str):  # Identifier
            yield value.get("system"), value["value"]
        elif "code" in value:  # Coding
            yield value.get("system"), value["code"]


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key in ("name", "text", "family", "value", "display"):
            if isinstance(value.get(key), str):
                yield value[key]


def _dates(value: Any) -> Iterator[tuple[datetime, datetime]]:
    try:
        if isinstance(value, str):
            yield date_range(value)
        elif isinstance(value, dict) and ("start" in value or "end" in value):
            lo = date_range(value["start"])[0] if value.get("start") else FAR_PAST
            hi = date_range(value["end"])[1] if value.get("end") else FAR_FUTURE
            yield lo, hi
    except BadDate:
        return


def rows(resource_type: str, resource_id: str, content: dict[str, Any]) -> list[FhirIndex]:
    out: list[FhirIndex] = []
    for param in PARAMS.get(resource_type, {}).values():
        seen: set[tuple] = set()
        for path in param.paths:
            for value in walk(content, path):
                items: list[dict[str, Any]]
                if param.type == "token":
                    items = [dict(system=s, value=c[:255]) for s, c in _tokens(value)]
                elif param.type == "string":
                    items = [dict(value=normalise(t)[:255], raw=t[:255]) for t in _strings(value)]
                elif param.type == "date":
                    items = [dict(date_lo=lo, date_hi=hi) for lo, hi in _dates(value)]
                else:  # reference
                    ref = value.get("reference") if isinstance(value, dict) else None
                    target = reference_key(ref) if isinstance(ref, str) and ref else None
                    if target and param.only_targets and target.partition("/")[0] not in param.targets:
                        target = None
                    items = [dict(value=target[:255])] if target else []
                for item in items:
                    key = tuple(sorted(item.items()))
                    if key not in seen:
                        seen.add(key)
                        out.append(FhirIndex(resource_type=resource_type, resource_id=resource_id,
                                             param=param.name, **item))
    return out
