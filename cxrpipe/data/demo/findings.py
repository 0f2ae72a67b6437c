"""What a demo study shows: the 14 CheXpert labels sampled with plausible prevalence and co-occurrence,
plus what the labels leave out (laterality, severity, location, device names).

Co-occurrence comes from three latent clinical contexts, as in real chest X-ray populations:

* ``icu``: portable AP films of ventilated patients: support devices, atelectasis, effusion, pneumothorax;
* ``chf``: heart failure: cardiomegaly, edema, effusions, a wide cardiomediastinal silhouette;
* ``infection``: pneumonia, consolidation and lung opacity, all at one focus.

Each label is present with a noisy-OR of its base rate and the boosts of the active contexts
(:data:`PRESENCE`). A present finding is *uncertain* (label ``-1``, a faint sign, a hedged sentence) at a
per-label rate (:data:`UNCERTAIN_RATE`; pneumonia is hedged most, as in MIMIC-CXR). An absent finding is
explicitly negated in the report (label ``0``) at a per-label rate (:data:`NEGATION_RATE`), else it is
not mentioned (blank). ``No Finding`` is ``1`` when nothing but support devices is present, else blank.

Prevalences follow MIMIC-CXR's CheXpert labels (Lung Opacity, Pleural Effusion, Atelectasis, Cardiomegaly,
Support Devices ~20-30%), except that the rare labels (Fracture, Pleural Other, Lung Lesion, Enlarged
Cardiomediastinum; 1-3% in MIMIC) are raised to ~4-7% so that the demo's ~200 test studies still hold
enough positives for an AUC.

:func:`findings_from_labels` gives the same detail to a study whose labels come from elsewhere (the bench
profile's real IU X-ray reports, :mod:`cxrpipe.data.bench`), so the renderer can draw it.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping

import numpy as np

from cxrpipe.labels import CHEXPERT_LABELS

NO_FINDING = "No Finding"
SUPPORT_DEVICES = "Support Devices"
# The labels a finding can carry (all but No Finding), in the order a radiologist reads a film: devices,
# lungs, pleura, heart and mediastinum, bones. The report follows this order.
FINDING_ORDER: tuple[str, ...] = (
    "Support Devices",
    "Consolidation",
    "Pneumonia",
    "Lung Opacity",
    "Edema",
    "Atelectasis",
    "Lung Lesion",
    "Pleural Effusion",
    "Pneumothorax",
    "Pleural Other",
    "Cardiomegaly",
    "Enlarged Cardiomediastinum",
    "Fracture",
)
assert sorted(FINDING_ORDER + (NO_FINDING,)) == sorted(CHEXPERT_LABELS)

CONTEXTS = ("icu", "chf", "infection")
CONTEXT_RATE = {"icu": 0.28, "chf": 0.20, "infection": 0.17}

# label: (base rate, boost if icu, boost if chf, boost if infection), combined as a noisy-OR.
PRESENCE: dict[str, tuple[float, float, float, float]] = {
    "Atelectasis": (0.07, 0.30, 0.12, 0.10),
    "Cardiomegaly": (0.08, 0.05, 0.70, 0.00),
    "Consolidation": (0.015, 0.04, 0.00, 0.35),
    "Edema": (0.02, 0.10, 0.50, 0.00),
    "Enlarged Cardiomediastinum": (0.03, 0.03, 0.14, 0.00),
    "Fracture": (0.045, 0.02, 0.00, 0.00),
    "Lung Lesion": (0.05, 0.00, 0.00, 0.03),
    "Lung Opacity": (0.08, 0.12, 0.05, 0.55),
    "Pleural Effusion": (0.06, 0.22, 0.50, 0.10),
    "Pleural Other": (0.035, 0.00, 0.00, 0.03),
    "Pneumonia": (0.015, 0.05, 0.00, 0.50),
    "Pneumothorax": (0.035, 0.10, 0.00, 0.00),
    "Support Devices": (0.07, 0.85, 0.06, 0.00),
}
# Fraction of present findings that the report hedges ("possible", "cannot be excluded") -> label -1.
UNCERTAIN_RATE: dict[str, float] = {
    "Atelectasis": 0.18, "Cardiomegaly": 0.12, "Consolidation": 0.22, "Edema": 0.22,
    "Enlarged Cardiomediastinum": 0.20, "Fracture": 0.10, "Lung Lesion": 0.15, "Lung Opacity": 0.08,
    "Pleural Effusion": 0.12, "Pleural Other": 0.15, "Pneumonia": 0.45, "Pneumothorax": 0.10,
    "Support Devices": 0.0,
}
# Fraction of absent findings that the report negates explicitly ("No pneumothorax.") -> label 0.
NEGATION_RATE: dict[str, float] = {
    "Atelectasis": 0.10, "Cardiomegaly": 0.30, "Consolidation": 0.40, "Edema": 0.30,
    "Enlarged Cardiomediastinum": 0.25, "Fracture": 0.10, "Lung Lesion": 0.10, "Lung Opacity": 0.15,
    "Pleural Effusion": 0.55, "Pleural Other": 0.03, "Pneumonia": 0.20, "Pneumothorax": 0.60,
    "Support Devices": 0.0,
}
# Devices and how likely each is, given that the study has support devices and is (not) an ICU film.
HINT_FIELDS = ("side", "zone", "severity")  # what :func:`findings_from_labels` may take from a report
DEVICES = ("ett", "ngt", "cvc_rij", "cvc_lsc", "picc", "pacemaker", "chest_tube")
DEVICE_RATE_ICU = {"ett": 0.65, "ngt": 0.55, "cvc_rij": 0.40, "cvc_lsc": 0.12, "picc": 0.18,
                   "pacemaker": 0.08, "chest_tube": 0.10}
DEVICE_RATE_WARD = {"ett": 0.03, "ngt": 0.08, "cvc_rij": 0.10, "cvc_lsc": 0.05, "picc": 0.35,
                    "pacemaker": 0.45, "chest_tube": 0.08}


@dataclasses.dataclass(frozen=True)
class Finding:
    """One positive or uncertain finding, with the detail the report states and the image shows."""

    label: str  # a CHEXPERT_LABELS name other than "No Finding"
    certain: bool  # False: drawn faintly, the report hedges, label -1
    side: str = ""  # patient's "left" / "right" / "bilateral" ("" where it has no side)
    severity: str = ""  # label-specific grade, e.g. "small" / "moderate" / "large"
    zone: str = ""  # "upper" / "middle" / "lower" lung zone, "apical" / "lateral" for pleura
    size_cm: float = 0.0  # Lung Lesion: diameter; Support Devices: endotracheal tube tip above the carina
    rib: int = 0  # Fracture: posterior rib number (3-10)
    devices: tuple[str, ...] = ()  # Support Devices: names from DEVICES


@dataclasses.dataclass(frozen=True)
class StudyFindings:
    """Everything a study shows, and which absent findings its report negates."""

    findings: tuple[Finding, ...]  # in FINDING_ORDER
    negated: tuple[str, ...]  # absent labels negated in the report (label 0.0), in FINDING_ORDER
    contexts: tuple[str, ...]  # active latent contexts (from CONTEXTS)

    def get(self, label: str) -> Finding | None:
        for f in self.findings:
            if f.label == label:
                return f
        return None

    @property
    def portable(self) -> bool:
        """ICU films are portable AP; the view and the report's examination follow this."""
        return "icu" in self.contexts

    @property
    def normal(self) -> bool:
        """Nothing but (possibly) support devices: CheXpert's No Finding."""
        return all(f.label == SUPPORT_DEVICES for f in self.findings)

    def labels(self) -> tuple[float, ...]:
        """The 14 raw CheXpert values in CHEXPERT_LABELS order: 1.0 / 0.0 / -1.0 / nan (blank)."""
        value = {f.label: (1.0 if f.certain else -1.0) for f in self.findings}
        value.update({name: 0.0 for name in self.negated})
        if self.normal:
            value[NO_FINDING] = 1.0
        return tuple(value.get(name, float("nan")) for name in CHEXPERT_LABELS)


