"""The visible sign of each finding, drawn into the layers :func:`radiograph.draw_frontal` composes.

Each sign sits where the finding's laterality and zone put it and grows with its severity; an uncertain
finding (label -1) is drawn at :data:`FAINT` strength. Layers (float32 ``[H, W]``):

* ``fill``: fraction of lung air replaced by fluid or tissue (effusion, consolidation, edema, ...);
* ``air``: extra air with no lung markings (pneumothorax);
* ``lines``: thin bright lines (visceral pleural line, Kerley B lines);
* ``devices``: tubes, lines, pacemaker (bright);
* ``marking_gain``: scale of the vessel markings (vascular congestion in edema).

Sides: the patient's right is ``-1`` (image left), the left ``+1``.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import numpy as np

from cxrpipe.data.demo.findings import Finding, StudyFindings

if TYPE_CHECKING:
    from cxrpipe.data.demo.radiograph import Frame, Thorax

FAINT = 0.45  # strength of an uncertain finding's sign
HEART_RATIO = {"mild": 0.52, "moderate": 0.56, "severe": 0.62}  # cardiothoracic ratio; healthy ~0.45
BORDERLINE_HEART = 0.50  # uncertain cardiomegaly: "borderline heart size"
EFFUSION_HEIGHT = {"small": 0.065, "moderate": 0.14, "large": 0.24}  # fluid level above the angle
PTX_DEPTH = {"small": 0.035, "moderate": 0.055, "large": 0.09}  # pleural line's distance from the wall
EDEMA_HAZE = {"mild": 0.1, "moderate": 0.17, "severe": 0.28}
DEVICE_DENSITY = 0.32
CM = 0.028  # one centimetre in height units (a ~36 cm film)


@dataclasses.dataclass
class Layers:
    fill: np.ndarray
    air: np.ndarray
    lines: np.ndarray
    devices: np.ndarray
    marking_gain: np.ndarray | float = 1.0


def sides(f: Finding) -> tuple[int, ...]:
    return {"right": (-1,), "left": (1,), "bilateral": (-1, 1)}.get(f.side, (1,))


def strength(f: Finding) -> float:
    return 1.0 if f.certain else FAINT


def segment_distance(x: np.ndarray, y: np.ndarray, p0: tuple[float, float], p1: tuple[float, float]) -> np.ndarray:
    """Distance ``[H, W]`` of every point to the segment p0-p1."""
    vx, vy = p1[0] - p0[0], p1[1] - p0[1]
    t = np.clip(((x - p0[0]) * vx + (y - p0[1]) * vy) / max(vx * vx + vy * vy, 1e-12), 0, 1)
    return np.hypot(x - p0[0] - t * vx, y - p0[1] - t * vy)


def polyline(x: np.ndarray, y: np.ndarray, points: list[tuple[float, float]], half_width: float, edge: float
             ) -> np.ndarray:
    """Soft mask ``[H, W]`` of a line ``2 * half_width`` wide through ``points``."""
    d = np.min([segment_distance(x, y, a, b) for a, b in zip(points[:-1], points[1:])], axis=0)
    return np.clip(0.5 - (d - half_width) / edge, 0, 1)


def heart_ratio(base: float, study: StudyFindings) -> float:
    """Cardiothoracic ratio the heart is drawn with."""
    f = study.get("Cardiomegaly")
    if f is None:
        return base
    return max(base, HEART_RATIO[f.severity] if f.certain else BORDERLINE_HEART)


def mediastinum_extra(study: StudyFindings) -> float:
    """How much the upper mediastinum is widened on each side (height units)."""
    f = study.get("Enlarged Cardiomediastinum")
    return 0.0 if f is None else 0.028 * strength(f)


def fracture_spec(thorax: Thorax, study: StudyFindings):
    """(side, rib, displaced, gap position) for :meth:`Thorax.ribs`, or None."""
    f = study.get("Fracture")
    if f is None:
        return None
    return sides(f)[0], f.rib, f.certain and f.severity == "displaced", 0.62 * thorax.T


def _blob(thorax: Thorax, cx: float, cy: float, sx: float, sy: float) -> np.ndarray:
    return np.exp(-(((thorax.f.x - cx) / sx) ** 2 + ((thorax.f.y - cy) / sy) ** 2))


def _patch(thorax: Thorax, f: Finding, s: int, density: float, size: float, patchy: bool) -> np.ndarray:
    """A dense (patchy) or hazy area at the finding's zone on side ``s``."""
    rng = thorax.f.rng
    cx, cy = thorax.zone_center(s, f.zone or "lower")
    cx += s * rng.uniform(-0.02, 0.03)
    cy += rng.uniform(-0.02, 0.02)
    blob = _blob(thorax, cx, cy, 0.085 * size, 0.07 * size)
    if patchy:
        blob = np.clip(1.9 * blob * (0.65 + 0.35 * thorax.f.smooth_noise(14)) - 0.35, 0, 1)
    return density * strength(f) * blob


