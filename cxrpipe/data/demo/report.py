"""Demo reports in MIMIC-CXR's text format, stating what the image shows.

Format as in MIMIC-CXR's ``files/p1X/p1XXXXXXX/sXXXXXXXX.txt``: a centred ``FINAL REPORT`` line, section
headers in capitals with a colon (EXAMINATION, INDICATION, TECHNIQUE, COMPARISON, FINDINGS, IMPRESSION),
every line indented by one space and wrapped at ~78 columns, sentences separated by two spaces, ``___``
where de-identification removed ages, names and dates.

Content: one sentence per finding with its laterality, severity, location and device names (several
paraphrases each), a hedge for uncertain findings ("Possible ...", "... cannot be excluded"), explicit
negations of the absent findings the labels mark ``0`` ("No pneumothorax."), label-neutral filler, and an
IMPRESSION that summarises. Layout variety: most reports have FINDINGS + IMPRESSION; some only IMPRESSION
(holding the whole description); a few use header spellings MIT-LCP's section parser maps
("FINDINGS AND IMPRESSION:", "CONCLUSION:").
"""

from __future__ import annotations

import enum
import textwrap

import numpy as np

from cxrpipe.data.demo.findings import FINDING_ORDER, Finding, StudyFindings

HEADER = " " * 33 + "FINAL REPORT"
WIDTH = 78


class Layout(str, enum.Enum):
    STANDARD = "standard"  # FINDINGS + IMPRESSION
    IMPRESSION_ONLY = "impression_only"
    FINDINGS_AND_IMPRESSION = "findings_and_impression"  # one combined header
    CONCLUSION = "conclusion"  # FINDINGS + CONCLUSION (maps to impression)


ORDINAL = {3: "third", 4: "fourth", 5: "fifth", 6: "sixth", 7: "seventh", 8: "eighth", 9: "ninth", 10: "tenth"}
LOBE = {("right", "upper"): "right upper lobe", ("right", "middle"): "right middle lobe",
        ("right", "lower"): "right lower lobe", ("left", "upper"): "left upper lobe",
        ("left", "middle"): "lingula", ("left", "lower"): "left lower lobe",
        ("bilateral", "upper"): "bilateral upper lobes", ("bilateral", "middle"): "bilateral mid lungs",
        ("bilateral", "lower"): "bilateral lower lobes"}
LOBE_ADJ = {("left", "middle"): "lingular", ("bilateral", "upper"): "bilateral upper lobe",
            ("bilateral", "middle"): "bilateral mid lung", ("bilateral", "lower"): "bilateral lower lobe"}
DEVICE_TEXT = {
    "ett": ("Endotracheal tube terminates {cm} cm above the carina.",
            "The endotracheal tube tip is approximately {cm} cm above the carina.",
            "ET tube in standard position, {cm} cm above the carina."),
    "ngt": ("Nasogastric tube courses below the diaphragm with the tip in the stomach.",
            "An enteric tube passes into the stomach.", "NG tube tip is in the stomach."),
    "cvc_rij": ("Right internal jugular central venous catheter terminates in the mid SVC.",
                "A right IJ line ends in the superior vena cava."),
    "cvc_lsc": ("Left subclavian central venous catheter tip is in the SVC.",
                "A left subclavian line terminates in the distal SVC."),
    "picc": ("Right PICC line terminates in the lower SVC.", "A right-sided PICC ends at the cavoatrial junction."),
    "pacemaker": ("Left chest wall pacemaker with a lead terminating in the right ventricle.",
                  "A left-sided pacemaker device is in place, lead in the right ventricle."),
    "chest_tube": ("{Side} chest tube in place with the tip at the apex.", "A {side}-sided chest tube is seen."),
}
NEGATION = {
    "Pneumothorax": ("No pneumothorax.", "There is no pneumothorax.", "No evidence of pneumothorax."),
    "Pleural Effusion": ("No pleural effusion.", "There is no pleural effusion.", "No effusion is seen."),
    "Consolidation": ("No focal consolidation.", "There is no focal consolidation."),
    "Pneumonia": ("No evidence of pneumonia.", "No radiographic signs of pneumonia."),
    "Edema": ("No pulmonary edema.", "There is no pulmonary vascular congestion or edema."),
    "Cardiomegaly": ("Heart size is normal.", "The heart is not enlarged.", "No cardiomegaly."),
    "Enlarged Cardiomediastinum": ("Mediastinal contours are within normal limits.",
                                   "The mediastinum is not widened."),
    "Atelectasis": ("No atelectasis.", "There is no atelectasis."),
    "Lung Lesion": ("No pulmonary nodules or masses.", "No suspicious pulmonary nodule."),
    "Lung Opacity": ("No focal opacity.", "There is no focal airspace opacity."),
    "Fracture": ("No acute rib fracture.", "No displaced fracture is seen."),
    "Pleural Other": ("No pleural thickening.",),
}
FILLER = ("Hilar contours are normal.", "Lung volumes are normal.", "The imaged upper abdomen is unremarkable.",
          "Mild degenerative changes of the thoracic spine.", "Atherosclerotic calcification of the aortic knob.")
