"""The MIMIC-CXR(-JPG) reader: tables gz or plain, reports zip or folder, labelers, views, split, policies."""

import gzip
import math
import shutil
import zipfile

import pytest

from cxrpipe.data.mimic import MimicFormatError, ReportSource, find_table, image_relpath, read_labels, read_mimic
from cxrpipe.labels import CHEXPERT_LABELS
from tests.data.mimic_tree import label_values, write_tree


def _key(read):
    return [(c.dicom_id, c.path, c.split, c.view) for c in read.images], {
        sid: (s.text, repr(s.labels), s.has_labels, s.split) for sid, s in read.studies.items()
    }


def test_gz_and_plain_tables_zip_and_folder_reports_read_the_same(tmp_path):
    a = write_tree(tmp_path / "a", 5, gz=True, reports_as="zip")
    b = write_tree(tmp_path / "b", 5, gz=False, reports_as="folder")
    assert find_table(a.root, "split").name.endswith(".csv.gz") and find_table(b.root, "split").suffix == ".csv"
    ra, rb = read_mimic(a.root, a.reports), read_mimic(b.root, b.reports)
    assert _key(ra) == _key(rb) and len(ra.studies) == 5 and not ra.rejects


def test_labels_under_mimic_names_and_the_labeler_switch(tmp_path):
    t = write_tree(tmp_path, 4)
    chex = read_mimic(t.root, t.reports, labeler="chexpert")
    neg = read_mimic(t.root, t.reports, labeler="negbio")
    for k, sid in enumerate(t.studies):
        cells = label_values(k)
        for name in CHEXPERT_LABELS:  # by name: the CSV order is never assumed
            want = cells[CHEXPERT_LABELS.index(name)]
            got = chex.studies[sid].label(name)
            assert (math.isnan(got) and want == "") or got == float(want), (sid, name)
    s0 = t.studies[0]
    # the labelers disagree on study 0's Edema (blank in chexpert, 0.0 in negbio), agree elsewhere
    assert math.isnan(chex.studies[s0].label("Edema")) and neg.studies[s0].label("Edema") == 0.0
    assert repr(chex.studies[t.studies[1]].labels) == repr(neg.studies[t.studies[1]].labels)


def test_view_filter_and_split(tmp_path):
    t = write_tree(tmp_path, 5)
    frontal = read_mimic(t.root, t.reports)
    assert {c.view for c in frontal.images} == {"AP", "PA"}
    assert frontal.counts["views_seen"] == {"AP": 2, "LATERAL": 3, "PA": 3}
    every = read_mimic(t.root, t.reports, views=())
    assert len(every.images) == 8 and {c.view for c in every.images} == {"AP", "PA", "LATERAL"}
    lateral = read_mimic(t.root, t.reports, views=("lateral",))
    assert {c.view for c in lateral.images} == {"LATERAL"} and len(lateral.studies) == 3
    splits = {sid: s.split for sid, s in frontal.studies.items()}
    assert [splits[s] for s in t.studies] == ["train", "train", "train", "validate", "test"]
    assert all(c.split == splits[c.study_id] for c in frontal.images)


def test_image_paths_follow_mimic_scheme_and_accept_the_other_extension(tmp_path):
    t = write_tree(tmp_path, 4, n_dicom=2)
    r = read_mimic(t.root, t.reports)
    by_id = {c.dicom_id: c for c in r.images}
    c = by_id[t.frontal[t.studies[2]][0]]
    assert c.path == image_relpath(c.subject_id, c.study_id, c.dicom_id, "jpg")
    assert c.path.startswith(f"files/p{str(c.subject_id)[:2]}/p{c.subject_id}/s{c.study_id}/")
    assert all(by_id[d].path.endswith(".dcm") for d in t.dicom_ids)  # DICOMs in the JPG tree
    # the DICOM source prefers .dcm, and falls back to the .jpg files of this JPG tree
    rd = read_mimic(t.root, t.reports, source="mimic-cxr")
    assert [c.path for c in rd.images] == [c.path for c in r.images]


def test_report_sections_are_parsed_and_kept(tmp_path):
    t = write_tree(tmp_path, 2)
    s = read_mimic(t.root, t.reports).studies[t.studies[1]]
    assert s.text.startswith("Findings: Study 1 findings.") and "Impression: No acute cardiopulmonary process in study 1." in s.text
    assert {"findings", "impression", "indication", "comparison"} <= set(s.sections)
    only_imp = read_mimic(t.root, t.reports, sections=("impression",)).studies[t.studies[1]]
    assert only_imp.text == "Impression: No acute cardiopulmonary process in study 1."


