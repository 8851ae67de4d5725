from cxr_fhir.domain.report import DISCLAIMER, conclusion


def test_present_findings_and_priority_in_plain_words():
    top3 = [{"finding": "Effusion", "probability": 0.62, "present": True},
            {"finding": "Edema", "probability": 0.31, "present": True},
            {"finding": "Mass", "probability": 0.05, "present": False}]
    text = conclusion(top3, "urgent", ["pleural effusion", "pulmonary edema"])
    assert text.startswith("Suggestive of: Pleural effusion (probability 62%); Pulmonary edema (probability 31%).")
    assert "Triage priority: URGENT (pleural effusion, pulmonary edema)." in text and text.endswith(DISCLAIMER)
    assert "Mass" not in text


def test_nothing_present_names_the_most_likely():
    top3 = [{"finding": "Nodule", "probability": 0.04, "present": False}]
    text = conclusion(top3, "routine", [])
    assert text.startswith("No finding reaches its operating threshold; most likely lung nodule (4%).")
    assert "Triage priority: ROUTINE." in text