NORMAL_IMPRESSION = ("No acute cardiopulmonary process.", "No acute intrathoracic process.",
                     "No evidence of acute disease.", "Normal chest radiograph.")
INDICATION = {
    "icu": ("___ year old man intubated for respiratory failure.  // eval ETT placement",
            "___ year old woman with respiratory failure  // interval change?",
            "___ M s/p line placement  // line position?"),
    "chf": ("___ year old woman with dyspnea, history of CHF  // eval for edema",
            "___ M with shortness of breath  // ?pulmonary edema"),
    "infection": ("___ year old man with fever and cough  // r/o pneumonia",
                  "___ F with leukocytosis  // ?pna"),
    "": ("___ year old woman with chest pain  // eval for acute process",
         "___ M with fall  // ?fracture", "___ year old man pre-op  // preop evaluation",
         "___ F with ?pleural effusion  // ?pleural effusion"),
}
PRIORITY = ("Pneumothorax", "Pneumonia", "Consolidation", "Edema", "Pleural Effusion", "Lung Lesion",
            "Lung Opacity", "Atelectasis", "Cardiomegaly", "Enlarged Cardiomediastinum", "Fracture",
            "Pleural Other", "Support Devices")


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _cap(s: str) -> str:
    return s[:1].upper() + s[1:]


def _where(f: Finding, adj: bool = False) -> str:
    """'right lower lobe', 'lingula', 'bilateral lower lobes' (``adj``: before a noun: 'lingular',
    'bilateral lower lobe')."""
    key = (f.side or "right", f.zone or "lower")
    return LOBE_ADJ.get(key, LOBE[key]) if adj else LOBE[key]


