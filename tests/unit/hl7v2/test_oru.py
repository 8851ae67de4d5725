"""The ORU^R01 for the RIS, read back with python-hl7 (an independent parser), and ACK parsing."""

from __future__ import annotations

from datetime import UTC, date, datetime

import hl7
import pytest

from cxr_fhir.hl7v2.oru import Ack, escape, oru_r01, parse_ack
from cxr_fhir.records.tables import Analysis, Patient, Report, Study

NOW = datetime(2026, 11, 24, 10, 17, 0, tzinfo=UTC)


def rows(status: str = "preliminary", priority: str = "urgent"):
    patient = Patient(id="pat-1", mrn="MRN-77", mrn_system="urn:oid:2.16.840.1.113883.3.9999.1", family="Doe",
                      given="Jane Ann", birth_date=date(1970, 5, 1), sex="female")
    study = Study(id="study-1", patient_id="pat-1", content_sha256="a" * 64, media_type="application/dicom",
                  size_bytes=1, accession_number="ACC-42", acquired_at=datetime(2026, 11, 24, 10, 15, tzinfo=UTC))
    top3 = [{"finding": "Effusion", "probability": 0.81, "threshold": 0.42, "present": True},
            {"finding": "Cardiomegaly", "probability": 0.38, "threshold": 0.5, "present": False},
            {"finding": "Pleural_Thickening", "probability": 0.2, "threshold": 0.3, "present": False}]
    analysis = Analysis(id="an-1", study_id="study-1", model_name="cxr-densenet121", model_version="2.3.0",
                        manifest_sha256="f" * 64, top3=top3, priority=priority, unusual_film=True,
                        probabilities={"Effusion": 0.81, "Cardiomegaly": 0.38, "Pleural_Thickening": 0.2, "Mass": 0.16},
                        thresholds={"Effusion": 0.42, "Cardiomegaly": 0.5, "Pleural_Thickening": 0.3, "Mass": 0.15})
    report = Report(id="rep-1", study_id="study-1", analysis_id="an-1", status=status, conclusion="Effusion likely.",
                    issued=datetime(2026, 11, 24, 10, 16, 30, tzinfo=UTC))
    if status != "preliminary":
        report.confirmed_by, report.confirmed_at = "dr.house", datetime(2026, 11, 24, 11, 0, tzinfo=UTC)
    return patient, study, analysis, report


def message(*row, control_id: str = "CTL-1") -> hl7.Message:
    text = oru_r01(*row, control_id=control_id, sending_facility="ER", receiving_application="RIS",
                   receiving_facility="RADIOLOGY", now=NOW)
    assert "\n" not in text and text.count("\r") == len(text.split("\r")) - 1
    return hl7.parse(text)


def f(segment: hl7.Segment, n: int) -> str:
    """Field n as text; "" past the last one (trailing empty fields are not sent)."""
    return str(segment[n]) if len(segment) > n else ""


def obx(msg: hl7.Message) -> list[hl7.Segment]:
    return [s for s in msg if str(s[0]) == "OBX"]


def test_header_patient_and_order():
    msg = message(*rows())
    msh, pid, obr = msg.segment("MSH"), msg.segment("PID"), msg.segment("OBR")
    assert (str(msh[3]), str(msh[4]), str(msh[5]), str(msh[6])) == ("CXR-FHIR", "ER", "RIS", "RADIOLOGY")
    assert (str(msh[7]), str(msh[9]), str(msh[10]), str(msh[11]), str(msh[12])) == \
        ("20261124101700+0000", "ORU^R01^ORU_R01", "CTL-1", "P", "2.5.1")
    assert str(pid[3]) == "MRN-77^^^&2.16.840.1.113883.3.9999.1&ISO^MR"
    assert pid[3][0][3][1] == "2.16.840.1.113883.3.9999.1"  # the OID as a subcomponent of PID-3.4
    assert (str(pid[5]), str(pid[7]), str(pid[8])) == ("Doe^Jane Ann", "19700501", "F")
    assert (str(obr[2]), str(obr[3]), str(obr[18])) == ("ACC-42", "rep-1^CXR-FHIR", "ACC-42")
    assert str(obr[4]) == "36554-4^XR Chest Single view^LN"
    assert (str(obr[7]), str(obr[22]), str(obr[25])) == ("20261124101500+0000", "20261124101630+0000", "P")


@pytest.mark.parametrize("priority,code", [("stat", "S"), ("urgent", "A"), ("routine", "R")])
def test_priority_follows_the_triage(priority, code):
    obr = message(*rows(priority=priority)).segment("OBR")
    assert str(obr[5]) == code and str(obr[27]) == f"^^^^^{code}"


@pytest.mark.parametrize("status,obr_status,obx_status", [
    ("preliminary", "P", "P"), ("final", "F", "F"), ("amended", "C", "C"), ("cancelled", "X", "W")])
def test_result_status_follows_the_report(status, obr_status, obx_status):
    msg = message(*rows(status=status))
    assert str(msg.segment("OBR")[25]) == obr_status
    assert {str(s[11]) for s in obx(msg)} == {obx_status}
    verified = status in ("final", "amended")
    assert str(msg.segment("OBR")[22]) == ("20261124110000+0000" if verified else "20261124101630+0000")
    assert f(msg.segment("OBR"), 32) == ("dr.house" if verified else "")