def _choice(rng: np.random.Generator, options: dict[str, float]) -> str:
    keys = list(options)
    p = np.array([options[k] for k in keys], dtype=float)
    return keys[int(rng.choice(len(keys), p=p / p.sum()))]


def _zone(rng: np.random.Generator, side: str) -> str:
    # the right lung has three lobes; "middle" on the left is the lingula
    return _choice(rng, {"upper": 0.25, "middle": 0.2 if side == "right" else 0.1, "lower": 0.55})


def _detail(label: str, rng: np.random.Generator, focus: tuple[str, str], contexts: set[str]) -> dict:
    """Laterality / severity / location of one finding."""
    side1 = _choice(rng, {"left": 0.5, "right": 0.5})
    if label in ("Consolidation", "Pneumonia", "Lung Opacity") and "infection" in contexts:
        return {"side": focus[0], "zone": focus[1]}  # one infectious focus carries all three labels
    if label in ("Consolidation", "Pneumonia", "Lung Opacity"):
        side = _choice(rng, {"left": 0.4, "right": 0.45, "bilateral": 0.15})
        return {"side": side, "zone": _zone(rng, side),
                "severity": _choice(rng, {"patchy": 0.6, "hazy": 0.4}) if label == "Lung Opacity" else ""}
    if label == "Pleural Effusion":
        side = _choice(rng, {"left": 0.28, "right": 0.32, "bilateral": 0.40} if "chf" in contexts
                       else {"left": 0.40, "right": 0.40, "bilateral": 0.20})
        return {"side": side, "severity": _choice(rng, {"small": 0.5, "moderate": 0.35, "large": 0.15})}
    if label == "Atelectasis":
        side = _choice(rng, {"left": 0.35, "right": 0.25, "bilateral": 0.40})
        zone = "middle" if side == "right" and rng.random() < 0.15 else "lower"
        return {"side": side, "zone": zone, "severity": _choice(rng, {"mild": 0.6, "moderate": 0.4})}
    if label == "Cardiomegaly":
        return {"severity": _choice(rng, {"mild": 0.5, "moderate": 0.35, "severe": 0.15})}
    if label == "Edema":
        return {"side": "bilateral", "severity": _choice(rng, {"mild": 0.45, "moderate": 0.4, "severe": 0.15})}
    if label in ("Enlarged Cardiomediastinum", "Support Devices"):
        return {}
    if label == "Fracture":
        return {"side": side1, "rib": int(rng.integers(3, 10)),
                "severity": _choice(rng, {"nondisplaced": 0.5, "displaced": 0.5})}
    if label == "Lung Lesion":
        size = float(np.round(rng.uniform(0.9, 2.0) if rng.random() < 0.7 else rng.uniform(3.0, 5.0), 1))
        return {"side": side1, "zone": _zone(rng, side1), "size_cm": size}
    if label == "Pleural Other":
        return {"side": side1, "zone": _choice(rng, {"apical": 0.4, "lateral": 0.6})}
    if label == "Pneumothorax":
        return {"side": side1, "severity": _choice(rng, {"small": 0.55, "moderate": 0.3, "large": 0.15})}
    raise KeyError(label)


