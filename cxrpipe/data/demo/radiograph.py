"""Synthetic chest radiographs drawn with numpy: anatomy, pose and exposure, then the findings' signs.

Geometry is analytic: every structure is a soft-edged mask over *body coordinates* (height units: ``x``
from the midline, ``+x`` toward the image's right = the patient's LEFT, as a PA/AP film is displayed; ``y``
down from the top), so pose (rotation, shift, scale) costs one coordinate transform and nothing is resampled.
An image is a density map ``D`` (soft tissue ~0.55, aerated lung ~0.15, bone and devices brighter) that the
exposure turns into pixels, plus noise. The signs of the findings are in :mod:`cxrpipe.data.demo.signs`.

Per subject (:class:`Anatomy`): rib cage width, lung height, dome heights, heart size and position.
Per image (:class:`Pose`): rotation, shift, scale, aspect, brightness, contrast, gamma, noise.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image

from cxrpipe.data.demo import signs
from cxrpipe.data.demo.findings import StudyFindings

LUNG_AIR = 0.40  # density an aerated lung removes from soft tissue (soft tissue itself: ~0.48-0.62)
BACKGROUND = 0.03  # air outside the body
PTX_EXTRA_AIR = 0.1


@dataclasses.dataclass(frozen=True)
class Anatomy:
    """One subject's thorax (height units), shared by all that subject's studies."""

    thorax_half: float  # half-width of the rib cage (lung lateral edge), ~0.36
    apex_y: float  # top of the lungs
    dome_y: float  # top of the right hemidiaphragm (the left sits lower by dome_drop)
    dome_drop: float
    cp_depth: float  # how far below the dome the lateral costophrenic angle lies
    heart_ratio: float  # cardiothoracic ratio of a healthy heart, ~0.45
    mediastinum_half: float  # half-width of the upper mediastinum
    rib_gap: float  # vertical spacing of the posterior ribs
    body_margin: float  # chest wall soft tissue outside the ribs
    soft_tissue: float  # habitus: density of the soft tissue (a larger patient: brighter, less contrast)


@dataclasses.dataclass(frozen=True)
class Pose:
    """One image's positioning and exposure."""

    angle: float  # rotation, radians
    shift_x: float  # height units
    shift_y: float
    scale: float  # body size on the film
    aspect: float  # width / height of the image
    brightness: float
    contrast: float
    gamma: float
    noise: float  # std of the pixel noise, on the [0, 1] scale
    magnification: float  # AP films magnify the heart (it is far from the detector)


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    return Anatomy(
        thorax_half=rng.uniform(0.32, 0.39),
        apex_y=rng.uniform(0.10, 0.15),
        dome_y=rng.uniform(0.60, 0.75),
        dome_drop=rng.uniform(0.01, 0.035),
        cp_depth=rng.uniform(0.05, 0.08),
        heart_ratio=float(np.clip(rng.normal(0.45, 0.03), 0.38, 0.51)),
        mediastinum_half=rng.uniform(0.045, 0.06),
        rib_gap=rng.uniform(0.052, 0.062),
        body_margin=rng.uniform(0.04, 0.09),
        soft_tissue=rng.uniform(0.48, 0.62),
    )


def sample_pose(rng: np.random.Generator, portable: bool, lateral: bool = False) -> Pose:
    """Portable (AP, bedside) films are more rotated, noisier, lower in contrast and magnify the heart."""
    tilt = 0.14 if portable else 0.08
    return Pose(
        angle=rng.uniform(-tilt, tilt),
        shift_x=rng.uniform(-0.06, 0.06),
        shift_y=rng.uniform(-0.04, 0.05),
        scale=rng.uniform(0.84, 1.06),
        aspect=rng.uniform(0.95, 1.05) if lateral else rng.uniform(0.82, 1.0),
        brightness=rng.uniform(-0.08, 0.08),
        contrast=rng.uniform(0.72, 0.95) if portable else rng.uniform(0.85, 1.15),
        gamma=rng.uniform(0.75, 1.35),
        noise=rng.uniform(0.015, 0.03) if portable else rng.uniform(0.006, 0.018),
        magnification=rng.uniform(1.04, 1.1) if portable else 1.0,
    )


def image_shape(size: int, pose: Pose) -> tuple[int, int]:
    """(rows, columns) of an image ``size`` pixels high."""
    return size, max(16, int(round(size * pose.aspect)))


