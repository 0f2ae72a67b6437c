"""Radiology report sections and cleaning: raw report text -> the text the language model reads.

Section rules follow MIT-LCP's official extractor (github.com/MIT-LCP/mimic-cxr, ``txt/section_parser.py``
and ``txt/create_section_files.py``, MIT licence), rewritten here line by line instead of one big regex:

* A header is a line ``<NAME>:`` (leading spaces, spaces before the colon and text after it allowed), where
  NAME is letters, spaces and ``()/,&'-``. An UPPER-CASE name is always a header (MIMIC writes them so); a
  name in any other case is a header only when it is a known synonym (``Findings:``, ``Impression:``), so
  an ordinary sentence such as ``Heart size: normal`` never splits a section.
* Names map to canonical ones (:data:`SECTION_SYNONYMS`; misspellings included), then as MIT-LCP does:
  a name containing a main section name maps to it (``FINAL IMPRESSION`` -> impression), a name that
  describes the views maps to findings (``PA AND LATERAL VIEWS OF THE CHEST``), one-word misspellings close
  to a main name map to it (``IMPRESSSION``). Other upper-case names stay as their own lower-cased section.
* ``FINDINGS AND IMPRESSION`` (and ``FINDINGS/IMPRESSION``) maps to ``impression``, as MIT-LCP does: the
  extractor's first choice then finds it, and with the default ``keep`` it goes in either way.
* A section that occurs twice is the concatenation of both (MIT-LCP keeps the last one; an empty duplicate
  header is common, so concatenation loses nothing).
* Choice (:func:`clean_report`): the sections named in ``keep``, in ``keep``'s order; if none of them has
  text, the official extractor's chain: impression, else findings, else the "last paragraph" (MIT-LCP:
  the last section's text after its first paragraph; deviation: a report with no header at all and a
  single paragraph gives that paragraph, where MIT-LCP gives nothing), else comparison. MIT-LCP's last
  resort, indication, is not used: it is the reason for the exam, not a reading of the image.
* MIT-LCP's per-study manual fixes (``custom_mimic_cxr_rules``) apply when the caller passes ``study``.

Cleaning: the ``FINAL REPORT`` line, separator lines (``_____``) and sign-off lines are dropped; the
de-identification placeholders, MIMIC's ``___`` and IU X-ray's ``XXXX``, become one token per run
(``placeholder``, default ``___``: ``___ ___ 10:29`` -> ``___ 10:29``, ``XXXX XXXX`` -> ``___``);
whitespace collapses to single spaces; case is kept; :data:`TERMINOLOGY` standardises abbreviations and
spelling variants on word boundaries. A section left with no letter or digit (``COMPARISON: ___``) counts
as empty. Everything is linear-time regex work on single lines (no nested quantifiers).
"""

from __future__ import annotations

import collections
import dataclasses
import difflib
import re
from typing import Iterable, Sequence

CANONICAL_SECTIONS: tuple[str, ...] = (
    "preamble",  # text before the first header
    "wet read",  # MIMIC's preliminary read, above FINAL REPORT
    "examination",
    "indication",
    "history",
    "technique",
    "comparison",
    "findings",
    "impression",
    "recommendations",
    "notification",
    "addendum",
)

# Lower-case header name (spaces collapsed, "&" -> "and", no spaces around "/") -> canonical name.
# From MIT-LCP's ``frequent_sections`` (the comments there give MIMIC counts) plus a few more.
SECTION_SYNONYMS: dict[str, str] = {
    "preamble": "preamble",
    "impression": "impression", "impressions": "impression", "conclusion": "impression",
    "conclusions": "impression", "final impression": "impression", "opinion": "impression",
    "summary": "impression", "findings and impression": "impression", "findings/impression": "impression",
    "impression and recommendations": "impression", "impression and recommendation": "impression",
    "impresson": "impression", "imprression": "impression", "imoression": "impression",
    "impressoin": "impression", "imprssion": "impression", "impresion": "impression",
    "imperssion": "impression", "mpression": "impression", "impession": "impression",
    "concusion": "impression", "coinclusion": "impression",
    "findings": "findings", "finding": "findings", "findins": "findings", "findindgs": "findings",
    "findgings": "findings", "findngs": "findings", "findnings": "findings", "finidngs": "findings",
    "finings": "findings", "reference findings": "findings", "chest, two views": "findings",
    "comparison": "comparison", "comparisons": "comparison", "reference exam": "comparison",
    "comparison exam": "comparison", "comparison film": "comparison", "comparision": "comparison",
    "comparsion": "comparison", "comparrison": "comparison", "comparisions": "comparison",
    "prior": "comparison", "priors": "comparison",
    "indication": "indication", "indications": "indication", "reason for examination": "indication",
    "reason for exam": "indication", "reason for this examination": "indication",
    "reason for study": "indication", "clinical indication": "indication", "idication": "indication",
    "ndication": "indication",
    "history": "history", "clinical history": "history", "clinical information": "history",
    "patient history": "history", "pfi": "history", "clinical data": "history",
    "examination": "examination", "exam": "examination", "type of examination": "examination",
    "procedure": "examination", "study": "examination",
    "technique": "technique", "techniques": "technique",
    "recommendation": "recommendations", "recommendations": "recommendations",
    "recommendation(s)": "recommendations",
    "notification": "notification", "addendum": "addendum",
    "wet read": "wet read", "wetread": "wet read",
}

