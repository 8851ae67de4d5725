"""The boxes as a Grayscale Softcopy Presentation State on the untouched film."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from cxr_fhir.dicom.gsps import NOTE, presentation_state
from cxr_fhir.dicom.uids import object_uid
from support.dciodvfy import dciodvfy_errors, dciodvfy_warnings, needs_dciodvfy
from support.part10 import reread


def build(rows, source) -> pydicom.Dataset:
    return reread(presentation_state(rows.patient, rows.study, rows.analysis, rows.report, source.dataset))


@needs_dciodvfy
def test_dciodvfy_finds_no_error(rows, final_rows, source):
    for chosen in (rows, final_rows):
        ds = build(chosen, source)
        assert dciodvfy_errors(ds) == []
        assert len(dciodvfy_warnings(ds)) <= 2


def test_it_references_the_film_and_draws_each_box_in_its_pixels(rows, source):
    pr = build(rows, source)
    src = source.dataset
    assert pr.SOPClassUID == pydicom.uid.GrayscaleSoftcopyPresentationStateStorage
    assert pr.StudyInstanceUID == src.StudyInstanceUID and pr.PatientID == src.PatientID
    series = pr.ReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == src.SeriesInstanceUID
    assert series.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    annotation = pr.GraphicAnnotationSequence[0]
    assert annotation.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    outlines = [np.array(g.GraphicData, dtype=float).reshape(-1, 2) for g in annotation.GraphicObjectSequence]
    assert len(outlines) == len(rows.analysis.boxes)
    for outline, box in zip(outlines, rows.analysis.boxes, strict=True):
        x1, y1, x2, y2 = box["x1"], box["y1"], box["x2"], box["y2"]
        np.testing.assert_allclose(outline, [[x1, y1], [x2, y1], [x2, y2], [x1, y2], [x1, y1]])
    assert all(g.GraphicAnnotationUnits == "PIXEL" for g in annotation.GraphicObjectSequence)
    labels = [t.UnformattedTextValue for t in annotation.TextObjectSequence]
    assert labels[:2] == ["Pleural effusion 81%", "Pleural effusion 81%"]
    assert labels[-1] == f"{NOTE}; priority URGENT"


def test_uids_are_fixed_per_version(rows, final_rows, synthetic_source):
    first = build(rows, synthetic_source)
    assert first.SOPInstanceUID == object_uid("report-1", 1, "pr")
    assert first.SeriesInstanceUID == object_uid("report-1", 0, "pr-series")
    assert build(rows, synthetic_source) == first
    later = build(final_rows, synthetic_source)
    assert later.SeriesInstanceUID == first.SeriesInstanceUID and later.SOPInstanceUID != first.SOPInstanceUID


def test_without_boxes_only_the_note_is_shown(rows, synthetic_source):
    rows.analysis.boxes = []
    annotation = build(rows, synthetic_source).GraphicAnnotationSequence[0]
    assert "GraphicObjectSequence" not in annotation
    assert [t.UnformattedTextValue for t in annotation.TextObjectSequence] == [f"{NOTE}; priority URGENT"]