def _devices(rng: np.random.Generator, contexts: set[str], present: set[str]) -> tuple[str, ...]:
    rates = dict(DEVICE_RATE_ICU if "icu" in contexts else DEVICE_RATE_WARD)
    if "Pneumothorax" in present:
        rates["chest_tube"] = 0.5
    chosen = [d for d in DEVICES if rng.random() < rates[d]]
    if not chosen:
        chosen = [_choice(rng, rates)]
    if "cvc_rij" in chosen and "cvc_lsc" in chosen:  # one central line is enough for a demo
        chosen.remove("cvc_lsc")
    return tuple(chosen)


def _focus(rng: np.random.Generator) -> tuple[str, str]:
    """(side, zone) of the one infectious focus that consolidation, pneumonia and opacity share."""
    side = _choice(rng, {"left": 0.4, "right": 0.45, "bilateral": 0.15})
    return side, _zone(rng, side)


def _describe(label: str, rng: np.random.Generator, focus: tuple[str, str], contexts: set[str],
              present: set[str]) -> dict:
    """The :class:`Finding` fields of a present label but ``certain``: detail, and the devices of Support Devices."""
    detail = _detail(label, rng, focus, contexts)
    if label == SUPPORT_DEVICES:
        detail["devices"] = _devices(rng, contexts, present)
        detail["size_cm"] = float(rng.integers(3, 7)) if "ett" in detail["devices"] else 0.0
    return detail


