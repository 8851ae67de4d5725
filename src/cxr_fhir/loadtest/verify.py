"""The proof, from what the FHIR API returns: every accepted upload is found once, complete and
intact; nothing is found that no accepted upload made."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from .model import Upload

# Patient id -> resource type -> the resources a search by that patient returned.
Found = dict[str, dict[str, list[dict[str, Any]]]]
SEARCHED = ("ImagingStudy", "Media", "DiagnosticReport", "Observation")
KINDS = ("lost", "duplicated", "orphaned", "foreign", "corrupted", "incomplete", "count_mismatch_patients")


class Tally:
    """The count of each kind of problem, and the problems in the order they were found."""

    def __init__(self) -> None:
        self.figures: dict[str, Any] = dict.fromkeys(KINDS, 0)
        self.problems: list[str] = []

    def add(self, kind: str, problem: str) -> None:
        self.figures[kind] += 1
        self.problems.append(problem)


def check(found: Found, uploads: list[Upload], stored_sha: Callable[[Upload], str | None],
          workers: int) -> dict[str, Any]:
    """The figures of the proof; ``stored_sha`` hashes what the server returns for an upload's Binary."""
    accepted = [u for u in uploads if u.accepted]
    tally = Tally()
    media_by_study = check_studies(found, uploads, accepted, tally)
    to_hash = check_accepted(found, accepted, media_by_study, tally)
    intact = check_bytes(to_hash, stored_sha, workers, tally)
    figures = tally.figures
    figures["verified_intact"] = intact
    figures["studies_found"] = sum(len(res["ImagingStudy"]) for res in found.values())
    figures["problems"] = tally.problems[:50]
    return figures


def check_studies(found: Found, uploads: list[Upload], accepted: list[Upload],
                  tally: Tally) -> dict[str, dict[str, Any]]:
    """Each patient has as many studies as uploads were accepted for them, and a study nobody was
    told about is named: a duplicate, an orphan (its upload saw a failure) or foreign to the run.
    Returns the Media found, by study id."""
    by_sha = {u.sha256: u for u in uploads}
    expected_per_patient = Counter(u.patient_id for u in accepted)
    media_by_study: dict[str, dict[str, Any]] = {}
    for pid, res in found.items():
        studies = {s["id"] for s in res["ImagingStudy"]}
        media_by_study.update({m["id"]: m for m in res["Media"]})
        if len(res["ImagingStudy"]) != expected_per_patient[pid]:
            tally.add("count_mismatch_patients", f"Patient/{pid}: {len(res['ImagingStudy'])} studies found, "
                                                 f"{expected_per_patient[pid]} uploads accepted")
        expected = {u.study_id for u in accepted if u.patient_id == pid}
        for sid in sorted(studies - expected):  # a study nobody was told about
            sha = media_by_study.get(sid, {}).get("content", {}).get("url", "").removeprefix("Binary/")
            owner = by_sha.get(sha)
            if owner is not None and owner.status == 200:
                tally.add("duplicated", f"ImagingStudy/{sid}: a second study for upload {owner.seq} "
                                        f"(accepted as ImagingStudy/{owner.study_id})")
            elif owner is not None:
                tally.add("orphaned", f"ImagingStudy/{sid}: stored for upload {owner.seq}, which the client saw "
                                      f"fail ({owner.error})")
            else:
                tally.add("foreign", f"ImagingStudy/{sid}: not from this run")
    return media_by_study


def check_accepted(found: Found, accepted: list[Upload], media_by_study: dict[str, dict[str, Any]],
                   tally: Tally) -> list[Upload]:
    """Each accepted upload's study is found, with its one report and three results, and its Media
    names the bytes that were sent. Returns the uploads whose stored bytes are to be hashed."""
    reports = {pid: res["DiagnosticReport"] for pid, res in found.items()}
    observations = {o["id"]: o for res in found.values() for o in res["Observation"]}
    to_hash: list[Upload] = []
    for u in accepted:
        if u.study_id not in {s["id"] for s in found[u.patient_id]["ImagingStudy"]}:
            tally.add("lost", f"upload {u.seq}: ImagingStudy/{u.study_id} was accepted but is not found")
            continue
        study_ref = f"ImagingStudy/{u.study_id}"
        drs = [d for d in reports[u.patient_id]
               if study_ref in [x.get("reference") for x in d.get("imagingStudy", [])]]
        result_ids = [r["reference"].removeprefix("Observation/") for r in drs[0].get("result", [])] if drs else []
        if not _complete(u, drs, result_ids, observations):
            tally.add("incomplete", f"upload {u.seq}: {study_ref} has {len(drs)} DiagnosticReport(s) and "
                                    f"{len(result_ids)} result Observation(s), expected 1 and 3 referencing it")
        media = media_by_study.get(u.study_id or "")  # accepted: it has one
        url = (media or {}).get("content", {}).get("url", "")
        if media is None or url != f"Binary/{u.sha256}" \
                or media.get("partOf", [{}])[0].get("reference") != study_ref:
            tally.add("corrupted", f"upload {u.seq}: Media for {study_ref} points at {url or 'nothing'}, "
                                   f"expected Binary/{u.sha256}")
            continue
        to_hash.append(u)
    return to_hash


def _complete(u: Upload, drs: list[dict[str, Any]], result_ids: list[str],
              observations: dict[str, dict[str, Any]]) -> bool:
    """One report, the one the upload was answered with, whose three results are the upload's
    Observations, each part of the study and about the upload's patient."""
    study_ref = f"ImagingStudy/{u.study_id}"
    return (len(drs) == 1 and drs[0]["id"] == u.report_id and len(result_ids) == 3
            and sorted(result_ids) == sorted(u.observation_ids)
            and all(rid in observations
                    and study_ref in [x.get("reference") for x in observations[rid].get("partOf", [])]
                    and observations[rid].get("subject", {}).get("reference") == f"Patient/{u.patient_id}"
                    for rid in result_ids))


def check_bytes(to_hash: list[Upload], stored_sha: Callable[[Upload], str | None], workers: int,
                tally: Tally) -> int:
    """The stored bytes of each upload hash to what was sent; returns how many do."""
    intact = 0
    with ThreadPoolExecutor(workers) as pool:
        for u, sha in zip(to_hash, pool.map(stored_sha, to_hash), strict=True):
            if sha == u.sha256:
                intact += 1
                continue
            tally.add("corrupted", f"upload {u.seq}: stored bytes hash to {sha or '(not readable)'}, sent {u.sha256}")
    return intact