def test_policies_for_reports_labels_and_missing_files(tmp_path):
    bad = ("missing_image", "missing_report", "empty_report", "no_label_row", "bad_label", "lateral_only")
    t = write_tree(tmp_path, 3, bad)
    r = read_mimic(t.root, t.reports)
    got = {(x.kind, x.reason): x for x in r.rejects}
    assert got[("image", "missing_image")].id == t.bad["missing_image"]
    assert got[("study", "no_images")].id == str(t.studies[3])  # the study of the missing image
    assert got[("study", "missing_report")].id == t.bad["missing_report"]
    assert got[("study", "empty_report")].id == t.bad["empty_report"]
    nl, bl = got[("labels", "no_label_row")], got[("labels", "bad_label_value")]
    assert nl.id == t.bad["no_label_row"] and nl.action == "unlabelled"
    assert bl.id == t.bad["bad_label"] and "Edema='2.0'" in bl.detail
    assert len(r.rejects) == 6  # the lateral-only study is filtered by view, not rejected
    kept = {str(s) for s in r.studies}
    assert t.bad["no_label_row"] in kept and t.bad["bad_label"] in kept
    assert not r.studies[int(t.bad["bad_label"])].has_labels
    assert all(math.isnan(v) for v in r.studies[int(t.bad["no_label_row"])].labels)
    assert not kept & {t.bad["missing_report"], t.bad["empty_report"], t.bad["lateral_only"]}
    assert {c.study_id for c in r.images} == set(r.studies)  # no image of a dropped study is left


def test_no_split_row_and_duplicate_metadata(tmp_path):
    t = write_tree(tmp_path, 3, gz=False)
    split = t.root / "mimic-cxr-2.0.0-split.csv"
    lines = split.read_text().splitlines()
    victim = t.frontal[t.studies[0]][0]
    split.write_text("\n".join(l for l in lines if not l.startswith(victim)) + "\n")
    meta = t.root / "mimic-cxr-2.0.0-metadata.csv"
    meta.write_text(meta.read_text() + meta.read_text().splitlines()[2] + "\n")
    r = read_mimic(t.root, t.reports)
    assert [(x.reason, x.id) for x in r.rejects if x.kind == "image"] == [("no_split", victim)]
    assert r.counts["duplicate_metadata_rows"] == 1


def test_read_labels_flags_bad_values_and_keeps_first_row(tmp_path):
    header = "subject_id,study_id," + ",".join(f'"{n}"' if " " in n else n for n in reversed(CHEXPERT_LABELS))
    good = ["1.0", "", "-1.0", "0.0"] * 3 + ["1.0", "0"]
    rows = [header, "1,11," + ",".join(good), "1,11," + ",".join(["0.0"] * 14), "2,12," + ",".join(["1.0"] * 13 + ["yes"])]
    path = tmp_path / "mimic-cxr-2.0.0-chexpert.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("\n".join(rows) + "\n")
    labels, bad = read_labels(path)
    assert set(labels) == {11} and set(bad) == {12} and "Atelectasis='yes'" in bad[12]
    # columns were written in reverse order: values are matched by name
    assert labels[11][CHEXPERT_LABELS.index("Support Devices")] == 1.0
    assert math.isnan(labels[11][CHEXPERT_LABELS.index("Pneumothorax")])


def test_missing_tables_and_columns_are_clear_errors(tmp_path):
    t = write_tree(tmp_path, 2, gz=False)
    (t.root / "mimic-cxr-2.0.0-negbio.csv").unlink()
    with pytest.raises(MimicFormatError, match="mimic-cxr-2.0.0-negbio.csv.gz nor"):
        read_mimic(t.root, t.reports, labeler="negbio")
    meta = t.root / "mimic-cxr-2.0.0-metadata.csv"
    meta.write_text(meta.read_text().replace("ViewPosition", "View"))
    with pytest.raises(MimicFormatError, match=r"missing column\(s\) \['ViewPosition'\]"):
        read_mimic(t.root, t.reports)
    with pytest.raises(MimicFormatError, match="no such zip file or folder"):
        ReportSource(tmp_path / "nowhere.zip")


def test_tables_folder_separate_from_the_image_root(tmp_path):
    t = write_tree(tmp_path / "tree", 2)
    tables = tmp_path / "tables"
    tables.mkdir()
    for p in t.root.glob("mimic-cxr-2.0.0-*.csv.gz"):
        shutil.move(p, tables / p.name)
    with pytest.raises(MimicFormatError):
        read_mimic(t.root, t.reports)
    assert len(read_mimic(t.root, t.reports, tables=tables).studies) == 2