# MIT-LCP: a name containing one of these is that section (checked in this order).
_MAIN_NAMES = (("impression", "impression"), ("conclusion", "impression"), ("findings", "findings"),
               ("history", "history"), ("comparison", "comparison"), ("addendum", "addendum"))
# MIT-LCP: names describing the views are the findings ("PA AND LATERAL VIEWS OF THE CHEST:").
_VIEW_WORDS = re.compile(r"chest|portable|pa and lat|lateral and pa|ap and lateral|lateral and ap|frontal "
                         r"and|two views|frontal view|pa view|ap view|one view|lateral view|bone window|"
                         r"frontal upright|frontal semi-upright|ribs")
# One-word names this close to a main name are its misspelling (difflib ratio).
_FUZZY_TARGETS = {"impression": "impression", "conclusion": "impression", "findings": "findings",
                  "indication": "indication", "comparison": "comparison", "technique": "technique",
                  "examination": "examination", "history": "history"}
_FUZZY_CUTOFF = 0.85
_MAX_HEADER_CHARS = 60

# A header line: optional indent, NAME, optional spaces, colon, then whitespace or end of line. The name
# class holds no colon, so a failed match backtracks at most once per character: linear.
_HEADER = re.compile(r"[ \t]*([A-Za-z][A-Za-z ()/,&'-]*):(?=\s|$)")
_DROP_LINE = re.compile(r"\s*(?:(?:FINAL|PRELIMINARY) REPORT\s*|[_\-=*]{5,}\s*)$", re.IGNORECASE)
# Sign-off lines (checked at the start of a stripped line, case-insensitive).
_SIGN_OFF = re.compile(
    r"(?:electronically signed|signed by|dictated by|transcribed by|attending radiologist|"
    r"radiologist:|i have (?:personally )?reviewed the (?:images|study)|"
    r"the study and the report were reviewed by the staff radiologist)",
    re.IGNORECASE,
)
# Runs of placeholders (MIMIC ``___``, IU ``XXXX``) joined by spaces, slashes or hyphens: one token.
_PLACEHOLDER_RUN = re.compile(r"(?:_{3,}|X{4,})(?:[\s/-]+(?:_{3,}|X{4,}))*")
_ALNUM = re.compile(r"[A-Za-z0-9]")

