"""The boxes as a Grayscale Softcopy Presentation State on the original film (optional in issue 13):
a viewer shows the film itself, untouched, with our boxes, their labels and an "AI result" note as
graphic annotations the reader can switch off, unlike the burned-in Secondary Capture.

Annotations are in the film's own pixel coordinates (the boxes' coordinates), on one graphic layer.
UIDs follow the SR and SC: the instance fixed per report version, the series per report.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom import Dataset

from ..domain.analysis import Box
from ..domain.findings import BY_NAME
from ..domain.report import reported_findings
from ..records.tables import Analysis, Patient, Report, Study
from . import codes as c
from .equipment import contributing_equipment, stamp
from .source import evidence_of
from .uids import object_uid

SERIES_NUMBER = 9903
LAYER = "AI_RESULT"
NOTE = "AI RESULT - NOT FOR DIAGNOSTIC USE"
RED = hd.color.CIELabColor(53.2, 80.1, 67.2)


def _box_objects(box: Box, label: str) -> tuple[hd.pr.GraphicObject, hd.pr.TextObject]:
    corners = np.array([[box.x1, box.y1], [box.x2, box.y1], [box.x2, box.y2], [box.x1, box.y2], [box.x1, box.y1]],
                       dtype=float)
    outline = hd.pr.GraphicObject(graphic_type=hd.pr.GraphicTypeValues.POLYLINE, graphic_data=corners,
                                  units=hd.pr.AnnotationUnitsValues.PIXEL)
    text = hd.pr.TextObject(text_value=label[:64], units=hd.pr.AnnotationUnitsValues.PIXEL,
                            anchor_point=(box.x1, box.y1), anchor_point_visible=False)
    return outline, text


def presentation_state(patient: Patient, study: Study, analysis: Analysis, report: Report,
                       source: Dataset) -> Dataset:
    """The GSPS of one report version, referencing ``source`` (patient and study copied from it)."""
    del patient, study
    evidence = evidence_of(source)
    findings = {f.finding: f for f in reported_findings(analysis.top3, analysis.probabilities, analysis.thresholds)}
    graphics: list[hd.pr.GraphicObject] = []
    texts: list[hd.pr.TextObject] = []
    for box in (Box.from_dict(b) for b in analysis.boxes):
        scored = findings.get(box.finding)
        name = BY_NAME[box.finding].display if box.finding in BY_NAME else box.finding
        outline, label = _box_objects(box, f"{name} {scored.probability:.0%}" if scored else name)
        graphics.append(outline)
        texts.append(label)
    # The note sits in display coordinates (0..1), top left, whatever the viewer's zoom.
    texts.append(hd.pr.TextObject(text_value=f"{NOTE}; priority {str(analysis.priority or '').upper()}",
                                  units=hd.pr.AnnotationUnitsValues.DISPLAY, bounding_box=(0.01, 0.01, 0.7, 0.06),
                                  text_justification=hd.pr.TextJustificationValues.LEFT))
    layer = hd.pr.GraphicLayer(layer_name=LAYER, order=1, description="cxr-fhir AI result", display_color=RED)
    annotation = hd.pr.GraphicAnnotation(referenced_images=[evidence], graphic_layer=layer,
                                         graphic_objects=graphics or None, text_objects=texts)
    pr = hd.pr.GrayscaleSoftcopyPresentationState(
        referenced_images=[evidence], series_instance_uid=object_uid(report.id, 0, "pr-series"),
        series_number=SERIES_NUMBER, sop_instance_uid=object_uid(report.id, report.version_id, "pr"),
        instance_number=report.version_id, manufacturer=c.MANUFACTURER, manufacturer_model_name="cxr-fhir",
        software_versions=c.SOFTWARE_VERSION, device_serial_number=analysis.manifest_sha256[:64],
        content_label=LAYER, content_description=f"AI result, {analysis.model_name} {analysis.model_version}"[:64],
        graphic_annotations=[annotation], graphic_layers=[layer], institution_name=evidence.get("InstitutionName"),
        contributing_equipment=[contributing_equipment(analysis)],
        series_description="AI result boxes (cxr-fhir) - NOT FOR DIAGNOSTIC USE")
    stamp(pr, report.confirmed_at or report.issued)
    pr.PresentationCreationDate, pr.PresentationCreationTime = pr.InstanceCreationDate, pr.InstanceCreationTime
    pr.BodyPartExamined = "CHEST"  # tells a validator why Laterality (paired body parts only) is absent
    return pr
