"""The Secondary Capture of the overlay: valid for dciodvfy, in a new series of the film's study,
fixed UIDs, at most 1024 px a side, and the banner, boxes and findings really burned into the pixels."""

from __future__ import annotations

import io

import numpy as np
import pydicom
import pytest

from cxr_fhir.dicom.capture import secondary_capture
from cxr_fhir.dicom.overlay import BANNER_BG, BOX_PRESENT
from cxr_fhir.dicom.uids import object_uid
from cxr_fhir.imaging import ImageRejected, load
from support.dciodvfy import dciodvfy_errors, dciodvfy_warnings, needs_dciodvfy
from support.part10 import reread


def build(rows, source) -> pydicom.Dataset:
    return secondary_capture(rows.patient, rows.study, rows.analysis, rows.report, source.dataset, source.image)


@needs_dciodvfy
def test_dciodvfy_finds_no_error(rows, final_rows, source):
    for chosen in (rows, final_rows):
        ds = build(chosen, source)
        assert dciodvfy_errors(ds) == []
        assert len(dciodvfy_warnings(ds)) <= 3


def test_a_new_series_in_the_films_study_with_fixed_uids(rows, final_rows, source):
    sc = reread(build(rows, source))
    src = source.dataset
    assert sc.SOPClassUID == pydicom.uid.SecondaryCaptureImageStorage
    assert sc.StudyInstanceUID == src.StudyInstanceUID and sc.SeriesInstanceUID != src.SeriesInstanceUID
    assert sc.SOPInstanceUID == object_uid("report-1", 1, "sc")
    assert sc.SeriesInstanceUID == object_uid("report-1", 0, "sc-series")
    for keyword in ("PatientID", "PatientName", "PatientBirthDate", "PatientSex", "AccessionNumber"):
        assert sc[keyword].value == src[keyword].value, keyword
    assert (sc.BurnedInAnnotation, sc.ConversionType) == ("YES", "WSD")
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    later = build(final_rows, source)
    assert later.SeriesInstanceUID == sc.SeriesInstanceUID and later.SOPInstanceUID == object_uid("report-1", 2, "sc")


def test_a_rebuild_is_the_same_bytes(rows, synthetic_source):
    a, b = io.BytesIO(), io.BytesIO()
    build(rows, synthetic_source).save_as(a, enforce_file_format=True)
    build(rows, synthetic_source).save_as(b, enforce_file_format=True)
    assert a.getvalue() == b.getvalue()


def test_orientation_is_the_films_or_left_empty(rows, source):
    sc = build(rows, source)
    expected = list(source.dataset.get("PatientOrientation") or [])
    assert list(sc.PatientOrientation or []) == expected  # never invented


def test_the_banner_boxes_and_findings_are_burned_in(rows, source):
    sc = reread(build(rows, source))
    assert (sc.PhotometricInterpretation, sc.SamplesPerPixel, sc.BitsAllocated) == ("RGB", 3, 8)
    px = sc.pixel_array
    film_w = source.image.width
    assert px.shape[1] == min(film_w, 1024)
    # Above the film: the banner. A grey film has R == G == B everywhere; the banner is red with white text.
    banner = px[: px.shape[0] // 20]
    red = np.all(banner == BANNER_BG, axis=-1).mean()
    white = np.all(banner >= 240, axis=-1).mean()
    assert red > 0.5 and white > 0.005
    # The film itself is in the middle, grey, and differs from the banner region pixel for pixel.
    middle = px[px.shape[0] // 2]
    assert np.mean(middle[:, 0] == middle[:, 1]) > 0.9
    # The Effusion box edge (present: drawn in the "present" colour) is on the film.
    assert np.all(px == BOX_PRESENT, axis=-1).sum() > 100
    # Below the film: the findings lines, in white or red on black.
    footer = px[-px.shape[0] // 20:]
    assert np.all(footer == 0, axis=-1).mean() > 0.5 and np.any(footer > 200)


def test_a_large_film_is_scaled_so_the_longest_side_is_at_most_1024(rows, synthetic_source):
    big = np.kron(synthetic_source.image.pixels, np.ones((4, 3), dtype=np.float32))  # 2560 x 1920
    synthetic_source.image.pixels = big
    rows.analysis.boxes = [dict(b, x1=b["x1"] * 3, x2=b["x2"] * 3, y1=b["y1"] * 4, y2=b["y2"] * 4)
                           for b in rows.analysis.boxes]
    sc = build(rows, synthetic_source)
    assert 900 <= max(sc.Rows, sc.Columns) <= 1024
    assert np.all(sc.pixel_array == BOX_PRESENT, axis=-1).sum() > 100


def test_the_film_decoded_again_from_the_sc_is_a_valid_image(rows, synthetic_source):
    # What a viewer (or our own loader) reads back: a decodable image of the right size.
    buf = io.BytesIO()
    build(rows, synthetic_source).save_as(buf, enforce_file_format=True)
    ds = pydicom.dcmread(io.BytesIO(buf.getvalue()))
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns, 3)
    with pytest.raises(ImageRejected) as refused:  # routed back to us, the SC is never analysed as a film
        load(buf.getvalue())
    assert refused.value.code == "not-a-chest-radiograph"