# Standardised terminology: abbreviation or spelling variant (matched case-insensitively, whole words,
# spaces inside a key match any whitespace) -> standard term. Kept small and unambiguous in chest X-ray
# reports; the misspellings are the recurring ones of MIMIC-CXR (MIT-LCP's typo lists).
TERMINOLOGY: dict[str, str] = {
    # abbreviations
    "w/": "with", "w/o": "without", "b/l": "bilateral", "bilat": "bilateral", "bilat.": "bilateral",
    "s/p": "status post", "c/w": "consistent with", "r/o": "rule out", "h/o": "history of",
    "hx": "history", "approx": "approximately", "approx.": "approximately", "cxr": "chest radiograph",
    "lat": "lateral", "ptx": "pneumothorax", "pna": "pneumonia", "chf": "congestive heart failure",
    "ett": "endotracheal tube", "et tube": "endotracheal tube", "ngt": "nasogastric tube",
    "ng tube": "nasogastric tube", "ogt": "orogastric tube", "og tube": "orogastric tube",
    "ij": "internal jugular", "cp angle": "costophrenic angle", "cp angles": "costophrenic angles",
    "rul": "right upper lobe", "rml": "right middle lobe", "rll": "right lower lobe",
    "lul": "left upper lobe", "lll": "left lower lobe",
    # spelling variants (British, plural, brand) and frequent misspellings
    "oedema": "edema", "haemorrhage": "hemorrhage", "haemothorax": "hemothorax",
    "atelectases": "atelectasis", "atelectais": "atelectasis", "atlectasis": "atelectasis",
    "atalectasis": "atelectasis", "pnuemothorax": "pneumothorax", "pnemothorax": "pneumothorax",
    "pneumothoarx": "pneumothorax", "pnuemonia": "pneumonia", "pnemonia": "pneumonia",
    "penumonia": "pneumonia", "plueral": "pleural", "plerual": "pleural", "plaural": "pleural",
    "interstital": "interstitial", "intersitial": "interstitial", "heterogenous": "heterogeneous",
    "miniscule": "minuscule", "prominant": "prominent", "assymetric": "asymmetric",
    "asymetric": "asymmetric", "costophenric": "costophrenic", "diaphram": "diaphragm",
    "hemidiaphram": "hemidiaphragm", "bibasalar": "bibasilar", "likley": "likely",
    "appearence": "appearance", "dobhoff": "Dobhoff", "dobbhoff": "Dobhoff", "pleurex": "PleurX",
}


def _compile_terms(table: dict[str, str]) -> re.Pattern[str]:
    # Longest key first so "w/o" wins over "w/"; the boundaries treat "/" as part of a word.
    keys = sorted(table, key=len, reverse=True)
    body = "|".join(re.escape(k).replace(r"\ ", r"\s+") for k in keys)
    return re.compile(rf"(?<![\w/])(?:{body})(?![\w/])", re.IGNORECASE)


_TERMS = _compile_terms(TERMINOLOGY)
_TERMS_LOWER = {k.lower(): v for k, v in TERMINOLOGY.items()}
_PREV_WORD = re.compile(r"([A-Za-z]+)[^A-Za-z]*$")  # the word before a match (searched in a window)
_NEXT_WORD = re.compile(r"[^A-Za-z]*([A-Za-z]+)")  # the word after it


@dataclasses.dataclass(frozen=True)
class CleanedReport:
    """One report after section choice and cleaning."""

    text: str  # kept sections, cleaned, joined ("Findings: ... Impression: ..."); "" if nothing is left
    sections: dict[str, str]  # every parsed section, cleaned (blank ones included)
    used: tuple[str, ...]  # sections that went into ``text``, or ("last_paragraph",) etc. on fallback

    @property
    def empty(self) -> bool:
        return not self.text


def standardise_terms(text: str) -> str:
    """Replace :data:`TERMINOLOGY` keys (whole words, any case) by their standard term.

    The standard term keeps its own case, but is all capitals inside all-capital text (``CHEST (PA AND
    LAT)`` -> ``... LATERAL)``) and gets a capital first letter where the matched word was capitalised
    (``Ptx`` -> ``Pneumothorax``) or starts a sentence (``ETT is ...``).
    """

    def repl(m: re.Match[str]) -> str:
        word = m.group(0)
        std = _TERMS_LOWER[" ".join(word.lower().split())]
        s, a, b = m.string, m.start(), m.end()
        if word.isupper():
            prev = _PREV_WORD.search(s, max(0, a - 40), a)
            nxt = _NEXT_WORD.match(s, b, b + 40)
            if any(w is not None and len(w.group(1)) > 1 and w.group(1).isupper() for w in (prev, nxt)):
                return std.upper()
        before = s[max(0, a - 3): a].rstrip()
        titled = word[0].isupper() and word[1:2].islower()  # "Ptx" yes; "PTX", "NG tube" no
        if (titled or m.start() == 0 or (before and before[-1] in ".!?:")) and std[:1].islower():
            std = std[0].upper() + std[1:]
        return std

    return _TERMS.sub(repl, text)


def _name_key(name: str) -> str:
    """Lower case, "&" -> "and", whitespace collapsed, no spaces around "/": the synonym table's keys."""
    return " ".join(name.lower().replace("&", " and ").split()).replace(" /", "/").replace("/ ", "/")


