"""IU X-ray reader and MeSH labels (cxrpipe.data.iuxray). Synthetic XML is written here (the real
collection is CC BY-NC-ND and never copied into the repo); the real 3,955 reports are read from
../shared/data."""

from __future__ import annotations

import io
import math
import tarfile

import pytest

from cxrpipe.data.iuxray import (
    MESH_EXTRA,
    MESH_TO_CHEXPERT,
    IUReportError,
    iter_iu_reports,
    mesh_to_chexpert,
    parse_iu_xml,
)
from cxrpipe.data.reports import clean_report, summarise
from cxrpipe.labels import CHEXPERT_LABELS

# Measured on ../shared/data/iu-xray/NLMCXR_reports.tgz: 28 reports have no text in any section.
IU_N_REPORTS = 3955
IU_N_EMPTY = 28


def _xml(uid: str | None, sections: dict[str, str | None], major=(), automatic=(), images=()) -> str:
    abstract = "".join(
        f'<AbstractText Label="{k}">{v}</AbstractText>' if v is not None else f'<AbstractText Label="{k}"/>'
        for k, v in sections.items()
    )
    mesh = "".join(f"<major>{m}</major>" for m in major) + "".join(f"<automatic>{a}</automatic>" for a in automatic)
    imgs = "".join(f'<parentImage id="{i}"><figureId>F1</figureId></parentImage>' for i in images)
    uid_el = f'<uId id="{uid}"/>' if uid else ""
    return (
        f'<?xml version="1.0" encoding="utf-8"?><eCitation><meta type="rr"/>{uid_el}<MedlineCitation><Article>'
        f"<Abstract>{abstract}</Abstract></Article></MedlineCitation><MeSH>{mesh}</MeSH>{imgs}</eCitation>"
    )


XML_A = _xml(
    "CXR7",
    {"COMPARISON": "None.", "INDICATION": "XXXX-year-old with cough", "FINDINGS": "Heart size normal.   Small\n"
     "right XXXX XXXX effusion.", "IMPRESSION": "Small right effusion."},
    major=("Pleural Effusion/right/small", "Cardiomegaly/borderline"),
    automatic=("pleural effusion",),
    images=("CXR7_1_IM-0001-1001", "CXR7_1_IM-0001-2001"),
)


def test_parse_one_report():
    r = parse_iu_xml(XML_A, "ecgen-radiology/7.xml")
    assert r.uid == "CXR7"
    assert r.sections == {
        "comparison": "None.", "indication": "XXXX-year-old with cough",
        "findings": "Heart size normal. Small right XXXX XXXX effusion.", "impression": "Small right effusion.",
    }
    assert r.mesh_major == ("Pleural Effusion/right/small", "Cardiomegaly/borderline")
    assert r.mesh_automatic == ("pleural effusion",)
    assert r.image_ids == ("CXR7_1_IM-0001-1001", "CXR7_1_IM-0001-2001")
    lab = dict(zip(CHEXPERT_LABELS, r.labels))
    assert lab["Pleural Effusion"] == 1.0 and lab["Cardiomegaly"] == -1.0 and math.isnan(lab["No Finding"])


def test_iu_report_cleans_like_mimic():
    r = parse_iu_xml(XML_A)
    c = clean_report(r.as_mimic_text())
    assert c.used == ("findings", "impression")
    assert c.text == "Findings: Heart size normal. Small right ___ effusion. Impression: Small right effusion."
    assert c.sections["indication"] == "___-year-old with cough"
    assert list(c.sections) == ["comparison", "indication", "findings", "impression"]


def test_empty_sections_dropped_and_uid_fallback():
    r = parse_iu_xml(_xml(None, {"COMPARISON": None, "FINDINGS": "  ", "IMPRESSION": "Normal chest."}), "x/12.xml")
    assert r.uid == "12" and r.sections == {"impression": "Normal chest."}
    assert r.mesh_major == () and r.image_ids == ()
    empty = parse_iu_xml(_xml("CXR3", {"FINDINGS": None, "IMPRESSION": None}, major=("normal",)))
    assert empty.sections == {} and clean_report(empty.as_mimic_text()).empty


def test_malformed_xml():
    with pytest.raises(IUReportError, match="bad.xml"):
        parse_iu_xml("<eCitation><AbstractText>", "bad.xml")
    with pytest.raises(IUReportError, match="expected <eCitation>"):
        parse_iu_xml("<html/>", "page.xml")


