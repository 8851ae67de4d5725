"""Schemathesis over the OpenAPI schema the app publishes (/schema/openapi.json), in process against
the ASGI app, as an all-scopes FHIR client: no generated request may get a 5xx. Every /fhir operation
gets a bounded number of positive and negative cases; the number run is written to
test-artifacts/fuzz/schemathesis.json.
"""

from __future__ import annotations

import json
from collections import Counter

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error

from cxr_fhir.app import create_app
from cxr_fhir.security.clients import create_client
from cxr_fhir.settings import PROJECT_ROOT, Settings
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import writing

ARTIFACT = PROJECT_ROOT / "test-artifacts" / "fuzz" / "schemathesis.json"
CASES_PER_MODE = 100  # per operation and generation mode (and once more with rid = SEEDED)
SEEDED = "fuzz-1"


def test_no_generated_request_gets_a_server_error(tmp_path):
    # The models are loaded so that $analyze decodes what it is sent (without them it is a 503 by design).
    settings = Settings(runtime_dir=tmp_path / "var", load_models=True, max_upload_bytes=2_000_000, _env_file=None)
    app = create_app(settings)
    engine = app.state.services.engine
    migrate.upgrade(engine, settings.migrations_dir)
    with writing(engine) as s:
        token = create_client(s, "schemathesis", ["system/*.*", "system/AuditEvent.read"], actor="test")[1]
    auth = {"Authorization": f"Bearer {token}"}
    # Resources under a known id, so that the cases with rid=SEEDED reach the stored ones.
    from litestar.testing import TestClient

    with TestClient(app) as client:
        assert app.state.services.models is not None, app.state.services.model_error
        for body in ({"resourceType": "Patient", "id": SEEDED, "name": [{"family": "Seed"}]},
                     {"resourceType": "Observation", "id": SEEDED, "status": "final", "code": {"text": "seed"},
                      "subject": {"reference": f"Patient/{SEEDED}"}},
                     {"resourceType": "Device", "id": SEEDED, "status": "active"}):
            r = client.put(f"/fhir/{body['resourceType']}/{SEEDED}", content=json.dumps(body),
                           headers={**auth, "Content-Type": "application/fhir+json"})
            assert r.status_code == 201, r.text

    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app).include(path_regex="^/fhir")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 12, [op.label for op in operations]
    ran: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []

    for operation in operations:
        fixed = [{}, {"rid": SEEDED}] if "{rid}" in operation.path else [{}]
        for mode, path_parameters in [(GenerationMode.POSITIVE, p) for p in fixed] + [(GenerationMode.NEGATIVE, {})]:
            # run() is called at once, within this iteration, so the loop variables it reads are current.
            @hsettings(max_examples=CASES_PER_MODE, deadline=None, database=None,
                       suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode, path_parameters=path_parameters or None))
            def run(case):
                ran[operation.label] += 1  # noqa: B023
                response = case.call(headers=auth)
                statuses[response.status_code] += 1
                try:
                    case.validate_response(response, checks=[not_a_server_error], headers=auth)
                except Exception as exc:  # collect them all, then fail once with the list
                    failures.append(f"{operation.label} {mode.value}: {response.status_code} "  # noqa: B023
                                    f"{case.path_parameters} {case.query} -> {str(exc)[:300]}")

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
                assert mode is GenerationMode.NEGATIVE, operation.label

    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps({"cases": dict(sorted(ran.items())), "total": sum(ran.values()),
                                    "statuses": {str(k): v for k, v in sorted(statuses.items())},
                                    "operations": len(operations), "cases_per_mode": CASES_PER_MODE}, indent=2) + "\n")
    assert not failures, "\n".join(failures[:20])
    assert sum(ran.values()) >= len(operations) * 2 and statuses[200] + statuses[201] > 0, statuses


WEB_CASES_PER_MODE = 30


def test_web_pages_get_no_server_error_from_generated_requests(tmp_path):
    """The pages in the same schema, as a logged-in admin with the CSRF token (so forms are processed)."""
    import re

    from litestar.testing import TestClient

    from cxr_fhir.security.users import create_user

    settings = Settings(runtime_dir=tmp_path / "var", load_models=False, _env_file=None)
    app = create_app(settings)
    migrate.upgrade(app.state.services.engine, settings.migrations_dir)
    with writing(app.state.services.engine) as s:
        create_user(s, "admin", "correct-horse-battery", "admin", actor="test")
    with TestClient(app) as client:
        csrf = re.search(r'name="_csrf_token" value="([^"]+)"', client.get("/login").text).group(1)
        assert client.post("/login", data={"username": "admin", "password": "correct-horse-battery",
                                           "_csrf_token": csrf}, follow_redirects=False).status_code == 303
        token = re.search(r'"x-csrftoken": "([^"]+)"', client.get("/patients/new").text).group(1)
        cookies = dict(client.cookies)
    headers = {"x-csrftoken": token}

    schema = schemathesis.openapi.from_asgi("/schema/openapi.json", app).include(
        path_regex="^/(patients|studies|reports|admin)")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]
    ran: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    failures: list[str] = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # run() is called at once, within this iteration, so the loop variables it reads are current.
            @hsettings(max_examples=WEB_CASES_PER_MODE, deadline=None, database=None,
                       suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                ran[operation.label] += 1  # noqa: B023
                response = case.call(headers=headers, cookies=cookies)
                statuses[response.status_code] += 1
                if response.status_code >= 500:
                    failures.append(f"{operation.label} {mode.value}: {response.status_code} {case.path_parameters} "  # noqa: B023
                                    f"{case.query} {str(case.body)[:200]}")

            try:
                run()
            except Unsatisfiable:
                assert mode is GenerationMode.NEGATIVE, operation.label

    data = json.loads(ARTIFACT.read_text()) if ARTIFACT.exists() else {}
    data["web"] = {"cases": dict(sorted(ran.items())), "total": sum(ran.values()),
                   "statuses": {str(k): v for k, v in sorted(statuses.items())}}
    ARTIFACT.parent.mkdir(parents=True, exist_ok=True)
    ARTIFACT.write_text(json.dumps(data, indent=2) + "\n")
    assert not failures, "\n".join(failures[:20])
    assert statuses[200] > 0, statuses  # the session held: pages were served, not redirects to /login