def describe(f: Finding, rng: np.random.Generator, short: bool = False, tube_side: str = "left") -> str:
    """One sentence stating finding ``f`` (``short``: the impression's terser form; ``tube_side``: where a
    chest tube is, the side of the air or fluid it drains)."""
    side, sev = f.side, f.severity
    if f.label == "Support Devices":
        if short:
            return _pick(rng, ("Lines and tubes in standard position.", "Support devices as described."))
        return "  ".join(_pick(rng, DEVICE_TEXT[d]).format(cm=int(f.size_cm), side=tube_side, Side=_cap(tube_side))
                         for d in f.devices)
    if not f.certain:
        return _uncertain(f, rng)
    if f.label == "Pleural Effusion":
        if side == "bilateral":
            return _pick(rng, (f"{_cap(sev)} bilateral pleural effusions.", f"Bilateral {sev} pleural effusions.",
                               f"There are {sev} bilateral pleural effusions."))
        opts = [f"{_cap(sev)} {side} pleural effusion.", f"There is a {sev} {side} pleural effusion."]
        if not short:
            opts.append(f"{_cap(sev)} {side} pleural effusion blunts the costophrenic angle.")
        return _pick(rng, opts)
    if f.label == "Pneumothorax":
        where = " apical" if sev == "small" else ""
        return _pick(rng, (f"{_cap(sev)} {side}{where} pneumothorax.",
                           f"There is a {sev} {side}{where} pneumothorax.",
                           f"{_cap(sev)} {side} pneumothorax with a visible visceral pleural line."))
    if f.label == "Consolidation":
        w, wa = _where(f), _where(f, adj=True)
        return _pick(rng, (f"{_cap(wa)} consolidation.", f"There is consolidation in the {w}.",
                           f"Dense {wa} consolidation."))
    if f.label == "Pneumonia":
        wa = _where(f, adj=True)
        return _pick(rng, (f"Findings are consistent with {wa} pneumonia.", f"{_cap(wa)} pneumonia.",
                           f"There is a {wa} pneumonia."))
    if f.label == "Lung Opacity":
        kind = sev or "patchy"
        return _pick(rng, (f"{_cap(kind)} opacity in the {_where(f)}.",
                           f"There is a {kind} {_where(f, adj=True)} opacity."))
    if f.label == "Edema":
        return _pick(rng, {
            "mild": ("Mild pulmonary vascular congestion and interstitial edema.", "Mild pulmonary edema.",
                     "Mild interstitial edema with Kerley B lines."),
            "moderate": ("Moderate pulmonary edema.",
                         "Moderate interstitial pulmonary edema with perihilar haziness."),
            "severe": ("Severe pulmonary edema.", "Diffuse severe alveolar pulmonary edema."),
        }[sev])
    if f.label == "Atelectasis":
        if f.zone == "middle":
            return _pick(rng, ("Right middle lobe atelectasis.", "Atelectasis of the right middle lobe."))
        if side == "bilateral":
            return _pick(rng, (f"{_cap(sev)} bibasilar atelectasis.", "Bibasilar plate-like atelectasis."))
        return _pick(rng, (f"{_cap(sev)} {side} basilar atelectasis.", f"Plate-like atelectasis at the {side} base.",
                           f"{_cap(sev)} atelectasis in the {side} lower lobe."))
    if f.label == "Lung Lesion":
        noun = "mass" if f.size_cm >= 3 else "nodule"
        text = _pick(rng, (f"{f.size_cm:.1f} cm {noun} in the {_where(f)}.",
                           f"There is a {f.size_cm:.1f} cm {_where(f, adj=True)} pulmonary {noun}."))
        return text if short else text + _pick(rng, ("", "  Recommend chest CT for further evaluation."))
    if f.label == "Pleural Other":
        if f.zone == "apical":
            return _pick(rng, (f"{_cap(side)} apical pleural thickening.", f"{_cap(side)} apical pleural cap."))
        return _pick(rng, (f"Pleural thickening along the {side} lateral chest wall.",
                           f"{_cap(side)} lateral pleural thickening."))
    if f.label == "Cardiomegaly":
        return _pick(rng, {
            "mild": ("Mild cardiomegaly.", "The heart is mildly enlarged."),
            "moderate": ("Moderate cardiomegaly.", "Moderately enlarged cardiac silhouette."),
            "severe": ("Severe cardiomegaly.", "Marked enlargement of the cardiac silhouette."),
        }[sev])
    if f.label == "Enlarged Cardiomediastinum":
        return _pick(rng, ("The mediastinum is widened.", "Widened mediastinal contours.",
                           "Enlarged cardiomediastinal silhouette."))
    if f.label == "Fracture":
        rib = ORDINAL[f.rib]
        if sev == "displaced":
            return _pick(rng, (f"Displaced fracture of the {side} {rib} posterior rib.",
                               f"There is a displaced {side} {rib} rib fracture."))
        return _pick(rng, (f"Nondisplaced fracture of the {side} {rib} rib.",
                           f"Nondisplaced {side} {rib} rib fracture."))
    raise KeyError(f.label)