def test_iter_folder_and_tgz_in_natural_order(tmp_path):
    folder = tmp_path / "ecgen-radiology"
    folder.mkdir()
    for n in (10, 2, 1):
        (folder / f"{n}.xml").write_text(_xml(f"CXR{n}", {"FINDINGS": f"Report {n}."}))
    (folder / "3.xml").write_text("<eCitation>")  # truncated
    tgz = tmp_path / "reports.tgz"
    with tarfile.open(tgz, "w:gz") as tar:
        tar.add(folder, arcname="ecgen-radiology")
        info = tarfile.TarInfo("ecgen-radiology/readme.txt")
        tar.addfile(info, io.BytesIO(b""))  # not an XML: ignored

    for source in (tmp_path, tgz):
        rejects: list[tuple[str, str]] = []
        uids = [r.uid for r in iter_iu_reports(source, rejects=rejects)]
        assert uids == ["CXR1", "CXR2", "CXR10"]
        assert [name for name, _ in rejects] == ["ecgen-radiology/3.xml"]
        with pytest.raises(IUReportError, match="3.xml"):
            list(iter_iu_reports(source))
    with pytest.raises(FileNotFoundError):
        list(iter_iu_reports(tmp_path / "missing.tgz"))


# --------------------------------------------------------------------------------------- MeSH labels
def _labels(*mesh: str) -> dict[str, float]:
    return dict(zip(CHEXPERT_LABELS, mesh_to_chexpert(mesh)))


def _positives(labels: dict[str, float]) -> dict[str, float]:
    return {k: v for k, v in labels.items() if not math.isnan(v)}


def test_mesh_table_maps_to_chexpert_names():
    assert set(MESH_TO_CHEXPERT.values()) | set(MESH_EXTRA.values()) <= set(CHEXPERT_LABELS)
    assert set(CHEXPERT_LABELS) - set(MESH_TO_CHEXPERT.values()) == {"No Finding"}  # derived, not mapped


def test_mesh_to_chexpert_cases():
    assert _positives(_labels("normal")) == {"No Finding": 1.0}
    assert _positives(_labels("Opacity/lung/base/left", "Cardiomegaly/mild")) == {
        "Lung Opacity": 1.0, "Cardiomegaly": 1.0,
    }
    assert _positives(_labels("Opacity/retrocardiac")) == {"No Finding": 1.0}  # qualifier required
    assert _positives(_labels("Cardiac Shadow/enlarged/mild")) == {"Cardiomegaly": 1.0}
    assert _positives(_labels("Cardiomegaly/borderline")) == {"Cardiomegaly": -1.0}
    assert _positives(_labels("Cardiomegaly/borderline", "Cardiomegaly")) == {"Cardiomegaly": 1.0}
    assert _positives(_labels("Hydropneumothorax/right")) == {"Pleural Effusion": 1.0, "Pneumothorax": 1.0}
    # Devices are not a pathology: No Finding still holds; granulomas are not one of the 14 labels.
    assert _positives(_labels("Catheters, Indwelling/right", "Calcified Granuloma/lung")) == {
        "Support Devices": 1.0, "No Finding": 1.0,
    }
    assert _positives(_labels("No Indexing")) == {} and _positives(_labels()) == {}


def test_all_real_iu_reports(shared_data):
    tgz = shared_data / "iu-xray" / "NLMCXR_reports.tgz"
    reports = list(iter_iu_reports(tgz))
    assert len(reports) == IU_N_REPORTS
    assert len({r.uid for r in reports}) == IU_N_REPORTS
    cleaned = [clean_report(r.as_mimic_text()) for r in reports]
    counts = summarise(cleaned)
    assert counts["reports"] == IU_N_REPORTS and counts["empty"] == IU_N_EMPTY
    assert 1 - counts["empty"] / counts["reports"] > 0.95
    assert counts["used:findings+impression"] > 3000
    assert not any("XXXX" in c.text for c in cleaned)
    assert sum(len(r.image_ids) for r in reports) > IU_N_REPORTS  # most studies have 2 views
    assert sum(mesh_to_chexpert(r.mesh_major)[CHEXPERT_LABELS.index("No Finding")] == 1.0 for r in reports) > 1000