def test_report_source_zip_with_prefix_and_real_report_folder(tmp_path, shared_data):
    z = tmp_path / "r.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("mimic-cxr-reports/files/p10/p10000032/s50414267.txt", "FINDINGS: x")
    with ReportSource(z) as src:
        assert src.get(10000032, 50414267) == "FINDINGS: x" and src.get(10000032, 1) is None
    folder = tmp_path / "reports" / "files" / "p10" / "p10000032"
    folder.mkdir(parents=True)
    shutil.copy(shared_data / "mimic-cxr-example" / "s50414267.txt", folder)
    for root in (tmp_path / "reports", tmp_path / "reports" / "files"):  # the folder above files/ or files/ itself
        text = ReportSource(root).get(10000032, 50414267)
        assert "Large left pleural effusion" in text


def _report_file(tree, k):
    sid = tree.studies[k]
    subject = 10000000 + 7 * k
    return tree.reports / f"files/p{str(subject)[:2]}/p{subject}/s{sid}.txt"


def test_missing_sections_fall_back_instead_of_dropping(tmp_path):
    t = write_tree(tmp_path, 3, reports_as="folder")
    _report_file(t, 0).write_text("                 FINAL REPORT\n IMPRESSION:\n\n Stable small left effusion.\n")
    _report_file(t, 1).write_text(" PA and lateral views of the chest.\n\n No focal consolidation is seen.\n")
    r = read_mimic(t.root, t.reports)
    assert r.studies[t.studies[0]].text == "Impression: Stable small left effusion."
    assert "No focal consolidation is seen." in r.studies[t.studies[1]].text  # the last paragraph
    assert r.counts["sections_used"] == {"findings+impression": 1, "impression": 1, "last_paragraph": 1}
    assert not r.rejects


def test_the_real_mimic_example_report_through_the_reader(tmp_path, shared_data):
    t = write_tree(tmp_path, 1, reports_as="folder")
    shutil.copy(shared_data / "mimic-cxr-example" / "s50414267.txt", _report_file(t, 0))
    s = read_mimic(t.root, t.reports).studies[t.studies[0]]
    assert s.text.startswith("Findings: Cardiac size cannot be evaluated.")
    assert s.text.endswith("Impression: Large left pleural effusion")
    assert s.sections["comparison"] == "___"


# ------------------------------------------------------------ errors that say which param to set and how


def test_root_without_tables_names_the_param_and_finds_them_one_level_down(tmp_path):
    t = write_tree(tmp_path / "mimic" / "2.1.0", 2)
    with pytest.raises(MimicFormatError) as e:  # data.root one folder too high
        read_mimic(tmp_path / "mimic", t.reports)
    msg = str(e.value)
    assert "data.root" in msg and "mimic-cxr-2.0.0-metadata.csv" in msg and "expected layout" in msg
    assert f"set data.root: {t.root}" in msg


def test_root_one_level_too_low_is_detected(tmp_path):
    t = write_tree(tmp_path / "jpg", 2)
    with pytest.raises(MimicFormatError, match=rf"data.root = {t.root / 'files'}.*set data.root: {t.root}"):
        read_mimic(t.root / "files", t.reports)


def test_tables_param_is_named_when_set_and_root_without_files(tmp_path):
    t = write_tree(tmp_path / "tree", 2)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(MimicFormatError, match=r"data.tables = .*empty: no mimic-cxr-2.0.0-metadata"):
        read_mimic(t.root, t.reports, tables=empty)
    with pytest.raises(MimicFormatError, match=r"data.root = .*empty: no files/ folder"):
        read_mimic(empty, t.reports, tables=t.root)
    with pytest.raises(MimicFormatError, match=r"data.root = .*nowhere: no such folder"):
        read_mimic(tmp_path / "nowhere", t.reports)


def test_empty_or_wrong_reports_are_found_up_front_naming_data_reports(tmp_path):
    t = write_tree(tmp_path / "tree", 3)
    empty = tmp_path / "reports"
    empty.mkdir()
    with pytest.raises(MimicFormatError, match=r"data.reports = .*reports: the folder holds no report; expected"):
        read_mimic(t.root, empty)
    other = tmp_path / "other" / "files" / "p19" / "p19000000"
    other.mkdir(parents=True)
    (other / "s59999999.txt").write_text("FINDINGS: clear.\n")  # reports, but of other studies
    with pytest.raises(MimicFormatError, match=r"data.reports = .*other: none of the 3 selected studies has a report"):
        read_mimic(t.root, tmp_path / "other")
