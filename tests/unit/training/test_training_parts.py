import csv
import gzip

import numpy as np
import pytest
import torch

from cxr_fhir.training import metrics
from cxr_fhir.training.classifier import masked_bce
from cxr_fhir.training.datasets import OUTPUTS, is_validation, read_kermany, read_nih, split
from cxr_fhir.training.evaluate import average_precision, iou
from support.images import png8


def _nih_layout(root, rows):
    (root / "images").mkdir(parents=True)
    with gzip.open(root / "Data_Entry_2017_v2020.csv.gz", "wt", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["Image Index", "Finding Labels", "Follow-up #", "Patient ID"])
        for name, labels, patient in rows:
            w.writerow([name, labels, 0, patient])
            (root / "images" / name).write_bytes(png8())


def test_nih_reader_takes_any_subset_and_labels_all_14(tmp_path):
    _nih_layout(tmp_path, [("00000001_000.png", "Effusion|Mass", 1), ("00000002_000.png", "No Finding", 2)])
    (tmp_path / "images" / "99999999_000.png").write_bytes(png8())  # not in the table: ignored
    samples = read_nih(tmp_path / "images")
    assert [s.path.name for s in samples] == ["00000001_000.png", "00000002_000.png"]
    first = samples[0].labels
    assert first[OUTPUTS.index("Effusion")] == 1 and first[OUTPUTS.index("Mass")] == 1
    assert first[OUTPUTS.index("Edema")] == 0 and np.isnan(first[OUTPUTS.index("Pneumonia_pediatric")])
    assert samples[1].labels[:14].sum() == 0 and samples[0].patient == "nih:1"


def test_kermany_reader_masks_what_it_does_not_annotate(tmp_path):
    for cls, name in (("NORMAL", "IM-0115-0001.jpeg"), ("PNEUMONIA", "person12_virus_3.jpeg"),
                      ("PNEUMONIA", "person12_bacteria_9.jpeg")):
        (tmp_path / cls).mkdir(exist_ok=True)
        (tmp_path / cls / name).write_bytes(b"x")
    samples = read_kermany(tmp_path)
    assert [s.patient for s in samples] == ["kermany:IM-0115", "kermany:person12", "kermany:person12"]
    assert np.isnan(samples[0].labels[:14]).all()
    strict = read_kermany(tmp_path, normal_negative_for_all=True)
    assert (strict[0].labels[:14] == 0).all() and np.isnan(strict[1].labels[:14]).all()


def test_split_is_patient_wise_and_deterministic(tmp_path):
    from cxr_fhir.training.datasets import Sample

    samples = [Sample(tmp_path / f"{p}_{k}.png", np.zeros(len(OUTPUTS), np.float32), f"nih:{p}", "nih")
               for p in range(200) for k in range(3)]
    train, val = split(samples, 0.2, seed=7)
    assert not {s.patient for s in train} & {s.patient for s in val}
    assert 0.1 < len(val) / len(samples) < 0.3
    assert split(samples, 0.2, seed=7)[1] == val
    assert is_validation("nih:5", 0.2, 7) == is_validation("nih:5", 0.2, 7)


def test_masked_loss_ignores_unannotated_entries():
    logits = torch.tensor([[5.0, -5.0], [0.0, 0.0]])
    targets = torch.tensor([[1.0, float("nan")], [float("nan"), float("nan")]])
    loss = masked_bce(logits, targets, torch.ones(2))
    expected = torch.nn.functional.binary_cross_entropy_with_logits(torch.tensor(5.0), torch.tensor(1.0))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_auroc_bootstrap_and_operating_point():
    rng = np.random.default_rng(0)
    y = np.r_[np.zeros(200), np.ones(50)]
    p = np.r_[rng.normal(0, 1, 200), rng.normal(1.5, 1, 50)]
    a = metrics.auroc(y, p)
    lo, hi = metrics.bootstrap_auroc(y, p, n=300)
    assert 0.8 < a < 0.9 and lo < a < hi
    t = metrics.youden_threshold(y, p)
    sens, spec = metrics.sens_spec(y, p, t)
    assert sens > 0.6 and spec > 0.6
    assert metrics.auroc(np.zeros(5), np.arange(5)) is None


def test_average_precision_and_iou():
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    truths = {0: [(0, 0, 10, 10)], 1: [(20, 20, 30, 30)]}
    perfect = [(0.9, 0, (0, 0, 10, 10)), (0.8, 1, (20, 20, 30, 30))]
    assert average_precision(perfect, truths) == pytest.approx(1.0)
    half = [(0.9, 0, (50, 50, 60, 60)), (0.8, 1, (20, 20, 30, 30))]
    assert average_precision(half, truths) == pytest.approx(0.25)
    assert average_precision([], truths) == 0.0