def canonical_section_name(name: str) -> str | None:
    """Header text (any case) -> canonical section name; None when the name is not a known section
    (an upper-case unknown name is still a header, named by its lower-cased text)."""
    key = _name_key(name)
    if key in SECTION_SYNONYMS:
        return SECTION_SYNONYMS[key]
    for word, canon in _MAIN_NAMES:
        if word in key:
            return canon
    if _VIEW_WORDS.search(key):
        return "findings"
    if " " not in key:
        close = difflib.get_close_matches(key, _FUZZY_TARGETS, n=1, cutoff=_FUZZY_CUTOFF)
        if close:
            return _FUZZY_TARGETS[close[0]]
    return None


def _header(line: str) -> tuple[str, str] | None:
    """``(section name, text after the colon)`` when ``line`` is a header line, else None."""
    m = _HEADER.match(line)
    if m is None:
        return None
    raw = m.group(1).strip()
    if len(raw) > _MAX_HEADER_CHARS:
        return None
    canon = canonical_section_name(raw)
    if raw.isupper():
        name = canon or " ".join(raw.lower().split())
    elif _name_key(raw) in SECTION_SYNONYMS:
        name = canon  # a mixed/lower-case header only when it is a known synonym
    else:
        return None
    return name, line[m.end():]


def _kept_lines(text: str) -> list[str]:
    """Lines of the report without the FINAL REPORT header, separator and sign-off lines."""
    out = []
    for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n"):
        if _DROP_LINE.match(line) or _SIGN_OFF.match(line.lstrip()):
            continue
        out.append(line)
    return out


def split_sections(text: str) -> list[tuple[str, str]]:
    """Report text -> ``[(canonical name, raw text), ...]`` in report order, duplicates kept.

    The raw text of a section starts with what follows the colon on the header line; text before the
    first header is ``preamble`` (left out when blank). Lines keep their newlines, so paragraphs
    (separated by blank lines) can still be found.
    """
    sections: list[tuple[str, list[str]]] = [("preamble", [])]
    for line in _kept_lines(text):
        h = _header(line)
        if h is None:
            sections[-1][1].append(line)
        else:
            sections.append((h[0], [h[1]]))
    out = [(name, "\n".join(lines)) for name, lines in sections]
    if not out[0][1].strip():
        out.pop(0)
    return out


def parse_sections(text: str) -> dict[str, str]:
    """Report text -> ``{canonical lower-case name: raw section text}`` in report order; a name found
    twice holds both texts joined by a newline."""
    return _merge(split_sections(text))


def _merge(parts: list[tuple[str, str]]) -> dict[str, str]:
    merged: dict[str, list[str]] = {}
    for name, body in parts:
        merged.setdefault(name, []).append(body)
    return {name: "\n".join(bodies) for name, bodies in merged.items()}


def clean_text(text: str, placeholder: str = "___", standardise: bool = True) -> str:
    """One section's raw text -> placeholders normalised, whitespace collapsed, terminology applied."""
    text = _PLACEHOLDER_RUN.sub(placeholder, text)
    text = " ".join(text.split())
    return standardise_terms(text) if standardise else text


def _has_content(text: str, placeholder: str) -> bool:
    return bool(_ALNUM.search(text.replace(placeholder, " ") if placeholder else text))


def _paragraphs(body: str) -> list[str]:
    """Groups of consecutive non-blank lines."""
    paras: list[list[str]] = [[]]
    for line in body.split("\n"):
        if line.strip():
            paras[-1].append(line)
        elif paras[-1]:
            paras.append([])
    return ["\n".join(p) for p in paras if p]


def _last_paragraph(parts: list[tuple[str, str]]) -> str:
    """MIT-LCP's ``last_paragraph``: the last section's paragraphs after its first one (the first being
    the header's own text); a report without any header and with one paragraph gives that paragraph."""
    if not parts:
        return ""
    name, body = parts[-1]
    paras = _paragraphs(body)
    if name == "preamble" and len(parts) == 1 and len(paras) == 1:
        return paras[0]
    return "\n\n".join(paras[1:])