def draw_signs(thorax: Thorax, study: StudyFindings) -> Layers:
    f0 = thorax.f
    x, y, rng = f0.x, f0.y, f0.rng
    zeros = np.zeros_like(x)
    fill, air, lines, devices = zeros.copy(), zeros.copy(), zeros.copy(), zeros.copy()
    gain: np.ndarray | float = 1.0
    T, M = thorax.T, thorax.M
    for f in study.findings:
        st = strength(f)
        if f.label == "Pleural Effusion":
            for s in sides(f):
                h = EFFUSION_HEIGHT[f.severity] * (1.0 if f.certain else 0.6)
                lat = np.clip((thorax.u - M) / (T - M), 0, 1)
                y_fluid = thorax.cp_y[s] - h - 0.8 * h * lat**3  # meniscus: higher at the chest wall
                fluid = np.clip(0.5 - (y_fluid - y) / 0.012, 0, 1) * (thorax.side == s)
                fill = np.maximum(fill, 0.95 * st * fluid)
        elif f.label == "Pneumothorax":
            s = sides(f)[0]
            depth = PTX_DEPTH[f.severity] * (1.0 if f.certain else 0.6)
            y_limit = thorax.a.apex_y + {"small": 0.2, "moderate": 0.34, "large": 0.55}[f.severity]
            depth_y = depth * np.clip((y_limit - y) / 0.08, 0, 1)  # tapers off below y_limit
            c, hw = (M + T) / 2, (T - M) / 2
            where = (thorax.side == s) & (thorax.u > c - 0.3 * hw) & (depth_y > 0.004)
            ptx = np.clip(0.5 - (-depth_y - thorax.d_wall) / f0.edge, 0, 1) * thorax.lung * where
            air = np.maximum(air, ptx)
            line = np.exp(-(((thorax.d_wall + depth_y) / 0.004) ** 2)) * thorax.lung * where
            lines += 0.12 * st * line
        elif f.label == "Consolidation":
            for s in sides(f):
                fill = np.maximum(fill, _patch(thorax, f, s, 0.9, 1.0, patchy=True))
        elif f.label == "Pneumonia":
            for s in sides(f):
                fill = np.maximum(fill, _patch(thorax, f, s, 0.7, 1.1, patchy=True))
        elif f.label == "Lung Opacity":
            for s in sides(f):
                fill = np.maximum(fill, _patch(thorax, f, s, 0.5, 1.3, patchy=f.severity == "patchy"))
        elif f.label == "Edema":
            g = EDEMA_HAZE[f.severity] * st
            hx, hy = thorax.hilum
            texture = 0.75 + 0.25 * f0.smooth_noise(12)  # uneven, not a clean gradient
            for s in (-1, 1):
                fill = np.maximum(fill, g * texture * _blob(thorax, s * (hx + 0.03), hy + 0.03, 0.13, 0.15))
                if f.severity != "severe":  # Kerley B lines: short horizontal lines at the lateral bases
                    for k in range(5):
                        yk = thorax.cp_y[s] - 0.035 - 0.02 * k
                        kerley = [(s * (T - 0.04), yk), (s * (T - 0.005), yk)]
                        lines += 0.07 * st * polyline(x, y, kerley, 0.002, f0.edge)
            gain = 1.0 + 0.6 * g
        elif f.label == "Atelectasis":
            for s in sides(f):
                if f.zone == "middle":  # right middle lobe: an opacity against the right heart border
                    cx = -(thorax.heart_half - thorax.heart_cx) - 0.035
                    fill = np.maximum(fill, 0.7 * st * _blob(thorax, cx, thorax.a.dome_y - 0.08, 0.05, 0.045))
                    continue
                y0 = thorax.cp_y[s] - thorax.a.cp_depth - 0.05 + rng.uniform(-0.02, 0.01)
                tilt = rng.uniform(-0.025, 0.025)
                half = (0.007 if f.severity == "mild" else 0.013)
                band = polyline(x, y, [(s * (M + 0.07), y0), (s * (T - 0.03), y0 + tilt)], half, 0.004)
                fill = np.maximum(fill, 0.85 * st * band)
        elif f.label == "Lung Lesion":
            s = sides(f)[0]
            cx, cy = thorax.zone_center(s, f.zone)
            cx += s * rng.uniform(-0.03, 0.04)
            cy += rng.uniform(-0.03, 0.03)
            r = 0.5 * CM * f.size_cm
            d = np.hypot(x - cx, y - cy)
            fill = np.maximum(fill, 0.9 * st * np.clip(0.5 - (d - r) / (1.5 * f0.edge), 0, 1))
        elif f.label == "Pleural Other":
            s = sides(f)[0]
            c = (M + T) / 2
            thick = rng.uniform(0.014, 0.02)
            band = (thorax.d_wall > -thick) & (thorax.u > c) & (thorax.side == s) & (thorax.d_lung < 0)
            if f.zone == "apical":
                band &= y < thorax.a.apex_y + 0.08
            else:
                band &= (y > thorax.a.apex_y + 0.15) & (y < thorax.cp_y[s] - 0.09)
            fill = np.maximum(fill, 0.85 * st * band)
        elif f.label == "Support Devices":
            devices = np.maximum(devices, _devices(thorax, study, f))
    return Layers(fill=np.clip(fill, 0, 1), air=air, lines=lines, devices=devices, marking_gain=gain)