def _uncertain(f: Finding, rng: np.random.Generator) -> str:
    """A hedged sentence: the label is -1 and the sign is faint."""
    side = f.side
    lung = f.label in ("Consolidation", "Pneumonia", "Lung Opacity", "Lung Lesion")
    w, wa = (_where(f), _where(f, adj=True)) if lung else ("", "")
    if f.label == "Pleural Effusion":
        return _pick(rng, (f"Blunting of the {side} costophrenic angle may reflect a trace effusion.",
                           f"Possible small {side} pleural effusion.",
                           f"A small {side} pleural effusion cannot be excluded."))
    if f.label == "Pneumothorax":
        return _pick(rng, (f"Possible tiny {side} apical pneumothorax.",
                           f"A small {side} pneumothorax cannot be excluded."))
    if f.label == "Consolidation":
        return _pick(rng, (f"Possible {wa} consolidation.", f"Consolidation in the {w} cannot be excluded."))
    if f.label == "Pneumonia":
        return _pick(rng, (f"Opacity in the {w} may reflect pneumonia.", f"Possible early {wa} pneumonia.",
                           f"Pneumonia in the {w} cannot be excluded.", f"Findings concerning for {wa} pneumonia."))
    if f.label == "Lung Opacity":
        return _pick(rng, (f"Possible subtle opacity in the {w}.", f"A faint {wa} opacity is questioned."))
    if f.label == "Edema":
        return _pick(rng, ("Possible mild pulmonary edema.", "Mild interstitial edema cannot be excluded."))
    if f.label == "Atelectasis":
        where = "bibasilar" if side == "bilateral" else f"{side} basilar"
        where = "right middle lobe" if f.zone == "middle" else where
        return _pick(rng, (f"Possible {where} atelectasis.", f"Minimal {where} opacity may reflect atelectasis."))
    if f.label == "Lung Lesion":
        return _pick(rng, (f"Possible {f.size_cm:.1f} cm nodule in the {w}; recommend CT.",
                           f"A nodular opacity in the {w} cannot be excluded."))
    if f.label == "Pleural Other":
        return f"Possible {side} pleural thickening."
    if f.label == "Cardiomegaly":
        return _pick(rng, ("Borderline heart size.", "The heart size is top normal to possibly mildly enlarged."))
    if f.label == "Enlarged Cardiomediastinum":
        return _pick(rng, ("Possible mediastinal widening.", "The mediastinum may be slightly widened."))
    if f.label == "Fracture":
        return f"Possible nondisplaced {side} {ORDINAL[f.rib]} rib fracture."
    raise KeyError(f.label)


def _negations(study: StudyFindings, rng: np.random.Generator) -> dict[str, str]:
    """label -> sentence; the common MIMIC triplet is merged into one sentence half the time."""
    neg = set(study.negated)
    out: dict[str, str] = {}
    trio = ("Consolidation", "Pleural Effusion", "Pneumothorax")
    if set(trio) <= neg and rng.random() < 0.5:
        out["Consolidation"] = "No focal consolidation, pleural effusion, or pneumothorax."
        neg -= set(trio)
    elif {"Pleural Effusion", "Pneumothorax"} <= neg and rng.random() < 0.5:
        out["Pleural Effusion"] = _pick(rng, ("No pleural effusion or pneumothorax.",
                                              "There is no pleural effusion or pneumothorax."))
        neg -= {"Pleural Effusion", "Pneumothorax"}
    for label in study.negated:  # the study's fixed order: iterating the set would follow PYTHONHASHSEED
        if label in neg:
            out[label] = _pick(rng, NEGATION[label])
    return out


def findings_text(study: StudyFindings, rng: np.random.Generator, tube_side: str = "left") -> str:
    """The FINDINGS paragraph: positives and negations in reading order, plus filler."""
    order = {label: i for i, label in enumerate(FINDING_ORDER)}
    negs = _negations(study, rng)
    items = [(order[f.label], 0, describe(f, rng, tube_side=tube_side)) for f in study.findings]
    items += [(order[label], 1, text) for label, text in negs.items()]
    if study.normal and rng.random() < 0.6:
        items.append((order["Lung Opacity"], 2, _pick(rng, ("The lungs are clear.", "Lungs are clear bilaterally."))))
    if rng.random() < 0.35:
        items.insert(int(rng.integers(len(items) + 1)), (len(order), 3, _pick(rng, FILLER)))
    items.sort(key=lambda t: (t[0], t[1]))
    return "  ".join(text for _, _, text in items)


def impression_text(study: StudyFindings, rng: np.random.Generator, tube_side: str = "left") -> str:
    """A short summary: the most important 1-3 findings, or a normal statement."""
    ranked = sorted(study.findings, key=lambda f: PRIORITY.index(f.label))
    if study.normal:
        text = _pick(rng, NORMAL_IMPRESSION)
        if ranked:  # devices only
            text = describe(ranked[0], rng, short=True, tube_side=tube_side) + "  " + text
        return text
    keep = [f for f in ranked if f.label != "Support Devices"][: int(rng.integers(1, 4))]
    parts = [describe(f, rng, short=True, tube_side=tube_side) for f in keep]
    if len(parts) > 1 and rng.random() < 0.5:
        return "\n".join(f"{i}. {p}" for i, p in enumerate(parts, 1))
    return "  ".join(parts)


