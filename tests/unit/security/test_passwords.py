import pytest

from cxr_fhir.security.passwords import hash_password, verify_password


def test_argon2_hash_verifies_only_the_right_password():
    h = hash_password("correct horse battery")
    assert h.startswith("$argon2id$") and "correct" not in h
    assert verify_password(h, "correct horse battery")
    assert not verify_password(h, "wrong horse battery")
    assert not verify_password("not-a-hash", "x")


def test_short_passwords_are_refused():
    with pytest.raises(ValueError):
        hash_password("short")