def device_side(study: StudyFindings) -> int:
    """A chest tube goes where the air or the fluid is."""
    for label in ("Pneumothorax", "Pleural Effusion"):
        f = study.get(label)
        if f is not None:
            return sides(f)[0]
    return 1


def _devices(thorax: Thorax, study: StudyFindings, f: Finding) -> np.ndarray:
    x, y, e = thorax.f.x, thorax.f.y, thorax.f.edge
    a, T = thorax.a, thorax.T
    carina = a.apex_y + 0.21
    out = np.zeros_like(x)
    paths = {
        "ett": ([(0.0, -0.2), (0.0, carina - CM * (f.size_cm or 4.0))], 0.005),
        "ngt": ([(0.015, -0.2), (0.02, carina), (0.03, a.dome_y + 0.02), (0.45 * T, a.dome_y + 0.09)], 0.003),
        "cvc_rij": ([(-0.13, -0.05), (-0.07, 0.12), (-0.04, carina - 0.06), (-0.035, carina + 0.03)], 0.003),
        "cvc_lsc": ([(T + 0.05, 0.11), (0.3 * T, 0.16), (0.0, carina - 0.08), (-0.035, carina + 0.03)], 0.003),
        "picc": ([(-(T + 0.1), 0.2), (-T, 0.16), (-0.4 * T, 0.15), (-0.05, carina - 0.08), (-0.035, carina + 0.04)],
                 0.0025),
    }
    for name in f.devices:
        if name in paths:
            pts, half = paths[name]
            out = np.maximum(out, DEVICE_DENSITY * polyline(x, y, pts, half, e))
        elif name == "pacemaker":
            bx, by = 0.6 * T + 0.04, 0.14
            box = np.clip(0.5 - (np.maximum(np.abs(x - bx) - 0.045, np.abs(y - by) - 0.03)) / e, 0, 1)
            lead = [(bx - 0.03, by), (0.05, carina - 0.05), (-0.03, carina + 0.05), (-0.01, a.dome_y - 0.08),
                    (thorax.heart_cx + 0.04, a.dome_y - 0.03)]
            out = np.maximum(out, np.maximum(0.6 * box, DEVICE_DENSITY * polyline(x, y, lead, 0.003, e)))
        elif name == "chest_tube":
            s = device_side(study)
            pts = [(s * (T + 0.08), thorax.cp_y[s] - 0.04), (s * (T - 0.02), thorax.cp_y[s] - 0.1),
                   (s * 0.6 * T, a.apex_y + 0.07)]
            tube = polyline(x, y, pts, 0.006, e) - 0.5 * polyline(x, y, pts, 0.002, e)  # a tube: bright walls
            out = np.maximum(out, DEVICE_DENSITY * tube)
    return out


def lateral_fill(study: StudyFindings, x: np.ndarray, y: np.ndarray, dome: np.ndarray, depth: float) -> np.ndarray:
    """Side-view ``fill``: effusion in the posterior sulcus, edema haze, a consolidation blob."""
    fill = np.zeros_like(x)
    f = study.get("Pleural Effusion")
    if f is not None:
        h = EFFUSION_HEIGHT[f.severity] * (1.0 if f.certain else 0.6)
        post = np.clip((x + 0.1) / depth, 0, 1.2)
        fill = np.maximum(fill, 0.95 * strength(f) * np.clip(0.5 - (dome - h * (0.5 + post) - y) / 0.012, 0, 1))
    f = study.get("Edema")
    if f is not None:
        haze = np.exp(-((x / 0.15) ** 2 + ((y - 0.45) / 0.15) ** 2))
        fill = np.maximum(fill, EDEMA_HAZE[f.severity] * strength(f) * haze)
    f = study.get("Consolidation") or study.get("Pneumonia")
    if f is not None:
        cy = {"upper": 0.3, "middle": 0.45, "lower": 0.58}[f.zone or "lower"]
        cx = 0.12 if f.zone == "lower" else -0.05
        fill = np.maximum(fill, 0.8 * strength(f) * np.exp(-(((x - cx) / 0.09) ** 2 + ((y - cy) / 0.07) ** 2)))
    return np.clip(fill, 0, 1)


def lateral_devices(study: StudyFindings, frame: Frame) -> np.ndarray:
    f = study.get("Support Devices")
    out = np.zeros_like(frame.x)
    if f is None:
        return out
    x, y, e = frame.x, frame.y, frame.edge
    if "ett" in f.devices:
        out = np.maximum(out, DEVICE_DENSITY * polyline(x, y, [(-0.02, -0.2), (0.0, 0.3)], 0.005, e))
    if "ngt" in f.devices:
        out = np.maximum(out, DEVICE_DENSITY * polyline(x, y, [(0.04, -0.2), (0.08, 0.5), (0.02, 0.85)], 0.003, e))
    if "pacemaker" in f.devices:
        box = np.clip(0.5 - np.maximum(np.abs(x + 0.3) - 0.015, np.abs(y - 0.15) - 0.03) / e, 0, 1)
        out = np.maximum(out, 0.6 * box)
    return out
