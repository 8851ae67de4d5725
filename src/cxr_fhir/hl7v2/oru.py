"""A report version as an HL7 v2.5.1 ORU^R01 for the RIS worklist, and the ACK that answers it.

The same result the FHIR mapping and the DICOM SR carry, in v2 terms:
- OBR: the accession number (OBR-2 placer order and OBR-18, where IHE Radiology puts it), our report
  id as the filler order (OBR-3), the procedure as FHIR names it (LOINC 36554-4, so FHIR, SR and v2
  agree), the triage priority (OBR-5 and OBR-27.6: S/A/R for stat/urgent/routine), the result
  status (OBR-25) following the report.
- one OBX per reported finding (``domain.report.reported_findings``, as the SR groups): NM, the
  calibrated probability, the threshold as the reference range, "A" when at or above it.
- OBX for the triage priority, the unusual-film caution, the conclusion (TX) and the model.
Original acknowledgment mode (MSH-15/16 empty): the receiver answers AA, AE or AR.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import hl7

from ..domain.findings import BY_NAME
from ..domain.report import UNUSUAL_FILM, reported_findings
from ..records.tables import Analysis, Patient, Report, Study

SENDING_APPLICATION = "CXR-FHIR"
LOCAL_SCHEME = "99CXRFHIR"  # as the DICOM objects name our local codes
PROCEDURE = "36554-4^XR Chest Single view^LN"
IMPRESSION = "19005-8^Radiology Imaging study [Impression] (narrative)^LN"
PRIORITY = {"stat": "S", "urgent": "A", "routine": "R"}
RESULT_STATUS = {"preliminary": "P", "final": "F", "amended": "C", "cancelled": "X"}
# OBX-11 for a cancelled report: W, "post original as wrong" (HL7 table 0085), retracting what was sent.
OBX_STATUS = {"preliminary": "P", "final": "F", "amended": "C", "cancelled": "W"}
SEX = {"female": "F", "male": "M", "other": "O", "unknown": "U"}
ACK_CODES = frozenset({"AA", "AE", "AR", "CA", "CE", "CR"})
_ESCAPES = (("\\", "\\E\\"), ("|", "\\F\\"), ("^", "\\S\\"), ("&", "\\T\\"), ("~", "\\R\\"))


def escape(value: object) -> str:
    """A value as HL7 text: the delimiters escaped (the escape character first), line breaks as the
    hex escape for CR LF, so no value can break a field, component or segment. None is empty."""
    if value is None:
        return ""
    text = str(value)
    for raw, escaped in _ESCAPES:
        text = text.replace(raw, escaped)
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\\X0D0A\\")


def _ts(value: datetime | None) -> str:
    """An HL7 TS; ours are aware UTC datetimes, so the offset is written too."""
    return value.strftime("%Y%m%d%H%M%S%z") if value is not None else ""


def _segment(*fields: str) -> str:
    return "|".join(fields).rstrip("|")


def _authority(system: str | None) -> str:
    """PID-3.4 (HD): an OID system as an ISO universal id, any other URI as a URI one."""
    if not system:
        return ""
    if system.startswith("urn:oid:"):
        return f"&{escape(system[len('urn:oid:'):])}&ISO"
    return f"&{escape(system)}&URI"


def _pid(patient: Patient) -> str:
    if patient.mrn:
        identifier = f"{escape(patient.mrn)}^^^{_authority(patient.mrn_system)}^MR"
    else:  # a patient registered without an MRN: our own id, as the FHIR mapping does
        identifier = f"{escape(patient.id)}^^^{SENDING_APPLICATION}^PI"
    name = f"{escape(patient.family)}^{escape(patient.given)}"
    birth = patient.birth_date.strftime("%Y%m%d") if patient.birth_date else ""
    return _segment("PID", "1", "", identifier, "", name, "", birth, SEX.get(str(patient.sex or ""), "U"))


def _obr(study: Study, analysis: Analysis, report: Report) -> str:
    status = str(report.status)
    priority = PRIORITY.get(str(analysis.priority or "").lower(), "R")
    accession = escape(study.accession_number)
    verified = status in ("final", "amended")
    interpreter = escape(report.confirmed_by) if verified else ""
    fields = [""] * 33
    fields[0:8] = ["OBR", "1", accession, f"{escape(report.id)}^{SENDING_APPLICATION}", PROCEDURE, priority, "",
                   _ts(study.acquired_at or study.created_at)]
    fields[18] = accession
    fields[22] = _ts(report.confirmed_at if verified and report.confirmed_at else report.issued)
    fields[24] = "DX"  # diagnostic service section: plain radiography
    fields[25] = RESULT_STATUS.get(status, "P")
    fields[27] = f"^^^^^{priority}"
    fields[32] = interpreter
    return _segment(*fields)


def _obx(n: int, kind: str, code: str, value: str, status: str, *, units: str = "", ranges: str = "",
         flag: str = "", when: str = "", method: str = "") -> str:
    return _segment("OBX", str(n), kind, code, "", value, units, ranges, flag, "", "", status, "", "", when,
                    "", "", method)


def _finding_code(name: str) -> str:
    entry = BY_NAME.get(name)
    display = escape(entry.display if entry else name)
    if entry and entry.snomed:
        return f"{entry.snomed}^{display}^SCT^{escape(name)}^{display}^{LOCAL_SCHEME}"
    return f"{escape(name)}^{display}^{LOCAL_SCHEME}"


def _observations(study: Study, analysis: Analysis, report: Report) -> list[str]:
    status = OBX_STATUS.get(str(report.status), "P")
    when = _ts(study.acquired_at or study.created_at)
    model = f"{escape(analysis.model_name)} {escape(analysis.model_version)}"
    out: list[str] = []
    for f in reported_findings(analysis.top3 or [], analysis.probabilities or {}, analysis.thresholds or {}):
        out.append(_obx(len(out) + 1, "NM", _finding_code(f.finding), f"{f.probability:g}", status,
                        units="1^no units^UCUM", ranges=f"<{f.threshold:g}", flag="A" if f.present else "N",
                        when=when, method=model))
    out.append(_obx(len(out) + 1, "ST", f"priority^AI triage priority^{LOCAL_SCHEME}",
                    escape(str(analysis.priority or "").upper()), status, when=when))
    if analysis.unusual_film:
        out.append(_obx(len(out) + 1, "TX", f"unusual-film^Unusual film, read with care^{LOCAL_SCHEME}",
                        escape(UNUSUAL_FILM), status, flag="A", when=when))
    out.append(_obx(len(out) + 1, "TX", IMPRESSION, escape(report.conclusion), status, when=when))
    out.append(_obx(len(out) + 1, "ST", f"model^AI model^{LOCAL_SCHEME}",
                    f"{model} (manifest sha256 {escape(analysis.manifest_sha256)})", status, when=when))
    return out


def oru_r01(patient: Patient, study: Study, analysis: Analysis, report: Report, *, control_id: str,
            sending_facility: str, receiving_application: str, receiving_facility: str, now: datetime) -> str:
    """The ORU^R01 of one report version, segments joined by CR (MLLP framing is the sender's)."""
    msh = _segment("MSH", "^~\\&", SENDING_APPLICATION, escape(sending_facility), escape(receiving_application),
                   escape(receiving_facility), _ts(now), "", "ORU^R01^ORU_R01", escape(control_id), "P", "2.5.1",
                   "", "", "", "", "", "UNICODE UTF-8")
    return "\r".join([msh, _pid(patient), _obr(study, analysis, report), *_observations(study, analysis, report)])


@dataclass(frozen=True)
class Ack:
    code: str        # AA | AE | AR (original mode), CA | CE | CR (enhanced mode)
    control_id: str  # MSA-2: the control id of the message acknowledged
    text: str        # MSA-3, else the ERR segment's message, else ""

    @property
    def accepted(self) -> bool:
        return self.code in ("AA", "CA")


def _field(segment: hl7.Segment, n: int) -> str:
    return str(segment[n]) if len(segment) > n else ""


def parse_ack(message: str) -> Ack:
    """The acknowledgment in ``message`` (without MLLP framing). ValueError when it is not one."""
    text = (message or "").replace("\r\n", "\r").replace("\n", "\r").strip("\r\x0b\x1c")
    if not text.startswith("MSH"):
        raise ValueError("not an HL7 v2 message (no MSH segment first)")
    try:
        parsed = hl7.parse(text)
        msh, msa = parsed.segment("MSH"), parsed.segment("MSA")
    except (KeyError, IndexError, ValueError) as exc:
        raise ValueError(f"not an HL7 acknowledgment ({type(exc).__name__})") from exc
    kind = _field(msh, 9).split("^", 1)[0]
    code = _field(msa, 1)
    if kind != "ACK" or code not in ACK_CODES:
        raise ValueError(f"not an HL7 acknowledgment (message type {kind!r}, code {code!r})")
    detail = _field(msa, 3)
    if not detail:
        errors = [s for s in parsed if str(s[0]) == "ERR"]
        detail = next((_field(e, 8) or _field(e, 3) for e in errors if _field(e, 8) or _field(e, 3)), "")
    return Ack(code=code, control_id=_field(msa, 2), text=parsed.unescape(detail) if detail else "")
