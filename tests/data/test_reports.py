"""Report section parsing and cleaning (cxrpipe.data.reports). Synthetic reports are written here; the one
public MIMIC-CXR example report is read from ../shared/data."""

from __future__ import annotations

import pytest

from cxrpipe.data.reports import (
    CANONICAL_SECTIONS,
    MIMIC_CUSTOM_SECTIONS,
    MIMIC_CUSTOM_SPANS,
    TERMINOLOGY,
    CleanedReport,
    apply_prompt,
    canonical_section_name,
    clean_report,
    parse_sections,
    split_sections,
    standardise_terms,
    summarise,
)

# A MIMIC-shaped report (wet read above FINAL REPORT, separator line, view header, sign-off).
REPORT = """ WET READ: ___ ___ ___ 9:14 AM
  No pneumothorax.
 ______________________________________________________________________________
                                 FINAL REPORT
 EXAMINATION:  CHEST (PORTABLE AP)

 INDICATION:  ___ year old man with dyspnea.

 COMPARISON:  ___

 FINDINGS:

 The ETT tip is 4 cm above the carina.  Heart size is normal.
 Small left effusion,   unchanged.

 IMPRESSION:

 Small left effusion.

 I have personally reviewed the images and agree with the report above.
"""


def test_mimic_example_gives_findings_and_impression(shared_data):
    text = (shared_data / "mimic-cxr-example" / "s50414267.txt").read_text()
    r = clean_report(text)
    assert r.used == ("findings", "impression")
    assert r.sections["findings"].startswith("Cardiac size cannot be evaluated. Large left pleural effusion is new.")
    assert r.sections["findings"].endswith("There are mild degenerative changes in the thoracic spine")
    assert "Right lower lobe opacities are better seen in prior CT." in r.sections["findings"]
    assert r.sections["impression"] == "Large left pleural effusion"
    assert r.text.startswith("Findings: Cardiac size cannot be evaluated.")
    assert r.text.endswith(" Impression: Large left pleural effusion")
    assert list(r.sections) == ["examination", "indication", "technique", "comparison", "findings", "impression"]
    assert r.sections["indication"] == "___ year old woman with ?pleural effusion // ?pleural effusion"
    assert r.sections["comparison"] == "___"
    assert r.sections["examination"] == "CHEST (PA AND LATERAL)"  # "LAT" standardised, capitals kept
    assert "FINAL REPORT" not in r.text and not r.empty


def test_full_report_sections_and_cleaning():
    r = clean_report(REPORT)
    assert list(r.sections) == ["wet read", "examination", "indication", "comparison", "findings", "impression"]
    assert r.sections["wet read"] == "___ 9:14 AM No pneumothorax."  # placeholder run -> one token
    assert r.sections["findings"] == (
        "The endotracheal tube tip is 4 cm above the carina. Heart size is normal. Small left effusion, unchanged."
    )
    assert r.sections["impression"] == "Small left effusion."  # sign-off line dropped
    assert r.text == f"Findings: {r.sections['findings']} Impression: Small left effusion."
    assert "____" not in " ".join(r.sections.values())  # the separator line is gone


def test_keep_order_and_choice():
    assert clean_report(REPORT, keep=("impression", "findings")).text.startswith("Impression: Small left")
    r = clean_report(REPORT, keep=("impression", "indication"))
    assert r.used == ("impression", "indication")
    assert r.text == "Impression: Small left effusion. Indication: ___ year old man with dyspnea."
    assert clean_report(REPORT, keep=("findings",)).used == ("findings",)


@pytest.mark.parametrize(
    "header, canonical",
    [
        ("FINDINGS:", "findings"),
        ("  FINDINGS :  ", "findings"),  # leading spaces, space before the colon, trailing spaces
        ("Findings:", "findings"),  # any case, when it is a known name
        ("impression:", "impression"),
        ("FINDNGS:", "findings"),  # listed misspellings
        ("FINDING:", "findings"),
        ("IMPRESSSION:", "impression"),  # unlisted misspelling, close to a main name
        ("CONCLUSION:", "impression"),
        ("Conclusions:", "impression"),
        ("FINDINGS AND IMPRESSION:", "impression"),
        ("FINDINGS/IMPRESSION:", "impression"),
        ("FINDINGS & IMPRESSION:", "impression"),
        ("IMPRESSION AND RECOMMENDATIONS:", "impression"),
        ("FINAL IMPRESSION:", "impression"),
        ("PA AND LATERAL VIEWS OF THE CHEST:", "findings"),
        ("WET READ:", "wet read"),
        ("CLINICAL HISTORY:", "history"),
        ("REASON FOR EXAM:", "indication"),
        ("Indication:", "indication"),
        ("COMPARISONS:", "comparison"),
        ("COMPARISION:", "comparison"),
        ("EXAM:", "examination"),
        ("TECHNIQUE:", "technique"),
        ("RECOMMENDATION(S):", "recommendations"),
    ],
)
def test_header_synonyms_and_misspellings(header, canonical):
    parts = split_sections(f" INDICATION: cough\n {header} the text\n more text\n")
    assert parts[-1][0] == canonical
    assert " ".join(parts[-1][1].split()) == "the text more text"
    assert canonical in CANONICAL_SECTIONS


