"""The caveats ``comparison.md`` carries itself, so that a table pasted into slides keeps its warnings.

Checks, generic over whatever encoders and references ``comparison.json`` holds (an entry is any dict
with ``mauc`` and ``mauc_ci95``; a reference is one under a ``references`` key or named like one:
random-init, pixels, ...):

* an encoder whose 95% interval covers 0.5: no detectable label information (chance);
* an encoder whose mAUC sits below a reference of the same protocol (random init, raw pixels): the
  pretraining did not beat a baseline that needs no pretraining;
* labels with fewer than ``min_test_positives`` test positives: left out of mAUC and reported apart
  (see :mod:`cxrpipe.evaluate.stats.metrics`), named with their counts.
"""

from __future__ import annotations

from typing import Any, Iterator

CHANCE = 0.5
REFERENCES_KEY = "references"
_REFERENCE_HINTS = ("random", "pixel", "reference", "baseline")


def _is_mauc(entry: Any) -> bool:
    return isinstance(entry, dict) and "mauc" in entry and "mauc_ci95" in entry


def _is_reference_name(name: str) -> bool:
    return any(h in name.lower() for h in _REFERENCE_HINTS)


def mauc_entries(result: dict[str, Any]) -> Iterator[tuple[str | None, str, bool, dict]]:
    """(protocol or None = every protocol, name, is_reference, entry) for each mAUC entry of the result."""
    for key, value in result.items():
        if not isinstance(value, dict):
            continue
        if key == REFERENCES_KEY:  # {"references": {protocol: {name: entry}}} or {name: entry}
            for k, v in value.items():
                if _is_mauc(v):
                    yield None, k, True, v
                elif isinstance(v, dict):
                    yield from ((k, n, True, e) for n, e in v.items() if _is_mauc(e))
            continue
        for name, entry in value.items():  # {protocol: {encoder: entry, "references": {...}}}
            if _is_mauc(entry):
                yield key, name, _is_reference_name(name), entry
            elif name == REFERENCES_KEY and isinstance(entry, dict):
                yield from ((key, n, True, e) for n, e in entry.items() if _is_mauc(e))


def _fmt(entry: dict) -> str:
    lo, hi = (entry.get("mauc_ci95") or [None, None])[:2]
    m = entry["mauc"]
    if m is None:
        return "n/a"
    return f"{m:.3f}" + (f" [{lo:.3f}, {hi:.3f}]" if lo is not None and hi is not None else "")


def interval_caveats(result: dict[str, Any]) -> list[str]:
    """Warnings about encoders at chance or below a reference."""
    entries = list(mauc_entries(result))
    out = []
    for protocol, name, is_ref, e in entries:
        if is_ref or e["mauc"] is None:
            continue
        lo, hi = (e.get("mauc_ci95") or [None, None])[:2]
        if lo is not None and hi is not None and lo <= CHANCE <= hi:
            out.append(f"**{name}, {protocol}**: mAUC {_fmt(e)}: the interval covers 0.5 (chance); no detectable "
                       "label information in this encoder's features here.")
        seen: set[str] = set()  # a reference kept both protocol-free and per protocol (pixels) is warned once
        for rp, rname, r_is_ref, r in entries:
            if not r_is_ref or r["mauc"] is None or rp not in (None, protocol) or e["mauc"] >= r["mauc"]:
                continue
            if rname in seen:
                continue
            seen.add(rname)
            rlo = (r.get("mauc_ci95") or [None])[0]
            clear = hi is not None and rlo is not None and hi < rlo
            out.append(f"**{name}, {protocol}**: mAUC {_fmt(e)} is below the reference **{rname}** ({_fmt(r)})"
                       + ("; the intervals do not overlap." if clear else "; the intervals overlap."))
    return out


def low_positive_caveat(metrics: dict[str, dict], level: str) -> list[str]:
    """One line naming the labels reported apart (fewer than min_test_positives test positives)."""
    for m in metrics.values():
        block = m.get(level) or {}
        low, minimum = block.get("labels_low_positive"), block.get("min_test_positives")
        if low:
            counts = {pl["label"]: pl["n_pos"] for pl in block.get("per_label", [])}
            named = ", ".join(f"{n} ({counts.get(n, '?')} positives)" for n in low)
            return [f"Labels with fewer than {minimum} test positives are **left out of mAUC** (and of macro F1 "
                    f"and mean AUPRC) and reported apart below: {named}. Their AUROCs are too unstable to rank "
                    "encoders (`stats.min_test_positives`)."]
        if minimum is not None:
            return []
    return []


def caveat_section(result: dict[str, Any], metrics: dict[str, dict], level: str) -> list[str]:
    """Markdown lines of the "Caveats" section (always present, so its absence is never read as "none")."""
    items = interval_caveats(result) + low_positive_caveat(metrics, level)
    lines = ["## Caveats (read before quoting these numbers)", ""]
    if not items:
        return lines + ["No automatic check fired: every encoder's interval is above 0.5, none is below a "
                        "reference, and every label has enough test positives.", ""]
    return lines + [f"- {item}" for item in items] + [""]
