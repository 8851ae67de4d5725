"""Patient identity across systems: does a DICOM header name the patient of the record it is filed
under? (PACS reconciliation: match on the identifier, flag a differing name for a person to resolve.)"""

from __future__ import annotations

import unicodedata


def _words(text: str) -> list[str]:
    folded = unicodedata.normalize("NFKD", text).casefold()
    plain = "".join(c for c in folded if not unicodedata.combining(c))
    return [w for w in "".join(c if c.isalnum() else " " for c in plain).split() if w]


def name_mismatch(dicom_name: str | None, family: str, given: str) -> str | None:
    """A warning for people when the DICOM PatientName (FAMILY^GIVEN^MIDDLE^PREFIX^SUFFIX) names
    someone else than the record; None when it agrees or says nothing. Case, accents, punctuation
    and the order of given names do not count; a missing given name in the header does not either."""
    if not dicom_name or not dicom_name.strip("^ "):
        return None
    d_family, _, d_rest = dicom_name.partition("^")
    d_given = d_rest.split("^")[:2]  # given and middle names; prefix and suffix are not compared
    same_family = _words(d_family) == _words(family)
    header_given = set(_words(" ".join(d_given)))
    same_given = not header_given or header_given <= set(_words(given))
    if same_family and same_given:
        return None
    shown = " ".join(p for p in (family, given) if p)
    return (f"the DICOM header names the patient '{dicom_name.replace('^', ' ').strip()}', "
            f"the record '{shown}': check the patient's identity")