@dataclasses.dataclass
class Frame:
    """Body coordinates of every pixel (``x, y``: float32 ``[H, W]``) and the soft-edge width."""

    x: np.ndarray
    y: np.ndarray
    edge: float  # one pixel in body units: masks ramp over about this width (no aliasing)
    rng: np.random.Generator

    def smooth_noise(self, cells: int = 10) -> np.ndarray:
        """Low-frequency noise ``[H, W]`` in ~[-1, 1] (bicubic upsampling of a ``cells``-grid)."""
        h, w = self.x.shape
        small = self.rng.standard_normal((cells, cells)).astype(np.float32)
        big = Image.fromarray(small, mode="F").resize((w, h), Image.BICUBIC)
        return np.clip(np.asarray(big) / 1.5, -1.5, 1.5)


def make_frame(size: int, pose: Pose, rng: np.random.Generator) -> Frame:
    h, w = image_shape(size, pose)
    py = (np.arange(h, dtype=np.float32)[:, None] + 0.5) / h - 0.5 - pose.shift_y  # [H, 1]
    px = (np.arange(w, dtype=np.float32)[None, :] + 0.5 - w / 2) / h - pose.shift_x  # [1, W]
    c, s = np.cos(pose.angle), np.sin(pose.angle)
    x = (c * px + s * py) / pose.scale  # [H, W]
    y = (-s * px + c * py) / pose.scale + 0.5
    return Frame(x=x.astype(np.float32), y=y.astype(np.float32), edge=1.2 / (h * pose.scale), rng=rng)


def soft(d: np.ndarray, edge: float) -> np.ndarray:
    """Mask from a signed distance ``d`` (negative inside): 1 inside, 0 outside, linear over ``edge``."""
    return np.clip(0.5 - d / edge, 0.0, 1.0)