def test_not_headers():
    # A sentence with a colon in ordinary case, a colon without a space, a time: all stay in their section.
    text = " FINDINGS: Lungs clear.\n Heart size: normal.\n TIME:10:30\n 10:30: called\n"
    assert parse_sections(text).keys() == {"findings"}
    assert clean_report(text).text == "Findings: Lungs clear. Heart size: normal. TIME:10:30 10:30: called"
    assert canonical_section_name("Heart size") is None


def test_unknown_upper_case_header_is_its_own_section():
    secs = parse_sections(" FINDINGS: Lungs clear.\n NOTE: Dr. ___ was told.\n")
    assert secs.keys() == {"findings", "note"}
    assert clean_report(" FINDINGS: Lungs clear.\n NOTE: Dr. ___ was told.\n").text == "Findings: Lungs clear."


def test_duplicate_sections_are_joined_and_empty_ones_skipped():
    text = " FINDINGS:\n \n IMPRESSION: One.\n FINDINGS: Lungs clear.\n CONCLUSION: Two.\n"
    assert [n for n, _ in split_sections(text)] == ["findings", "impression", "findings", "impression"]
    r = clean_report(text)
    assert r.sections == {"findings": "Lungs clear.", "impression": "One. Two."}
    assert r.text == "Findings: Lungs clear. Impression: One. Two."


# ------------------------------------------------------------------------------------- fallback chain
def test_fallback_impression_when_findings_wanted():
    r = clean_report(" INDICATION: cough\n IMPRESSION: No acute process.\n", keep=("findings",))
    assert (r.used, r.text) == (("impression",), "Impression: No acute process.")


def test_fallback_findings_when_impression_wanted():
    r = clean_report(" FINDINGS: Lungs clear.\n IMPRESSION: ___\n", keep=("impression",))
    assert (r.used, r.text) == (("findings",), "Findings: Lungs clear.")


def test_fallback_last_paragraph():
    text = " FINAL REPORT\n INDICATION: ___ year old with cough.\n \n The lungs are clear.\n No effusion.\n"
    r = clean_report(text)
    assert (r.used, r.text) == (("last_paragraph",), "The lungs are clear. No effusion.")
    # A header-only line: its section's first paragraph is the one under it.
    r = clean_report(" COMPARISON:\n None.\n \n Heart normal.\n \n Lungs clear.\n")
    assert (r.used, r.text) == (("last_paragraph",), "Heart normal. Lungs clear.")


def test_fallback_last_paragraph_without_any_header():
    # As MIT-LCP: several paragraphs -> all after the first; one paragraph -> itself (MIT-LCP: nothing).
    assert clean_report("FINAL REPORT\n CHEST AP ___\n \n Lungs clear.\n").text == "Lungs clear."
    r = clean_report("  Lungs clear.   No effusion.\n")
    assert (r.used, r.text) == (("last_paragraph",), "Lungs clear. No effusion.")


def test_fallback_comparison():
    r = clean_report(" INDICATION: cough\n COMPARISON: Lungs clear compared to ___.\n")
    assert (r.used, r.text) == (("comparison",), "Comparison: Lungs clear compared to ___.")


def test_empty_reports():
    for text in ["", "   \n \n", " FINAL REPORT\n", " INDICATION: cough\n COMPARISON: ___\n",
                 " FINDINGS:\n \n IMPRESSION: XXXX XXXX.\n"]:
        r = clean_report(text)
        assert r.empty and r.text == "" and r.used == (), text


# ------------------------------------------------------------------------------- placeholders, spaces
def test_placeholders_become_one_token():
    r = clean_report(" FINDINGS: Seen by ___ ___ on ___ at 10:29. XXXX XXXX is XXXX-year-old; x-XXXX/XXXX.\n")
    assert r.text == "Findings: Seen by ___ on ___ at 10:29. ___ is ___-year-old; x-___."
    r = clean_report(" FINDINGS: Seen by ___ ___, XXXX.\n", placeholder="[REDACTED]")
    assert r.text == "Findings: Seen by [REDACTED], [REDACTED]."
    assert clean_report(" FINDINGS: Seen by ___ ___ today.\n", placeholder="").text == "Findings: Seen by today."