def sample_findings(rng: np.random.Generator) -> StudyFindings:
    """Draw one study's findings (deterministic given ``rng``'s state)."""
    contexts = {c for c in CONTEXTS if rng.random() < CONTEXT_RATE[c]}
    present: list[str] = []
    for label in FINDING_ORDER:
        base, *boost = PRESENCE[label]
        p_absent = (1 - base) * np.prod([1 - b for c, b in zip(CONTEXTS, boost) if c in contexts])
        if rng.random() > p_absent:
            present.append(label)
    focus = _focus(rng)
    findings = []
    for label in present:
        detail = _describe(label, rng, focus, contexts, set(present))
        certain = bool(rng.random() >= UNCERTAIN_RATE[label])
        findings.append(Finding(label=label, certain=certain, **detail))
    # A report that describes an airspace opacity does not also deny consolidation or pneumonia.
    airspace = {"Consolidation", "Pneumonia", "Lung Opacity"}
    never = airspace if airspace & set(present) else set()
    negated = tuple(
        label for label in FINDING_ORDER
        if label not in present and label not in never and rng.random() < NEGATION_RATE[label]
    )
    return StudyFindings(findings=tuple(findings), negated=negated, contexts=tuple(sorted(contexts)))


def findings_from_labels(
    labels: Mapping[str, float],
    rng: np.random.Generator,
    contexts: tuple[str, ...] = (),
    hints: Mapping[str, Mapping[str, str]] | None = None,
) -> StudyFindings:
    """The findings of a study whose labels are given (a real report's), for drawing its images.

    ``labels``: CheXpert name -> raw value; 1.0 is a finding, -1.0 an uncertain one (drawn faintly), anything
    else (0.0, blank, a missing name) absent. "No Finding" draws nothing. Laterality, severity, location and
    devices are drawn from ``rng`` as :func:`sample_findings` draws them under ``contexts`` (from
    :data:`CONTEXTS`); ``hints`` (label -> {"side" | "zone" | "severity": value}) replace the drawn value of
    a field the label has, where the report states it. Nothing is negated: no report is written from these.
    """
    present = [label for label in FINDING_ORDER if labels.get(label) in (1.0, -1.0)]
    ctx = set(contexts)
    focus = _focus(rng)
    findings = []
    for label in present:
        detail = _describe(label, rng, focus, ctx, set(present))
        detail.update({k: v for k, v in (hints or {}).get(label, {}).items() if k in detail and k in HINT_FIELDS})
        findings.append(Finding(label=label, certain=labels[label] == 1.0, **detail))
    return StudyFindings(findings=tuple(findings), negated=(), contexts=tuple(sorted(ctx)))


def negbio_variant(labels: tuple[float, ...], rng: np.random.Generator) -> tuple[float, ...]:
    """A second labeler's reading of the same report: one value changed, the way CheXpert and NegBio differ
    (an uncertain read as positive or missed, a negation missed, a positive read as uncertain)."""
    vals = list(labels)
    candidates = [i for i, v in enumerate(vals) if CHEXPERT_LABELS[i] != NO_FINDING and not np.isnan(v)]
    if not candidates:
        return labels
    i = candidates[int(rng.integers(len(candidates)))]
    v = vals[i]
    if v == -1.0:
        vals[i] = 1.0 if rng.random() < 0.5 else float("nan")
    elif v == 0.0:
        vals[i] = float("nan")
    else:
        vals[i] = -1.0
    return tuple(vals)
