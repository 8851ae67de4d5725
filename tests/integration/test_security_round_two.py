"""Security fixes, second round: the public URL instead of the Host header in FHIR links, the CSRF
cookie rotated at login and logout, Secure cookies behind TLS, images never cached, scopes naming
unknown types refused, common passwords refused. On SQLite and PostgreSQL where storage is involved."""

from __future__ import annotations

import re
from contextlib import ExitStack

import pytest
from litestar.testing import TestClient

from cxr_fhir.app import create_app
from cxr_fhir.fhir.search_params import PARAMS
from cxr_fhir.security.clients import KNOWN_TYPES, ClientError, create_client, validate_scopes
from cxr_fhir.security.passwords import hash_password, password_problem, verify_password
from cxr_fhir.security.users import UserError, create_user
from cxr_fhir.settings import Settings
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine, writing
from cxr_fhir.storage.image_store import ImageStore
from support.images import png8
from support.reports import make_report

PASSWORD = "correct-horse-battery"
PUBLIC = "https://cxr.example.org"
FHIR = "application/fhir+json"


@pytest.fixture
def open_app(tmp_path, db_url):
    """open_app(https=False, **settings) -> (client, settings, engine): the app on a migrated database with a
    doctor, and an API token in client.token."""
    with ExitStack() as stack:
        def opener(https: bool = False, **overrides):
            settings = Settings(runtime_dir=tmp_path / "var", database_url=db_url, load_models=False,
                                image_store_dir=tmp_path / "images", _env_file=None, **overrides)
            engine = make_engine(db_url)
            stack.callback(engine.dispose)
            migrate.upgrade(engine, settings.migrations_dir)
            with writing(engine) as s:
                create_user(s, "dr.grey", PASSWORD, "doctor", actor="test")
                token = create_client(s, "reader", ["system/*.read"], actor="test")[1]
            base_url = "https://testserver.local" if https else "http://testserver.local"
            client = stack.enter_context(TestClient(app=create_app(settings), base_url=base_url))
            client.token = token
            return client, settings, engine
        yield opener


def _csrf(client: TestClient, path: str = "/login") -> str:
    return re.search(r'name="_csrf_token" value="([^"]+)"', client.get(path).text).group(1)


def _login(client: TestClient):
    return client.post("/login", data={"username": "dr.grey", "password": PASSWORD, "_csrf_token": _csrf(client)},
                       follow_redirects=False)


# --- 7: FHIR fullUrl and paging links from the public URL, not the Host header -------------------

def _search(client: TestClient, host: str) -> dict:
    r = client.get("/fhir/Patient?_count=1", headers={"Authorization": f"Bearer {client.token}", "Accept": FHIR,
                                                      "Host": host})
    assert r.status_code == 200, r.text
    return r.json()


def test_public_base_url_makes_fhir_links_whatever_the_host_header(open_app):
    client, settings, engine = open_app(public_base_url=PUBLIC + "/")
    images = ImageStore(settings.effective_image_store_dir)
    make_report(engine, images, queue=False)
    make_report(engine, images, queue=False)
    bundle = _search(client, "evil.example")
    links = {link["relation"]: link["url"] for link in bundle["link"]}
    assert links["self"].startswith(PUBLIC + "/fhir/Patient") and "next" in links
    assert all(url.startswith(PUBLIC + "/fhir/") for url in links.values()), links
    assert bundle["entry"] and all(e["fullUrl"].startswith(PUBLIC + "/fhir/Patient/") for e in bundle["entry"])
    assert "evil.example" not in str(bundle)


def test_without_public_base_url_links_follow_the_request_as_before(open_app):
    client, settings, engine = open_app()
    make_report(engine, ImageStore(settings.effective_image_store_dir), queue=False)
    bundle = _search(client, "cxr.internal:8000")
    assert bundle["link"][0]["url"].startswith("http://cxr.internal:8000/fhir/Patient")
    assert bundle["entry"][0]["fullUrl"].startswith("http://cxr.internal:8000/fhir/Patient/")


# --- 10a: the CSRF cookie is replaced at login and logout ---------------------------------------

def test_csrf_cookie_rotated_at_login_and_pre_login_token_refused(open_app):
    client, _, _ = open_app()
    before_token = _csrf(client)
    before_cookie = client.cookies.get("cxr_csrf")
    assert before_cookie
    r = client.post("/login", data={"username": "dr.grey", "password": PASSWORD, "_csrf_token": before_token},
                    follow_redirects=False)
    assert r.status_code == 303
    after_cookie = client.cookies.get("cxr_csrf")
    assert after_cookie and after_cookie != before_cookie
    assert "cxr_csrf=" in r.headers.get("set-cookie", "")
    # A token known before login (fixed or read by someone else) no longer passes.
    stale = client.post("/patients/new", data={"_csrf_token": before_token, "family": "Doe", "mrn": "M-1"},
                        follow_redirects=False)
    assert stale.status_code == 403
    fresh = _csrf(client, "/patients/new")
    assert fresh != before_token
    ok = client.post("/patients/new", data={"_csrf_token": fresh, "family": "Doe", "mrn": "M-1"},
                     follow_redirects=False)
    assert ok.status_code == 303
    # Logout replaces it again: the logged-in token does not outlive the session.
    out = client.post("/logout", data={"_csrf_token": _csrf(client, "/")}, follow_redirects=False)
    assert out.status_code == 303 and client.cookies.get("cxr_csrf") not in (None, after_cookie)