class Thorax:
    """The frontal anatomy of one image, with the geometry the signs need (diaphragm, lung edges, hila)."""

    def __init__(self, anatomy: Anatomy, frame: Frame, heart_ratio: float, mediastinum_extra: float):
        a, f = anatomy, frame
        self.a, self.f = a, f
        self.T, self.M = a.thorax_half, a.mediastinum_half
        x, y = f.x, f.y
        self.side = np.where(x < 0, -1.0, 1.0).astype(np.float32)  # -1: patient's right, +1: left
        self.u = np.abs(x)  # distance from the midline, toward each lung's lateral edge
        # Hemidiaphragms: dome at 45% of the lung's width, the costophrenic angle at the lateral edge.
        dome = np.where(x < 0, a.dome_y, a.dome_y + a.dome_drop)
        xd = 0.45 * self.T
        lat = np.clip((self.u - xd) / (self.T - xd), 0, None)
        med = np.clip((xd - self.u) / xd, 0, None)
        self.diaphragm = dome + a.cp_depth * lat**2 + 0.3 * a.cp_depth * med**2  # y of the dome [H, W]
        self.cp_y = {s: a.dome_y + (a.dome_drop if s > 0 else 0.0) + a.cp_depth for s in (-1, 1)}
        # Lung edges: an elliptic apex over walls that run from the mediastinum (medial) to the rib cage
        # (lateral); the lateral wall flares out toward the base, widest at the costophrenic angle.
        self.y_mid = a.apex_y + 0.22
        c, hw = (self.M + self.T) / 2, (self.T - self.M) / 2
        t = np.clip((self.y_mid - y) / (self.y_mid - a.apex_y), 0, 1.2)
        flare = 0.06 * self.T * np.clip((y - self.y_mid) / (a.dome_y - self.y_mid), 0, 1.3)
        half = hw * np.sqrt(np.clip(1 - t**2, 0, None)) + flare / 2
        self.d_wall = np.abs(self.u - c - flare / 2) - half  # <0 between the walls (and below the apex)
        self.d_lung = np.maximum(self.d_wall, y - self.diaphragm)
        self.lung = soft(self.d_lung, f.edge)
        # Heart: a tilted ellipse on the diaphragm, 1/3 right of the midline, 2/3 left, apex down-left;
        # its width is ratio * 2T (the cardiothoracic ratio).
        width = heart_ratio * 2 * (self.T + 0.03 * self.T)
        self.heart_cx, self.heart_half = 0.17 * width, width / 2
        self.heart_cy, self.heart_b = a.dome_y - 0.035, 0.12
        ca, sa = np.cos(-0.3), np.sin(-0.3)
        hx, hy = x - self.heart_cx, y - self.heart_cy
        qh = ((ca * hx - sa * hy) / (self.heart_half / ca**0.5)) ** 2 + ((sa * hx + ca * hy) / self.heart_b) ** 2
        self.heart = soft((np.sqrt(qh) - 1) * self.heart_b, f.edge)
        # Upper mediastinum (vessels): widened by `mediastinum_extra` (enlarged cardiomediastinum).
        up = np.clip((y - a.apex_y + 0.1) / 0.2, 0, 1) * (y < self.heart_cy)
        med_half = self.M + mediastinum_extra * np.sin(np.pi * np.clip((y - 0.15) / 0.35, 0, 1))
        self.mediastinum = soft(self.u - med_half, f.edge) * up
        self.hilum = (self.M + 0.045, a.apex_y + 0.29)  # (|x|, y) of each hilum

    def zone_center(self, side: int, zone: str) -> tuple[float, float]:
        """(x, y) of a lung zone's center on one side (-1 right, +1 left)."""
        a = self.a
        y = {"upper": a.apex_y + 0.1, "middle": (a.apex_y + a.dome_y) / 2 + 0.04, "lower": a.dome_y - 0.07}[zone]
        return side * (0.55 * self.T + 0.45 * self.M + 0.02), y

    def body(self) -> np.ndarray:
        f, a = self.f, self.a
        neck = 0.09
        chest = self.T + a.body_margin
        t = np.clip((f.y + 0.02) / 0.2, 0, 1)
        half = neck + (chest - neck) * t * (2 - t) + 0.03 * np.clip((f.y - 0.3) / 0.4, 0, 1)  # sloping shoulders
        return soft(self.u - half, f.edge)

    def ribs(self, fracture=None) -> np.ndarray:
        """Posterior ribs ``[H, W]``: ten bands per side, curving down laterally.

        ``fracture``: (side, rib number, displaced, |x| of the break) from :func:`signs.fracture_spec`.
        """
        f, a = self.f, self.a
        r = self.u / self.T
        base = f.y - (a.apex_y - 0.01) + 0.025 * r - 0.11 * r**2  # constant along one rib
        phase = base / a.rib_gap  # [H, W]: rib k occupies phase in [k, k + width]
        if fracture is not None:
            fside, rib, displaced, gap_u = fracture
            k = rib - 1
            on = (self.side == fside) & (np.abs(phase - k - 0.15) < 0.6)
            lateral_piece = on & (self.u > gap_u + 0.016)
            phase = np.where(lateral_piece, phase - (0.22 if displaced else 0.07), phase)
        k = np.floor(phase)
        frac = phase - k
        width = 0.3
        band = np.clip(np.minimum(frac, width - frac) * a.rib_gap / f.edge + 0.5, 0, 1)
        band *= (k >= 0) & (k < 10) & (self.u > 0.03) & (self.u < self.T + 0.02)
        if fracture is not None:
            band *= ~(on & (self.u > gap_u) & (self.u < gap_u + 0.016) & (k == rib - 1))
        return band

    def clavicles(self) -> np.ndarray:
        out = np.zeros_like(self.f.x)
        for s in (-1, 1):
            d = signs.segment_distance(self.f.x, self.f.y, (s * 0.03, 0.17), (s * (self.T + 0.04), 0.11))
            out = np.maximum(out, soft(d - 0.011, self.f.edge))
        return out

    def markings(self) -> np.ndarray:
        """Lung vessels: tapering lines radiating from each hilum (what a pneumothorax lacks)."""
        f = self.f
        hx = self.side * self.hilum[0]
        dx, dy = f.x - hx, f.y - self.hilum[1]
        r = np.sqrt(dx * dx + dy * dy)
        theta = np.arctan2(dy, dx * self.side)
        warp = 1.2 * f.smooth_noise(8)
        vessel = (0.5 + 0.5 * np.cos(26 * theta + warp / (0.3 + 4 * r))) ** 6
        return vessel * np.exp(-r / 0.18) * np.clip(r / 0.03, 0, 1)


def apparent_heart_ratio(anatomy: Anatomy, pose: Pose, study: StudyFindings) -> float:
    """Cardiothoracic ratio as drawn: the finding's, magnified on AP films and widened by a shallow breath
    (a high diaphragm), as on real films."""
    breath = 1.0 + 0.8 * (0.68 - anatomy.dome_y)
    return signs.heart_ratio(anatomy.heart_ratio, study) * pose.magnification * breath


