from cxr_fhir.domain.findings import BY_NAME, FINDING_NAMES, canonical
from cxr_fhir.domain.triage import triage

THRESHOLDS = {name: 0.3 for name in FINDING_NAMES}


def probs(**kw):
    base = {name: 0.05 for name in FINDING_NAMES}
    base.update(kw)
    return base


def test_nothing_present_is_routine():
    t = triage(probs(), THRESHOLDS, [], 1e6)
    assert t.priority == "routine" and t.reasons == []


def test_pneumothorax_is_stat_edema_urgent():
    assert triage(probs(Pneumothorax=0.4), THRESHOLDS, [], 1e6).priority == "stat"
    t = triage(probs(Edema=0.5, Consolidation=0.6), THRESHOLDS, [], 1e6)
    assert t.priority == "urgent" and set(t.reasons) == {"pulmonary edema", "consolidation"}


def test_large_effusion_by_box_area_raises_to_stat():
    small = [{"finding": "Effusion", "x1": 0, "y1": 0, "x2": 100, "y2": 100}]
    large = [{"finding": "Effusion", "x1": 0, "y1": 0, "x2": 500, "y2": 400}]
    assert triage(probs(Effusion=0.5), THRESHOLDS, small, 1000 * 1000).priority == "urgent"
    t = triage(probs(Effusion=0.5), THRESHOLDS, large, 1000 * 1000)
    assert t.priority == "stat" and t.reasons == ["large pleural effusion"]


def test_below_threshold_does_not_count():
    assert triage(probs(Pneumothorax=0.29), THRESHOLDS, [], 1e6).priority == "routine"


def test_catalogue_codes_and_aliases():
    assert len(FINDING_NAMES) == 14 and BY_NAME["Pneumothorax"].snomed == "36118008"
    assert BY_NAME["Pleural_Thickening"].snomed is None
    assert canonical("Pleural Thickening") == "Pleural_Thickening" and canonical("Infiltrate") == "Infiltration"
    assert canonical("Fracture") is None