# --- 10b: Secure cookies when served behind TLS -----------------------------------------------

@pytest.mark.parametrize("overrides", [{"public_base_url": PUBLIC}, {"secure_cookies": True}])
def test_session_cookie_is_secure_behind_tls(open_app, overrides):
    client, settings, _ = open_app(https=True, **overrides)  # Secure cookies travel over https only
    assert settings.cookies_secure
    r = _login(client)
    assert r.status_code == 303
    cookies = r.headers.get_list("set-cookie")
    session = next(c for c in cookies if c.startswith("cxr_session="))
    assert "Secure" in session and "HttpOnly" in session
    csrf = next(c for c in cookies if c.startswith("cxr_csrf="))
    assert "Secure" in csrf


def test_session_cookie_is_not_secure_on_plain_http(open_app):
    client, settings, _ = open_app(public_base_url="http://cxr.ward.local")
    assert not settings.cookies_secure
    session = next(c for c in _login(client).headers.get_list("set-cookie") if c.startswith("cxr_session="))
    assert "Secure" not in session


# --- 10c: images are not cached --------------------------------------------------------------

def test_images_on_pages_and_fhir_binary_are_not_stored(open_app):
    client, settings, engine = open_app()
    images = ImageStore(settings.effective_image_store_dir)
    made = make_report(engine, images, queue=False)
    assert _login(client).status_code == 303
    overlay = client.get(f"/studies/{made.study_id}/overlay/Effusion")
    assert overlay.status_code == 200 and overlay.headers["content-type"] == "image/png"
    assert overlay.headers["cache-control"] == "no-store"

    digest = images.put(png8())
    raw = client.get(f"/fhir/Binary/{digest}", headers={"Authorization": f"Bearer {client.token}",
                                                       "Accept": "image/png"})
    assert raw.status_code == 200 and raw.headers["content-type"] == "image/png" and raw.content == png8()
    assert raw.headers["cache-control"] == "no-store"


# --- 10d: scopes name known resource types only ----------------------------------------------

@pytest.mark.parametrize("scope", ["system/Foo.read", "system/Patients.read", "system/CapabilityStatement.*"])
def test_scopes_naming_unknown_types_are_refused(scope):
    with pytest.raises(ClientError) as err:
        validate_scopes(["system/Patient.read", scope])
    assert err.value.where == ["scopes"] and scope in err.value.message


def test_scopes_naming_known_types_or_star_pass():
    scopes = [*(f"system/{t}.read" for t in sorted(KNOWN_TYPES)), "system/*.*", "system/Observation.write"]
    assert validate_scopes(scopes) == sorted(set(scopes))


def test_known_types_are_those_the_fhir_api_serves():
    # The security room may not import the fhir room: the list is spelled out, and kept in step here.
    assert set(KNOWN_TYPES) == {*PARAMS, "AuditEvent", "Binary", "OperationDefinition"}


def test_creating_a_client_with_an_unknown_type_stores_nothing(open_app):
    _, _, engine = open_app()
    with pytest.raises(ClientError), writing(engine) as s:
        create_client(s, "typo", ["system/Patinet.read"], actor="test")


# --- 10e: common passwords are refused (ASVS 2.1.7) ------------------------------------------

@pytest.mark.parametrize("password", ["password123", "1234567890", "qwertyuiop", "iloveyou12", "letmein123",
                                      "Password123", "aaaaaaaaaaaa", "abcdefghijkl", "0987654321", "dragon2024!"])
def test_common_passwords_are_refused_with_a_clear_message(password):
    with pytest.raises(ValueError, match="too common or too easy to guess"):
        hash_password(password)


def test_common_password_refused_for_a_new_account(open_app):
    _, _, engine = open_app()
    with pytest.raises(UserError) as err, writing(engine) as s:
        create_user(s, "dr.yang", "password123", "doctor", actor="test")
    assert err.value.where == ["password"] and "too common" in err.value.message


def test_password_containing_the_user_name_is_refused():
    assert password_problem("grey-anatomy-77", "dr.grey") == "password must not contain the user name"
    assert password_problem("grey-anatomy-77", "dr.house") is None


def test_a_strong_password_is_accepted():
    strong = "maple-orbit-kettle-41"
    assert password_problem(strong, "dr.grey") is None
    assert verify_password(hash_password(strong, username="dr.grey"), strong)
