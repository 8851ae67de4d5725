"""The plausibility gate never refuses a real chest film, refuses what is clearly not one, and an
unusual real film is analysed and flagged on the page, in the report and in FHIR (issue #16)."""

from __future__ import annotations

import io
import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr_fhir.fhir import mapping
from cxr_fhir.imaging import ImageRejected, load, load_path
from cxr_fhir.inference.pipeline import Pipeline
from cxr_fhir.records.tables import Patient
from cxr_fhir.services.analysis import AnalysisService
from cxr_fhir.settings import PROJECT_ROOT
from cxr_fhir.storage import migrate
from cxr_fhir.storage.db import make_engine, writing
from cxr_fhir.storage.image_store import ImageStore
from cxr_fhir.storage.repositories import PatientRepository
from cxr_fhir.training.gate import document_negatives, skimage_negatives
from support.fhir_validator import validate

# (folder under ../shared/data, file pattern, the loader's min_side: the 64 px NIH set needs 32)
REAL_SETS = (("nih/images", "*.png", 128), ("nih/originals", "*.png", 128), ("nih64/images", "*.png", 32),
             ("kermany/train", "*.jpeg", 128))


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory) -> Pipeline:
    return Pipeline(PROJECT_ROOT / "weights", tmp_path_factory.mktemp("rt"), threads=2)


def _real_films(shared_data: Path) -> list[tuple[Path, int]]:
    return [(p, side) for folder, pattern, side in REAL_SETS for p in sorted((shared_data / folder).rglob(pattern))]


@pytest.mark.slow
def test_every_real_film_passes_the_gate(pipeline, shared_data):
    films = _real_films(shared_data)
    assert len(films) > 6000, f"expected the whole of ../shared/data, found {len(films)} films"
    refused, unusual = [], 0
    for path, side in films:
        try:
            unusual += pipeline.check_plausible(load_path(path, min_side=side)).unusual
        except ImageRejected as exc:
            refused.append(f"{path.relative_to(shared_data)}: {exc.reason}")
    print(f"gate on {len(films)} real films: refused {len(refused)}, flagged unusual {unusual}")
    assert refused == []
    assert unusual < 0.05 * len(films)  # the flag marks the odd film out, not a tenth of the department


def test_clearly_non_chest_images_are_refused(pipeline):
    """Photographs, textures, drawings and documents, as they would be uploaded."""
    negatives = [n for n in skimage_negatives() + document_negatives() if "/" not in n.name]
    assert len(negatives) >= 20
    passed = []
    for neg in negatives:
        assert neg.data is not None
        try:
            pipeline.check_plausible(load(neg.data))
        except ImageRejected as exc:
            assert exc.code in {"not-a-chest-radiograph", "colour-photograph"}, (neg.name, exc.code)
            continue
        passed.append(neg.name)
    print(f"negatives refused: {len(negatives) - len(passed)} of {len(negatives)}; passed: {passed}")
    # Documents, textures and drawings are refused. Some greyscale photographs (camera, clock, the
    # colour samples turned grey; in colour the loader refuses them) pass as "unusual": measured in
    # weights/MODEL_CARD.md, a known limit of a gate built never to refuse a real film.
    assert not [n for n in passed if n.startswith("document:")]
    assert len(negatives) - len(passed) >= 0.7 * len(negatives), passed


def _unusual_film(pipeline, shared_data: Path) -> bytes:
    """The first NIH film the gate flags (the portable AP films with lines and borders are among them)."""
    for path in sorted((shared_data / "nih" / "images").glob("*.png")):
        if pipeline.check_plausible(load_path(path)).unusual:
            return path.read_bytes()
    pytest.skip("no real film is flagged unusual by this gate")


def test_an_unusual_real_film_is_analysed_and_flagged_everywhere(pipeline, shared_data, tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'db.sqlite'}")
    migrate.upgrade(engine, PROJECT_ROOT / "migrations")
    images = ImageStore(tmp_path / "img")
    with writing(engine) as s:
        p = PatientRepository(s).create(Patient(mrn="MRN-16", mrn_system="urn:oid:1.2", family="Odd",
                                                given="Film", birth_date=date(1950, 1, 2)), actor="t")
    service = AnalysisService(engine, images, pipeline, destinations=(), max_image_pixels=80_000_000)
    up = service.upload(p.id, _unusual_film(pipeline, shared_data), "portable.png", actor="dr.a")
    assert up.analysis is not None and up.report is not None
    assert up.analysis.unusual_film is True and up.analysis.plausibility is not None
    assert up.report.conclusion.startswith("Unusual film, read with care")
    obs = mapping.observations(up.analysis, up.study, up.report)
    assert all(o.interpretation and o.interpretation[0].coding[0].code == "unusual-film" for o in obs)
    assert all(o.note and "read with care" in o.note[0].text for o in obs)
    report = mapping.diagnostic_report(up.report, up.analysis, up.study, obs)
    assert "Unusual film, read with care" in report.conclusion
    wire = [mapping.to_wire(r) for r in [*obs, report]]
    results = validate(wire)
    assert [r["issues"] for r in results] == [[]] * len(wire), json.dumps(results, indent=1)


def test_the_result_page_shows_the_flag():
    from jinja2 import Environment, FileSystemLoader

    env = Environment(loader=FileSystemLoader(PROJECT_ROOT / "templates"), autoescape=True)
    source = env.loader.get_source(env, "result.html")[0]  # type: ignore[union-attr]
    assert "a.unusual_film" in source and "Unusual film — read with care" in source
    card = env.loader.get_source(env, "partials/study_card.html")[0]  # type: ignore[union-attr]
    assert "unusual_film" in card


def test_a_typical_film_is_not_flagged(pipeline, shared_data):
    path = sorted((shared_data / "nih" / "originals").glob("*.png"))[0]
    verdict = pipeline.check_plausible(load_path(path))
    assert verdict.unusual is False and verdict.score > pipeline.gate.unusual_below


def test_border_padding_flags_rather_than_refuses(pipeline, shared_data):
    """A small child's film in wide white borders: analysed (maybe flagged), never refused."""
    path = sorted((shared_data / "kermany" / "train" / "NORMAL").glob("*.jpeg"))[0]
    px = np.asarray(Image.open(path).convert("L"))
    padded = np.pad(px, ((px.shape[0] // 3,) * 2, (px.shape[1] // 3,) * 2), constant_values=255)
    buf = io.BytesIO()
    Image.fromarray(padded).save(buf, format="PNG")
    pipeline.check_plausible(load(buf.getvalue()))
