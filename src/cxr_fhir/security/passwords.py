"""Password hashing with argon2id, and the rules a new password must pass (OWASP ASVS 2.1).

A new password needs ``MIN_LENGTH`` characters and must not be easy to guess (ASVS 2.1.7): not one
of the most common passwords (:mod:`.common_passwords`), nor one of them with digits or symbols
around it ("letmein123"), nor one character or a short group repeated ("aaaaaaaaaa", "abcabcabca"),
nor a run of the alphabet, the digits or a keyboard row ("1234567890", "qwertyuiop"), nor the
user's own name inside it when the caller says which user it is for.
"""

from __future__ import annotations

import re

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from .common_passwords import COMMON_PASSWORDS

_hasher = PasswordHasher()

MIN_LENGTH = 10
TOO_COMMON = "password is too common or too easy to guess: choose a few unrelated words instead"
# Runs that people type as a password, forwards and backwards.
_RUNS = ("01234567890123456789012345678901234567890", "abcdefghijklmnopqrstuvwxyzabcdefghijklmnopqrstuvwxyz",
         "qwertyuiopasdfghjklzxcvbnm", "qwertyuiop", "asdfghjkl", "zxcvbnm", "1qaz2wsx3edc4rfv5tgb6yhn7ujm8ik9ol0p",
         "qazwsxedcrfvtgbyhnujmikolp")
_AROUND = re.compile(r"^[\W\d_]*(.*?)[\W\d_]*$")
_NAME_PARTS = re.compile(r"[^a-z0-9]+")


def password_problem(password: str, username: str | None = None) -> str | None:
    """Why ``password`` may not be used (for ``username``, if given), or None when it may."""
    if len(password) < MIN_LENGTH:
        return f"password must have at least {MIN_LENGTH} characters"
    low = password.lower()
    core = _AROUND.fullmatch(low)
    if low in COMMON_PASSWORDS or (core is not None and core.group(1) in COMMON_PASSWORDS):
        return TOO_COMMON
    if any(low == low[:n] * (len(low) // n) + low[:len(low) % n] for n in range(1, 5)):
        return TOO_COMMON  # one character, or a group of up to 4, repeated
    if any(low in run or low in run[::-1] for run in _RUNS):
        return TOO_COMMON
    if username:
        name = username.lower()
        parts = [p for p in (name, *_NAME_PARTS.split(name)) if len(p) >= 4]
        if any(p in low for p in parts):
            return "password must not contain the user name"
    return None


def hash_password(password: str, *, username: str | None = None) -> str:
    """The argon2id hash of a new password; ValueError (with the reason) when it may not be used."""
    problem = password_problem(password, username)
    if problem is not None:
        raise ValueError(problem)
    return _hasher.hash(password)


def verify_password(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False
