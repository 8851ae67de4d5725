"""Property-based tests (hypothesis) over the FHIR search and create endpoints and the value formats
underneath them. One app on SQLite for the module; the number of examples each property ran is
counted in the tests and written to test-artifacts/fuzz/hypothesis.json.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from litestar.testing import TestClient

from cxr_fhir.app import create_app
from cxr_fhir.fhir.search_params import PARAMS
from cxr_fhir.security.clients import create_client
from cxr_fhir.settings import PROJECT_ROOT, Settings
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import writing
from cxr_fhir.storage.fhir.index import date_range
from cxr_fhir.storage.fhir.store import _unescape, split_escaped

FHIR = "application/fhir+json"
MRN = "urn:oid:2.16.840.1.113883.3.9999.1"
ARTIFACT = PROJECT_ROOT / "test-artifacts" / "fuzz" / "hypothesis.json"
RAN: Counter[str] = Counter()
FAST = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module", autouse=True)
def record_counts() -> Iterator[None]:
    yield
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps({"examples": dict(sorted(RAN.items())), "total": sum(RAN.values())}, indent=2)
                        + "\n")


@pytest.fixture(scope="module")
def api(tmp_path_factory) -> Iterator[tuple[TestClient, dict[str, str]]]:
    root = tmp_path_factory.mktemp("hypothesis")
    settings_ = Settings(runtime_dir=root / "var", load_models=False, _env_file=None)
    app = create_app(settings_)
    migrate.upgrade(app.state.services.engine, settings_.migrations_dir)
    with writing(app.state.services.engine) as s:
        token = create_client(s, "hypothesis", ["system/*.*"], actor="test")[1]
    headers = {"Authorization": f"Bearer {token}", "Accept": FHIR}
    with TestClient(app) as client:
        for i, family in enumerate(["Lovelace", "O'Brien_%", "Zoë", "李"]):
            body = {"resourceType": "Patient", "name": [{"family": family}], "gender": "female",
                    "birthDate": f"19{50 + i}-0{i + 1}-1{i}", "identifier": [{"system": MRN, "value": f"H-{i}"}]}
            r = client.post("/fhir/Patient", content=json.dumps(body), headers={**headers, "Content-Type": FHIR})
            assert r.status_code == 201, r.text
            obs = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "s", "code": "c"}]},
                   "subject": {"reference": f"Patient/{r.json()['id']}"}, "effectiveDateTime": "2024-05-01T10:00:00Z"}
            r = client.post("/fhir/Observation", content=json.dumps(obs), headers={**headers, "Content-Type": FHIR})
            assert r.status_code == 201, r.text
        yield client, headers


# -- (a) search query strings --------------------------------------------------------------------------

SPECIAL = list("\\|,$%_'\":.-*?&=#+ ") + ["%00", "\\,", "\\|", "\\$", "eq", "ge2020", "lt", "sa", "Patient/",
                                         "http://x/Patient/1", "' OR '1'='1", "--", ";", "null", "true", "missing"]
MODIFIERS = ["", ":exact", ":contains", ":missing", ":not", ":Patient", ":text", ":above", ":", "::", ":Patient.family",
             ".family", ":Patient.name:exact"]
CONTROL = ["_count", "_offset", "_sort", "_summary", "_elements", "_include", "_revinclude", "_total", "_format",
           "_id", "_lastUpdated", "_pretty", "_since", "_has", "_type", "_query", "_filter"]


def keys_for(resource_type: str):
    names = st.sampled_from(sorted(PARAMS[resource_type]) + CONTROL)
    known = st.builds(lambda n, m: n + m, names, st.sampled_from(MODIFIERS))
    return st.one_of(known, st.text(max_size=12), st.sampled_from(["", "x", "family", "subject"]))


values = st.one_of(
    st.text(max_size=20),
    st.lists(st.sampled_from(SPECIAL) | st.text(max_size=4), max_size=6).map("".join),
    st.integers(-10**12, 10**12).map(str),
    st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 30),
                 timezones=st.none() | st.timezones()).map(lambda d: d.isoformat()),
)


def check_search(client, headers, resource_type: str, pairs: list[tuple[str, str]]) -> None:
    r = client.get(f"/fhir/{resource_type}", params=pairs, headers=headers)
    assert r.status_code < 500, (pairs, r.status_code, r.text[:500])
    body = r.json()
    if r.status_code == 200:
        assert body["resourceType"] == "Bundle" and body["type"] == "searchset" and isinstance(body["total"], int)
        for entry in body.get("entry", []):
            assert entry["resource"]["resourceType"] in PARAMS or entry["search"]["mode"] == "include"
    else:
        assert 400 <= r.status_code < 500 and body["resourceType"] == "OperationOutcome", body


@pytest.mark.parametrize("resource_type", ["Patient", "Observation"])
def test_random_search_queries_never_5xx(api, resource_type):
    client, headers = api

    @settings(max_examples=1000, **FAST)
    @given(st.lists(st.tuples(keys_for(resource_type), values), min_size=1, max_size=4))
    def prop(pairs):
        RAN[f"search-{resource_type}"] += 1
        check_search(client, headers, resource_type, pairs)

    prop()


# -- (b) random Patient JSON -------------------------------------------------------------------------------

junk = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8),
                 st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=4), st.integers(), max_size=2))
name_text = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1, max_size=20)
good_name = st.fixed_dictionaries({"family": name_text},
                                  optional={"given": st.lists(name_text, min_size=1, max_size=3),
                                            "use": st.sampled_from(["official", "usual", "nickname"])})
patients = st.fixed_dictionaries(
    {"resourceType": st.just("Patient")},
    optional={
        "name": st.lists(good_name, min_size=1, max_size=2) | junk,
        "gender": st.sampled_from(["male", "female", "other", "unknown", "Male", "x", ""]) | junk,
        "birthDate": st.dates(min_value=datetime(1870, 1, 1).date(), max_value=datetime(2100, 1, 1).date())
        .map(lambda d: d.isoformat()) | st.sampled_from(["1990", "1990-05", "1990-13-01", "19900101", ""]) | junk,
        "identifier": st.lists(st.fixed_dictionaries({"system": st.sampled_from([MRN, "urn:x", "not a uri"]),
                                                      "value": name_text}), max_size=2) | junk,
        "active": st.booleans() | junk,
        "telecom": st.lists(st.fixed_dictionaries({"system": st.sampled_from(["phone", "email", "pager", "fax9"]),
                                                   "value": name_text}), max_size=2) | junk,
        "deceasedBoolean": st.booleans(),
        "multipleBirthInteger": st.integers(-5, 10**10),
        "extension": junk,
        "id": st.text(max_size=70) | junk,
    })


def clean(value):
    """FHIR JSON has no empty arrays or objects: the server drops them, as the specification asks."""
    if isinstance(value, dict):
        value = {k: clean(v) for k, v in value.items()}
        return {k: v for k, v in value.items() if v not in ([], {}, None)} or None
    if isinstance(value, list):
        value = [clean(v) for v in value]
        return [v for v in value if v not in ([], {}, None)] or None
    return value


def test_random_patients_never_5xx_and_created_ones_read_back_as_sent(api):
    client, headers = api
    h = {**headers, "Content-Type": FHIR}
    outcomes: Counter[int] = Counter()

    @settings(max_examples=1000, **FAST)
    @given(patients)
    def prop(body):
        RAN["patient-create"] += 1
        r = client.post("/fhir/Patient", content=json.dumps(body), headers=h)
        outcomes[r.status_code] += 1
        assert r.status_code in (201, 400, 409, 422), (body, r.status_code, r.text[:500])
        answer = r.json()
        if r.status_code != 201:
            assert answer["resourceType"] == "OperationOutcome"
            return
        back = client.get(f"/fhir/Patient/{answer['id']}", headers=headers)
        assert back.status_code == 200
        stored = back.json()
        for key, value in body.items():
            if key in ("id", "resourceType"):
                continue
            assert stored.get(key) == clean(value), (key, value, stored.get(key))

    prop()
    assert outcomes[201] > 0 and sum(v for k, v in outcomes.items() if k >= 400) > 0, outcomes


# -- (b2) random batch / transaction Bundles ---------------------------------------------------------------

urls = st.one_of(st.sampled_from(["Patient", "Patient/x", "Observation", "Observation?code=s|c", "Patient?family=Zo",
                                  "Patient/x/_history/1", "Device", "Provenance", "Nope", "/", "Patient?", "?",
                                  "Patient?_id=%00", "Patient/../x", "urn:uuid:1"]), st.text(max_size=15))
entries = st.fixed_dictionaries(
    {"request": st.fixed_dictionaries({"method": st.sampled_from(["GET", "POST", "PUT", "DELETE", "HEAD", "PATCH"]),
                                       "url": urls},
                                      optional={"ifMatch": st.sampled_from(['W/"1"', "1", "x", "", "W/\"2\""]),
                                                "ifNoneExist": st.sampled_from(["family=Zo", "", "x=%", "_id=1"])})},
    optional={"fullUrl": st.sampled_from(["urn:uuid:6c1c8a54-0000-4000-8000-000000000001", "x", ""]),
              "resource": patients | st.fixed_dictionaries({"resourceType": st.sampled_from(["Observation", "Bundle"]),
                                                            "status": st.sampled_from(["final", "x"]),
                                                            "code": st.just({"text": "t"})})})
bundles = st.fixed_dictionaries({"resourceType": st.just("Bundle"),
                                 "type": st.sampled_from(["batch", "transaction", "collection"]),
                                 "entry": st.lists(entries, max_size=5) | st.lists(entries | junk, max_size=3)})


def test_random_bundles_never_5xx(api):
    client, headers = api
    h = {**headers, "Content-Type": FHIR}

    statuses: Counter[int] = Counter()

    @settings(max_examples=500, **FAST)
    @given(bundles)
    def prop(bundle):
        RAN["bundle"] += 1
        r = client.post("/fhir", content=json.dumps(bundle), headers=h)
        statuses[r.status_code] += 1
        assert r.status_code < 500, (bundle, r.status_code, r.text[:500])
        body = r.json()
        if r.status_code == 200:
            assert body["type"] == f"{bundle['type']}-response" and len(body["entry"]) == len(bundle["entry"])
            for entry in body["entry"]:
                assert int(entry["response"]["status"][:3]) < 500, entry
        else:
            assert body["resourceType"] == "OperationOutcome"

    prop()
    assert statuses[200] > 0 and sum(v for k, v in statuses.items() if k >= 400) > 0, statuses


# -- (c) FHIR dates -> [lo, hi) ----------------------------------------------------------------------------

offsets = st.integers(-14 * 60, 14 * 60).map(lambda m: m - m % 15)


def _tz(minutes: int | None) -> str:
    if minutes is None:
        return ""
    if minutes == 0:
        return "Z"
    sign = "+" if minutes > 0 else "-"
    return f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"


@settings(max_examples=1000, deadline=None)
@given(st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 30)), st.none() | offsets,
       st.sampled_from(["year", "month", "day", "minute", "second", "micro"]))
def test_date_range_is_a_nonempty_interval_containing_the_instant(moment, offset, precision):
    RAN["date-range"] += 1
    iso = moment.isoformat(timespec="microseconds")  # YYYY-MM-DDTHH:MM:SS.ffffff, year zero-padded
    text = {"year": iso[:4], "month": iso[:7], "day": iso[:10], "minute": iso[:16], "second": iso[:19],
            "micro": iso}[precision]
    if precision in ("minute", "second", "micro"):
        text += _tz(offset)
    lo, hi = date_range(text)
    assert lo < hi and lo.tzinfo is not None and hi.tzinfo is not None
    truncated = datetime.fromisoformat(text[:26].ljust(10, "-").replace("--", "-01") if precision in
                                       ("minute", "second", "micro") else iso[:10] if precision == "day" else
                                       (iso[:7] + "-01" if precision == "month" else iso[:4] + "-01-01"))
    instant = truncated.replace(tzinfo=UTC) - (timedelta(minutes=offset) if offset and precision in
                                               ("minute", "second", "micro") else timedelta(0))
    assert lo == instant, (text, lo, instant)  # the interval starts at the value itself
    instant = moment.replace(tzinfo=UTC) - (timedelta(minutes=offset) if offset and precision in
                                            ("minute", "second", "micro") else timedelta(0))
    assert lo <= instant < hi, (text, lo, instant, hi)
    # Coarser precision contains finer: the day holds the minute, the year holds the day.
    if precision not in ("year",):
        ylo, yhi = date_range(iso[:4])
        if offset in (None, 0) or precision in ("month", "day"):
            assert ylo <= lo and hi <= yhi


@settings(max_examples=1000, deadline=None)
@given(st.text(max_size=30))
def test_date_range_refuses_or_answers_an_interval_for_any_text(text):
    RAN["date-range-junk"] += 1
    from cxr_fhir.storage.fhir.index import BadDate

    try:
        lo, hi = date_range(text)
    except BadDate:
        return
    assert lo < hi and re.match(r"^\s*\d{4}", text)


# -- (d) split_escaped and escaping ------------------------------------------------------------------------

def escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.text(st.sampled_from(list("ab\\,|$ %_é")) | st.characters(), max_size=8), min_size=1, max_size=5),
       st.sampled_from([",", "|", "$"]))
def test_split_escaped_round_trips_escaped_parts(parts, sep):
    RAN["split-escaped"] += 1
    joined = sep.join(escape(p) for p in parts)
    assert [_unescape(p) for p in split_escaped(joined, sep)] == parts
    # Without any separator in the text, it is one part whatever else it holds.
    assert split_escaped(escape(parts[0]), sep) == [escape(parts[0])]


def test_last_updated_at_its_own_millisecond_finds_the_resource(api):
    """Found by the date property above: '.207' was read as 206999 µs, so the exact meta.lastUpdated
    of a resource did not find it."""
    client, headers = api
    found = client.get("/fhir/Patient", params={"_count": "50"}, headers=headers).json()["entry"]
    for entry in found:
        stamp = entry["resource"]["meta"]["lastUpdated"]
        r = client.get("/fhir/Patient", params={"_lastUpdated": stamp, "_id": entry["resource"]["id"]},
                       headers=headers)
        assert r.status_code == 200 and r.json()["total"] == 1, (stamp, r.json())
    lo, hi = date_range("2024-05-01T10:00:00.2Z")
    assert (hi - lo) == timedelta(milliseconds=100) and lo.microsecond == 200_000