def test_whitespace_collapsed_case_kept():
    r = clean_report("\r\n FINDINGS:\t Heart   SIZE\tnormal.\r\n\r\n  Lungs\u00a0clear. \r\n")
    assert r.text == "Findings: Heart SIZE normal. Lungs clear."


# ---------------------------------------------------------------------------------------- terminology
def test_terminology_word_boundaries():
    assert standardise_terms("platform latitude hxy bilateral w/o w/ b/l lat.") == (
        "platform latitude hxy bilateral without with bilateral lateral."
    )
    assert standardise_terms("s/p CABG, c/w CHF, r/o PNA") == (
        "Status post CABG, consistent with congestive heart failure, rule out pneumonia"  # sentence start
    )
    assert standardise_terms("with oedema, atelectases, pnuemothorax, dobhoff") == (
        "with edema, atelectasis, pneumothorax, Dobhoff"
    )
    assert standardise_terms("new NG   tube, right IJ line") == "new nasogastric tube, right internal jugular line"


def test_terminology_case():
    assert standardise_terms("ETT in place. Ptx resolved.") == "Endotracheal tube in place. Pneumothorax resolved."
    assert standardise_terms("The RLL and PTX.") == "The right lower lobe and pneumothorax."
    assert standardise_terms("CHEST (PA AND LAT)") == "CHEST (PA AND LATERAL)"


def test_terminology_table_is_consistent():
    for key, std in TERMINOLOGY.items():
        assert standardise_terms(key) in (std, std[0].upper() + std[1:]), key
        assert standardise_terms(f"x {key} y") == f"x {std} y", key
        assert standardise_terms(std) in (std, std[0].upper() + std[1:]), f"{std} is itself rewritten"
    assert clean_report(" FINDINGS: bilat ptx.\n", standardise=False).text == "Findings: bilat ptx."


# ------------------------------------------------------------------------------------ prompt, counts
def test_apply_prompt():
    assert apply_prompt("Findings: clear.", "Summarise the report in one word:") == (
        "Findings: clear. Summarise the report in one word:"
    )
    assert apply_prompt("Findings: clear.", "\nIn one word:") == "Findings: clear.\nIn one word:"
    assert apply_prompt("Findings: clear.", "") == "Findings: clear."
    assert apply_prompt("", " Describe:") == "Describe:"


def test_summarise_counts_empty_and_choices():
    reports = [clean_report(t) for t in (REPORT, "", " IMPRESSION: Clear.\n", " A\n \n B\n")]
    assert summarise(reports) == {
        "empty": 1, "reports": 4, "used:findings+impression": 1, "used:impression": 1, "used:last_paragraph": 1,
    }
    assert summarise([]) == {"empty": 0}


def test_mit_lcp_per_study_fixes():
    sid = next(s for s, (a, b) in MIMIC_CUSTOM_SPANS.items() if a == 0 and b == 0)
    assert clean_report(REPORT, study=sid).empty
    assert clean_report(REPORT, study=sid[1:]).empty  # with or without the "s"
    sid, (a, b) = next((s, ab) for s, ab in MIMIC_CUSTOM_SPANS.items() if ab[0] > 0)
    text = "x" * a + " The lungs   are clear.".ljust(b - a) + " IMPRESSION: other\n"
    r = clean_report(text, study=sid)
    assert (r.text, r.used) == ("The lungs are clear.", ("custom_span",))
    sid = next(s for s, n in MIMIC_CUSTOM_SECTIONS.items() if n == "recommendations")
    r = clean_report(" IMPRESSION: see below\n RECOMMENDATIONS: Lungs clear.\n", study=sid)
    assert (r.text, r.used) == ("Recommendations: Lungs clear.", ("recommendations",))
    assert clean_report(REPORT, study="s1").used == ("findings", "impression")  # other studies: unchanged


def test_long_inputs_stay_linear():
    # Would hang with catastrophic backtracking; each piece is ~200k characters on one line.
    text = " FINDINGS: " + "A" * 200_000 + " " + "___ " * 50_000 + "XXXX " * 50_000 + "w/ " * 20_000 + "\n"
    r = clean_report(text)
    assert isinstance(r, CleanedReport) and r.text.count("___") == 1 and r.text.endswith("with")
    assert clean_report((" FINDINGS" + " A" * 30 + "(") * 20_000).used == ("last_paragraph",)