def clean_report(
    text: str,
    keep: Sequence[str] = ("findings", "impression"),
    placeholder: str = "___",
    standardise: bool = True,
    study: str | int | None = None,
) -> CleanedReport:
    """Raw report text -> :class:`CleanedReport` (see the module docstring for every rule).

    ``keep``: canonical section names to keep, joined in this order as ``"Findings: ... Impression: ..."``.
    ``placeholder``: the one token every run of ``___`` / ``XXXX`` becomes ("" drops them).
    ``standardise``: apply :data:`TERMINOLOGY`. ``study``: MIMIC study id (``"s50414267"`` or
    ``"50414267"``) to apply MIT-LCP's per-study manual fixes.
    """
    parts = split_sections(text)
    sections = {n: clean_text(b, placeholder, standardise) for n, b in _merge(parts).items()}

    def usable(name: str) -> bool:
        return name in sections and _has_content(sections[name], placeholder)

    sid = None if study is None else "s" + str(study).lstrip("s")
    if sid in MIMIC_CUSTOM_SPANS:  # MIT-LCP: the report text between these offsets ([0, 0]: none)
        a, b = MIMIC_CUSTOM_SPANS[sid]
        body = clean_text(text[a:b], placeholder, standardise)
        ok = _has_content(body, placeholder)
        return CleanedReport(body if ok else "", sections, ("custom_span",) if ok else ())
    if sid in MIMIC_CUSTOM_SECTIONS and usable(MIMIC_CUSTOM_SECTIONS[sid]):
        name = MIMIC_CUSTOM_SECTIONS[sid]
        return CleanedReport(f"{name.capitalize()}: {sections[name]}", sections, (name,))

    used = tuple(dict.fromkeys(n for n in keep if usable(n)))
    if not used:
        for name in ("impression", "findings", "last_paragraph", "comparison"):
            if name == "last_paragraph":
                last = clean_text(_last_paragraph(parts), placeholder, standardise)
                if _has_content(last, placeholder):
                    return CleanedReport(last, sections, ("last_paragraph",))
            elif usable(name):
                used = (name,)
                break
    joined = " ".join(f"{n.capitalize()}: {sections[n]}" for n in used)
    return CleanedReport(joined, sections, used)


def apply_prompt(text: str, prompt: str) -> str:
    """The report's way: the cleaned text, then the fixed prompt appended after one space (none when
    the prompt already starts with whitespace; the text alone when the prompt is empty)."""
    if not prompt:
        return text
    if not text:
        return prompt.strip()
    return text + (prompt if prompt[:1].isspace() else " " + prompt)


def summarise(reports: Iterable[CleanedReport]) -> dict[str, int]:
    """Counts for a prepare report: ``reports``, ``empty`` and one ``used:<a+b>`` key per section choice."""
    counts: collections.Counter[str] = collections.Counter()
    for r in reports:
        counts["reports"] += 1
        counts["empty" if r.empty else "used:" + "+".join(r.used)] += 1
    counts.setdefault("empty", 0)
    return dict(sorted(counts.items()))


# MIT-LCP ``custom_mimic_cxr_rules`` (txt/section_parser.py): studies whose conclusion sits in a misnamed
# section, and studies whose text is taken between two character offsets ([0, 0]: no findings at all).
MIMIC_CUSTOM_SECTIONS: dict[str, str] = {
    "s50913680": "recommendations", "s59363654": "examination", "s59279892": "technique",
    "s59768032": "recommendations", "s57936451": "indication", "s50058765": "indication",
    "s53356173": "examination", "s53202765": "technique", "s50808053": "technique",
    "s51966317": "indication", "s50743547": "examination", "s56451190": "note",
    "s59067458": "recommendations", "s59215320": "examination", "s55124749": "indication",
    "s54365831": "indication", "s59087630": "recommendations", "s58157373": "recommendations",
    "s56482935": "recommendations", "s58375018": "recommendations", "s54654948": "indication",
    "s55157853": "examination", "s51491012": "history",
}
MIMIC_CUSTOM_SPANS: dict[str, tuple[int, int]] = {
    "s50525523": (201, 349), "s57564132": (233, 554), "s59982525": (313, 717), "s53488209": (149, 475),
    "s54875119": (234, 988), "s50196495": (59, 399), "s56579911": (59, 218), "s52648681": (292, 631),
    "s59889364": (172, 453), "s53514462": (73, 377), "s59505494": (59, 450), "s53182247": (59, 412),
    "s51410602": (47, 320), "s56412866": (522, 822), "s54986978": (59, 306), "s59003148": (262, 505),
    "s57150433": (61, 394), "s56760320": (219, 457), "s59562049": (158, 348), "s52674888": (145, 296),
    "s55258338": (192, 568), "s59330497": (140, 655), "s52119491": (179, 454),
    "s58235663": (0, 0), "s50798377": (0, 0), "s54168089": (0, 0), "s53071062": (0, 0),
    "s56724958": (0, 0), "s54231141": (0, 0), "s53607029": (0, 0), "s52035334": (0, 0),
}