def draw_frontal(
    anatomy: Anatomy, pose: Pose, study: StudyFindings, size: int, rng: np.random.Generator
) -> np.ndarray:
    """A PA/AP radiograph ``[H, W]`` float32 in [0, 1] showing ``study``'s findings."""
    frame = make_frame(size, pose, rng)
    thorax = Thorax(anatomy, frame, apparent_heart_ratio(anatomy, pose, study), signs.mediastinum_extra(study))
    x, y = frame.x, frame.y
    body = thorax.body()
    spine = soft(thorax.u - 0.03, frame.edge) * (0.75 + 0.25 * np.cos(2 * np.pi * y / 0.045) ** 2)
    trachea = soft(thorax.u - 0.011, frame.edge) * (y > 0.0) * (y < anatomy.apex_y + 0.21)
    layers = signs.draw_signs(thorax, study)  # fill, extra air, lines, devices
    aerated = thorax.lung * (1 - 0.85 * thorax.heart) * (1 - thorax.mediastinum) * (1 - layers.fill)
    air = np.maximum(aerated, layers.air)
    markings = thorax.markings() * layers.marking_gain * aerated * (1 - layers.air)
    ribs = thorax.ribs(signs.fracture_spec(thorax, study)) * (1 - 0.6 * thorax.mediastinum) * (1 - 0.4 * thorax.heart)
    stomach = np.exp(-(((x - 0.45 * thorax.T) / 0.07) ** 2 + ((y - anatomy.dome_y - 0.08) / 0.035) ** 2))
    d = (
        anatomy.soft_tissue * body
        + 0.06 * thorax.heart * body
        - LUNG_AIR * air
        - PTX_EXTRA_AIR * layers.air  # no lung tissue at all in a pneumothorax
        + 0.13 * markings
        - 0.12 * trachea * (1 - layers.fill)
        - 0.12 * stomach * (y > thorax.diaphragm + 0.01)
        + 0.09 * ribs
        + 0.12 * thorax.clavicles()
        + 0.07 * spine * body
        + layers.lines
        + layers.devices
    )
    d = np.where(body > 0, d, 0) + BACKGROUND * (1 - body)
    return expose(d, pose, frame)


def draw_lateral(
    anatomy: Anatomy, pose: Pose, study: StudyFindings, size: int, rng: np.random.Generator
) -> np.ndarray:
    """A simpler side view ``[H, W]`` float32 in [0, 1]: anterior on the image's left, spine on the right.

    Shows the heart (size), effusion in the posterior costophrenic sulcus, edema haze and tube lines.
    """
    frame = make_frame(size, pose, rng)
    x, y = frame.x, frame.y
    depth = anatomy.thorax_half * 1.05
    body = soft((np.sqrt((x / (depth + 0.08)) ** 2 + ((y - 0.6) / 0.62) ** 2) - 1) * depth, frame.edge)
    dome = anatomy.dome_y + 0.12 * ((x + 0.05) / depth) ** 2  # lowest at the back: posterior sulcus
    t = np.clip((anatomy.apex_y + 0.2 - y) / 0.22, 0, 1)  # elliptic apex, as on the frontal view
    d_lung = np.maximum(np.abs(x - 0.02) - 0.85 * depth * np.sqrt(1 - t**2), y - dome)
    lung = soft(d_lung, frame.edge)
    ratio = signs.heart_ratio(anatomy.heart_ratio, study) / 0.45
    hx, hy, hr = -0.12 * depth / 0.36, anatomy.dome_y - 0.1, 0.12 * ratio
    heart = soft(np.sqrt(((x - hx) / hr) ** 2 + ((y - hy) / 0.13) ** 2) * hr - hr, frame.edge)
    spine = soft(np.abs(x - depth * 0.9) - 0.04, frame.edge) * (0.7 + 0.3 * np.cos(np.pi * y / 0.045) ** 2)
    fill = signs.lateral_fill(study, x, y, dome, depth)
    air = lung * (1 - 0.85 * heart) * (1 - fill)
    d = anatomy.soft_tissue * body + 0.05 * heart - LUNG_AIR * air + 0.1 * spine * body
    d += signs.lateral_devices(study, frame)
    d = np.where(body > 0, d, 0) + BACKGROUND * (1 - body)
    return expose(d, pose, frame)


def expose(d: np.ndarray, pose: Pose, frame: Frame) -> np.ndarray:
    """Density -> [0, 1] pixels: contrast, brightness, gamma, a soft exposure gradient and noise."""
    h, w = d.shape
    heel = np.linspace(-0.03, 0.03, w, dtype=np.float32)[None, :] * np.sign(pose.angle + 1e-9)
    img = np.clip((d - 0.3) * pose.contrast + 0.3 + pose.brightness + heel, 0, 1) ** pose.gamma
    img = img + pose.noise * frame.rng.standard_normal(d.shape, dtype=np.float32)
    return np.clip(img, 0, 1).astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 grayscale, as a JPEG stores it."""
    return np.round(img * 255).astype(np.uint8)