def test_one_numeric_obx_per_reported_finding_flagged_at_the_threshold():
    findings = [s for s in obx(message(*rows())) if str(s[2]) == "NM"]
    # The top three and Mass (at its threshold though outside them), highest first.
    assert [(str(s[3][0][0]), str(s[5]), str(s[7]), str(s[8])) for s in findings] == [
        ("60046008", "0.81", "<0.42", "A"), ("8186001", "0.38", "<0.5", "N"),
        ("Pleural_Thickening", "0.2", "<0.3", "N"), ("309529002", "0.16", "<0.15", "A")]
    assert str(findings[0][3]) == "60046008^Pleural effusion^SCT^Effusion^Pleural effusion^99CXRFHIR"
    assert all(str(s[6]) == "1^no units^UCUM" and str(s[17]) == "cxr-densenet121 2.3.0" for s in findings)
    assert [str(s[1]) for s in obx(message(*rows()))] == [str(n) for n in range(1, len(obx(message(*rows()))) + 1)]


def test_conclusion_priority_caution_and_model_are_stated():
    by_code = {str(s[3][0][0]): s for s in obx(message(*rows()))}
    assert (str(by_code["19005-8"][2]), str(by_code["19005-8"][5])) == ("TX", "Effusion likely.")
    assert str(by_code["priority"][5]) == "URGENT"
    assert str(by_code["unusual-film"][2]) == "TX" and "Unusual film" in str(by_code["unusual-film"][5])
    assert str(by_code["model"][5]) == f"cxr-densenet121 2.3.0 (manifest sha256 {'f' * 64})"


def test_every_delimiter_in_text_is_escaped_and_comes_back_intact():
    patient, study, analysis, report = rows()
    patient.family, patient.given = "O|Brien^&Co~\\", "Ann\rMarie"
    report.conclusion = "Line one | two ^ three & four ~ five \\ six\r\nnext line"
    study.accession_number = "ACC|^&~"
    msg = message(patient, study, analysis, report, control_id="C|1")
    assert len([s for s in msg]) == 3 + len(obx(msg))
    pid, obr = msg.segment("PID"), msg.segment("OBR")
    assert msg.unescape(str(pid[5][0][0])) == "O|Brien^&Co~\\"
    assert msg.unescape(str(obr[2])) == "ACC|^&~"
    conclusion = next(s for s in obx(msg) if str(s[3][0][0]) == "19005-8")
    assert msg.unescape(str(conclusion[5])) == "Line one | two ^ three & four ~ five \\ six\r\nnext line"
    assert msg.unescape(str(msg.segment("MSH")[10])) == "C|1"


def test_missing_values_never_crash():
    patient, study, analysis, report = rows()
    patient.mrn, patient.birth_date, patient.sex, patient.given = None, None, "nonsense", ""
    study.accession_number, study.acquired_at = None, None
    analysis.top3, analysis.probabilities, analysis.thresholds, analysis.priority = [], {}, {}, None  # type: ignore
    report.conclusion = None  # type: ignore[assignment]
    msg = message(patient, study, analysis, report)
    pid, obr = msg.segment("PID"), msg.segment("OBR")
    assert str(pid[3]) == "pat-1^^^CXR-FHIR^PI" and f(pid, 8) == "U" and f(pid, 7) == ""
    assert str(obr[2]) == "" and str(obr[5]) == "R"
    assert [str(s[2]) for s in obx(msg)] == ["ST", "TX", "TX", "ST"]


def test_escape_handles_none_and_the_escape_character_first():
    assert escape(None) == ""
    assert escape("a\\F\\b") == "a\\E\\F\\E\\b"


ACK = "MSH|^~\\&|RIS|RADIOLOGY|CXR-FHIR|ER|20261124101701||ACK^R01^ACK|A-9|P|2.5.1\r"


@pytest.mark.parametrize("code", ["AA", "AE", "AR", "CA", "CE", "CR"])
def test_acks_of_every_code_are_read(code):
    ack = parse_ack(ACK + f"MSA|{code}|CTL-1|fine")
    assert ack == Ack(code=code, control_id="CTL-1", text="fine")
    assert ack.accepted is (code in ("AA", "CA"))


def test_an_error_ack_takes_its_text_from_err_unescaped():
    ack = parse_ack(ACK + "MSA|AE|CTL-1\rERR|||207^Application internal error^HL70357|E||||unknown order \\F\\ ACC-42")
    assert (ack.code, ack.text) == ("AE", "unknown order | ACC-42")


def test_newline_separated_acks_are_read_too():
    assert parse_ack((ACK + "MSA|AA|CTL-1").replace("\r", "\n")).code == "AA"


@pytest.mark.parametrize("text", [
    "", "garbage", "PID|1||x", ACK, ACK + "MSA|ZZ|CTL-1",
    "MSH|^~\\&|RIS|R|C|E|20261124||ORU^R01^ORU_R01|1|P|2.5.1\rMSA|AA|CTL-1"])
def test_anything_else_is_a_value_error(text):
    with pytest.raises(ValueError):
        parse_ack(text)