def exam_name(views: list[str], portable: bool) -> str:
    """MIMIC's procedure description for the views taken (also the metadata CSV's)."""
    lateral = any(v in ("LATERAL", "LL") for v in views)
    if portable and not lateral:
        return "CHEST (PORTABLE AP)"
    if lateral:
        return "CHEST (PA AND LAT)" if "PA" in views else "CHEST (AP AND LAT)"
    return "CHEST (SINGLE VIEW)" if "AP" in views else "CHEST (PA)"


def _technique(views: list[str], portable: bool) -> str:
    lateral = any(v in ("LATERAL", "LL") for v in views)
    if portable and not lateral:
        return "Portable AP chest radiograph."
    if lateral:
        return "Chest PA and lateral" if "PA" in views else "AP and lateral views of the chest."
    return "Single frontal view of the chest."


def _section(header: str, body: str, same_line: bool = False) -> list[str]:
    """Wrapped lines of one section, each starting with one space (MIMIC's layout)."""
    paras = body.split("\n")
    wrapped = [textwrap.wrap(p, WIDTH - 1) or [""] for p in paras]
    lines = [" " + ln for para in wrapped for ln in para]
    if same_line and len(paras) == 1:
        first = textwrap.wrap(f"{header}:  {paras[0]}", WIDTH - 1)
        return [" " + ln for ln in first] + [" "]
    return [f" {header}: ", " ", *lines, " "]


def render_report(study: StudyFindings, views: list[str], layout: Layout, rng: np.random.Generator,
                  has_prior: bool = False, tube_side: str = "left") -> str:
    """The whole report text (``\\n`` line ends, a final newline)."""
    context = next((c for c in ("icu", "chf", "infection") if c in study.contexts), "")
    devices = study.get("Support Devices")
    if "Fracture" in {f.label for f in study.findings} and rng.random() < 0.5:
        indication = "___ M with fall  // ?fracture"
    elif context == "icu" and not (devices and "ett" in devices.devices):
        indication = _pick(rng, INDICATION["icu"][1:])  # not "intubated" without a tube
    else:
        indication = _pick(rng, INDICATION[context])
    lines = [HEADER, f" EXAMINATION:  {exam_name(views, study.portable)}", " "]
    lines += [f" {'HISTORY' if rng.random() < 0.15 else 'INDICATION'}:  {indication}", " "]
    if layout is not Layout.IMPRESSION_ONLY and rng.random() < 0.8:
        lines += [f" TECHNIQUE:  {_technique(views, study.portable)}", " "]
    prior = ("___", "___.", "Chest radiograph ___.") if has_prior else ("None.", "___", "None available.")
    comparison = _pick(rng, prior)
    lines += [f" COMPARISON:  {comparison}", " "]
    body = findings_text(study, rng, tube_side)
    summary = impression_text(study, rng, tube_side)
    if layout in (Layout.IMPRESSION_ONLY, Layout.FINDINGS_AND_IMPRESSION) and study.normal:
        body = f"{body}  {_pick(rng, NORMAL_IMPRESSION)}".strip()  # one section: it ends with the verdict
    if layout is Layout.STANDARD:
        lines += _section("FINDINGS", body) + _section("IMPRESSION", summary)
    elif layout is Layout.CONCLUSION:
        lines += _section("FINDINGS", body) + _section("CONCLUSION", summary)
    elif layout is Layout.FINDINGS_AND_IMPRESSION:
        lines += _section("FINDINGS AND IMPRESSION", body)
    else:  # impression only: the impression carries the whole description
        lines += _section("IMPRESSION", body, same_line=rng.random() < 0.3)
    notify = [f for f in study.findings if f.certain and f.label in ("Pneumothorax", "Pneumonia")]
    if notify and rng.random() < 0.3:
        lines += _section("NOTIFICATION", "The findings were discussed with Dr. ___ by Dr. ___ on the telephone "
                                          "on ___ at 3:15 PM, 5 minutes after discovery of the findings.")
    while lines and lines[-1].strip() == "":
        lines.pop()
    return "\n".join(lines) + "\n"
