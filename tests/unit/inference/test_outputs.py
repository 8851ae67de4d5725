import numpy as np

from cxr_fhir.domain.findings import FINDING_NAMES
from cxr_fhir.inference.outputs import calibrate, report_probabilities

OUTPUTS = list(FINDING_NAMES) + ["Pneumonia_pediatric", "pediatric_domain"]
MIX = {"Pneumonia": ["pediatric_domain", "Pneumonia_pediatric"]}


def test_platt_identity_and_shift():
    logits = np.array([[0.0, 2.0]])
    np.testing.assert_allclose(calibrate(logits, [[1, 0], [1, 0]]), [[0.5, 1 / (1 + np.exp(-2))]], rtol=1e-6)
    np.testing.assert_allclose(calibrate(logits, [[1, 1], [0.5, 0]]), [[1 / (1 + np.exp(-1)), 1 / (1 + np.exp(-1))]],
                               rtol=1e-6)


def test_pneumonia_follows_the_pediatric_gate():
    p = np.full((2, len(OUTPUTS)), 0.1, dtype=np.float32)
    p[:, OUTPUTS.index("Pneumonia")] = 0.2
    p[:, OUTPUTS.index("Pneumonia_pediatric")] = 0.9
    p[0, OUTPUTS.index("pediatric_domain")] = 1.0   # a child's film: the pediatric output speaks
    p[1, OUTPUTS.index("pediatric_domain")] = 0.0   # an adult's film: the NIH output speaks
    out = report_probabilities(p, OUTPUTS, MIX)
    assert set(out) == set(FINDING_NAMES)
    np.testing.assert_allclose(out["Pneumonia"], [0.9, 0.2], rtol=1e-6)
    np.testing.assert_allclose(out["Effusion"], [0.1, 0.1], rtol=1e-6)
