"""Deterministic UIDs: the same report version always names the same objects."""

from __future__ import annotations

import re

import pytest

from cxr_fhir.dicom.uids import object_uid, tracking_uid

UID = re.compile(r"^2\.25\.(0|[1-9][0-9]*)$")


def test_uids_are_valid_2_25_uids_of_at_most_64_characters():
    for kind in ("sr", "sr-series", "sc", "sc-series"):
        uid = object_uid("5b1f0a4e-2c7d-4f7e-9a51-0a2d4c1b9e77", 12, kind)
        assert UID.match(uid) and len(uid) <= 64


def test_the_same_inputs_give_the_same_uid_and_any_change_another():
    a = object_uid("r-1", 1, "sr")
    assert a == object_uid("r-1", 1, "sr")
    others = {object_uid("r-1", 2, "sr"), object_uid("r-2", 1, "sr"), object_uid("r-1", 1, "sc"),
              object_uid("r-1", 1, "sr-series")}
    assert a not in others and len(others) == 4


def test_uids_never_change_between_releases():
    # A retry after an upgrade must still name the object already in the PACS: the namespace is frozen.
    assert object_uid("report-1", 1, "sr") == "2.25.106799258352296116442124295829666938664"


def test_tracking_uid_follows_the_analysis_and_finding_only():
    assert tracking_uid("a-1", "Effusion") == tracking_uid("a-1", "Effusion")
    assert tracking_uid("a-1", "Effusion") != tracking_uid("a-1", "Mass")


@pytest.mark.parametrize("kind,version", [("gsps", 1), ("sr", -1)])
def test_unknown_kinds_and_negative_versions_are_refused(kind, version):
    with pytest.raises(ValueError):
        object_uid("r-1", version, kind)
