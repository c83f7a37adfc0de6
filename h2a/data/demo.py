"""Synthetic demo dataset: left-hand radiographs whose anatomy follows bone age and sex.

WHY: the app needs a default dataset that ships with no patient data yet behaves like
RSNA Pediatric Bone Age 2017 (same folder/CSV layout, similar label distribution) and
carries real signal, so training, sex classification and clustering pages show
something meaningful out of the box. Images are drawn procedurally with numpy + OpenCV
from a seed, so the dataset is reproducible byte-for-byte and needs no download.

Anatomy model (see ../shared/CLINICAL.md): every bone is a tapered capsule or a
superellipse "blob" with a cortical shell, projected as X-ray path length. Carpal
centres appear in their textbook order; epiphyses appear as small discs, widen to the
shaft, cap it and fuse (distal phalanges first, radius last). All maturation timings
follow the label (bone age) directly with small per-image jitter; sex shows through
size (boys larger, mostly after 13 y of bone age), girls' slimmer bones and narrower
hands. Nuisance: rotation, shift, spread fingers, exposure/gamma, film noise, a
collimation border and an 'L' side marker, varying image sizes.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import re
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np

from h2a.data.pool import run_tasks
from h2a.processes import pid_alive
from h2a.progress import ProgressFn, report
from h2a.settings import get_settings

DEMO_MARKER = "SYNTHETIC.txt"
GENERATOR_VERSION = 1
TRAIN_CSV = "boneage-training-dataset.csv"
TRAIN_DIR = "boneage-training-dataset"
VAL_CSV = "boneage-validation-dataset.csv"
VAL_DIR = "boneage-validation-dataset"
MAX_BONE_AGE = 228

# ----------------------------------------------------------------------------------
# Growth and maturation tables (bone age in months)
# ----------------------------------------------------------------------------------

# Hand length (wrist to middle fingertip, cm) by bone age; boys pull ahead after ~13 y.
_L_AGE = np.array([0, 6, 12, 24, 36, 48, 60, 72, 96, 120, 144, 168, 192, 228], float)
_L_GIRL = np.array([6.0, 7.4, 8.4, 9.7, 10.6, 11.4, 12.1, 12.8, 14.0, 15.3, 16.6, 17.3, 17.5, 17.6])
_L_BOY = np.array([6.1, 7.6, 8.6, 9.9, 10.8, 11.6, 12.3, 13.0, 14.2, 15.5, 16.9, 17.9, 18.9, 19.3])

# Carpal bones: onset (months), centre (x, y) and adult semi-axes (a, b) in hand-length
# units (x toward the thumb, y distal, origin at the middle of the distal radius+ulna),
# major-axis angle (deg from +x). Positions measured off an adult RSNA radiograph.
_CARPALS: dict[str, tuple[float, float, float, float, float, float]] = {
    #             onset    x       y      a      b     angle
    "capitate": (2.0, 0.052, 0.138, 0.052, 0.038, 95.0),
    "hamate": (3.0, -0.030, 0.148, 0.046, 0.036, 75.0),
    "triquetrum": (30.0, -0.070, 0.078, 0.033, 0.027, 30.0),
    "lunate": (42.0, 0.006, 0.052, 0.036, 0.031, 10.0),
    "trapezium": (54.0, 0.178, 0.112, 0.036, 0.030, 35.0),
    "trapezoid": (66.0, 0.122, 0.150, 0.029, 0.027, 70.0),
    "scaphoid": (66.0, 0.098, 0.060, 0.052, 0.027, 50.0),
    "pisiform": (126.0, -0.086, 0.060, 0.024, 0.022, 0.0),
}
_CARPAL_FULL = 170.0  # bone age at which carpals reach adult size/shape

# Epiphysis timelines (months): onset, fusion start, fusion end.
_EPI_TIMES: dict[str, tuple[float, float, float]] = {
    "dist": (30.0, 160.0, 178.0),  # distal phalanges II-V fuse first
    "dist1": (22.0, 158.0, 176.0),  # thumb distal phalanx
    "mid": (30.0, 170.0, 190.0),
    "prox": (16.0, 170.0, 192.0),
    "mc": (20.0, 174.0, 196.0),  # metacarpals II-V (distal epiphyses)
    "mc1": (26.0, 172.0, 192.0),  # thumb metacarpal (proximal epiphysis)
    "radius": (12.0, 196.0, 218.0),  # distal radius fuses last
    "ulna": (78.0, 190.0, 212.0),
}


@dataclass(frozen=True)
class _Ray:
    """One digit: metacarpal base/head (hand units), phalanx direction and sizes."""

    name: str
    mc_base: tuple[float, float]
    mc_head: tuple[float, float]
    ph_angle: float  # deg from vertical, + toward the thumb
    ph_len: tuple[float, ...]
    mc_r: tuple[float, float]  # radius at base, head
    ph_r: tuple[tuple[float, float], ...]


_RAYS: tuple[_Ray, ...] = (
    _Ray("V", (-0.052, 0.176), (-0.118, 0.400), -25.0, (0.170, 0.100, 0.080),
         (0.026, 0.029), ((0.032, 0.024), (0.026, 0.020), (0.021, 0.012))),
    _Ray("IV", (0.002, 0.192), (-0.010, 0.462), -10.0, (0.220, 0.148, 0.090),
         (0.028, 0.032), ((0.036, 0.027), (0.030, 0.023), (0.024, 0.013))),
    _Ray("III", (0.060, 0.202), (0.100, 0.482), 0.0, (0.238, 0.158, 0.095),
         (0.030, 0.034), ((0.038, 0.028), (0.032, 0.024), (0.025, 0.014))),
    _Ray("II", (0.125, 0.206), (0.228, 0.490), 12.0, (0.205, 0.122, 0.086),
         (0.030, 0.034), ((0.037, 0.027), (0.030, 0.022), (0.024, 0.013))),
    _Ray("I", (0.200, 0.140), (0.345, 0.268), 42.0, (0.150, 0.112),
         (0.033, 0.035), ((0.038, 0.030), (0.032, 0.018))),
)


def _smooth(x: float | np.ndarray) -> float | np.ndarray:
    """Smoothstep on [0, 1]: maturation stages ease in and out rather than jump."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _ramp(m: float, a: float, b: float) -> float:
    return float(_smooth((m - a) / max(b - a, 1e-6)))


def hand_length_cm(bone_age_months: float, male: bool) -> float:
    """Mean hand length for a bone age; the main (weak) size cue for sex."""
    return float(np.interp(bone_age_months, _L_AGE, _L_BOY if male else _L_GIRL))


# ----------------------------------------------------------------------------------
# Primitive shapes, evaluated as projected thickness (cm of bone) in small ROIs
# ----------------------------------------------------------------------------------


@dataclass
class _Tube:
    """Tapered capsule a->b with a cortical shell (a tubular bone's diaphysis)."""

    a: np.ndarray
    b: np.ndarray
    r0: float
    r1: float
    waist: float = 0.3
    cort_mid: float = 0.35
    cort_end: float = 0.12
    flat: float = 1.6  # >1 flattens the end caps like articular surfaces
    flare_pow: float = 1.0  # >1: radius stays r0 then flares near b (radius, ulna)
    dens_med: float = 0.22

    def bbox(self) -> tuple[float, float, float, float]:
        r = max(self.r0, self.r1)
        return (min(self.a[0], self.b[0]) - r, min(self.a[1], self.b[1]) - r,
                max(self.a[0], self.b[0]) + r, max(self.a[1], self.b[1]) + r)

    def field(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        d = self.b - self.a
        ln = float(math.hypot(d[0], d[1])) + 1e-6
        ux, uy = d[0] / ln, d[1] / ln
        dx = X - self.a[0]
        dy = Y - self.a[1]
        along = dx * ux + dy * uy
        perp = dy * ux - dx * uy
        t = along / ln
        tc = np.clip(t, 0.0, 1.0)
        beyond = (t - tc) * ln * self.flat
        tp = tc ** self.flare_pow if self.flare_pow != 1.0 else tc
        sw = np.sin(np.pi * tc)
        R = (self.r0 + (self.r1 - self.r0) * tp) * (1.0 - self.waist * sw)
        d2 = perp * perp + beyond * beyond
        outer = np.sqrt(np.maximum(R * R - d2, 0.0))
        r = R * (1.0 - (self.cort_end + (self.cort_mid - self.cort_end) * sw))
        inner = np.sqrt(np.maximum(r * r - d2, 0.0))
        return 2.0 * (outer - (1.0 - self.dens_med) * inner)


@dataclass
class _Blob:
    """Superellipse ossification centre (carpal bone or epiphysis) with a cortex rim.

    p=2 is an ellipse (young, round centre); larger p gives the boxier outline of a
    mature carpal; ``bend`` curves it into a cap over the metaphysis. ``h`` is the
    half-thickness through the film (px) at the centre.
    """

    c: np.ndarray
    a: float
    b: float
    ang: float  # radians, image frame
    h: float
    p: float = 2.0
    bend: float = 0.0
    cort: float = 0.25
    dens_med: float = 0.45

    def bbox(self) -> tuple[float, float, float, float]:
        r = max(self.a, self.b) * (1.0 + abs(self.bend)) + 1.0
        return (self.c[0] - r, self.c[1] - r, self.c[0] + r, self.c[1] + r)

    def field(self, X: np.ndarray, Y: np.ndarray) -> np.ndarray:
        ca, sa = math.cos(self.ang), math.sin(self.ang)
        dx = X - self.c[0]
        dy = Y - self.c[1]
        u = (dx * ca + dy * sa) / self.a
        v = (dy * ca - dx * sa) / self.b
        if self.bend:
            v = v + self.bend * (u * u - 0.3)
        if self.p != 2.0:
            q = (np.abs(u) ** self.p + np.abs(v) ** self.p) ** (2.0 / self.p)
        else:
            q = u * u + v * v
        outer = np.sqrt(np.maximum(1.0 - q, 0.0))
        k = 1.0 - self.cort
        inner = k * np.sqrt(np.maximum(1.0 - q / (k * k), 0.0))
        return 2.0 * self.h * (outer - (1.0 - self.dens_med) * inner)


def _draw_group(canvas: np.ndarray, parts: list, scale: float) -> None:
    """Max-combine a bone's parts (shaft + epiphysis) in its ROI, then add to canvas.

    Max inside a bone keeps a fused epiphysis from doubling in brightness; addition
    between bones makes overlaps (pisiform on triquetrum) brighter, as on film.
    """
    H, W = canvas.shape
    x0 = min(p.bbox()[0] for p in parts)
    y0 = min(p.bbox()[1] for p in parts)
    x1 = max(p.bbox()[2] for p in parts)
    y1 = max(p.bbox()[3] for p in parts)
    ix0, iy0 = max(int(math.floor(x0)), 0), max(int(math.floor(y0)), 0)
    ix1, iy1 = min(int(math.ceil(x1)) + 1, W), min(int(math.ceil(y1)) + 1, H)
    if ix1 <= ix0 or iy1 <= iy0:
        return
    Y, X = np.mgrid[iy0:iy1, ix0:ix1].astype(np.float32)
    X += 0.5
    Y += 0.5
    acc = parts[0].field(X, Y)
    for p in parts[1:]:
        np.maximum(acc, p.field(X, Y), out=acc)
    canvas[iy0:iy1, ix0:ix1] += acc * scale


# ----------------------------------------------------------------------------------
# The renderer
# ----------------------------------------------------------------------------------


class _Frame:
    """Hand-length units (x toward thumb, y distal) -> image pixels (y down).

    ``breadth`` stretches x only: hand breadth relative to length differs by sex.
    """

    def __init__(self, origin: tuple[float, float], px_per_unit: float, angle_deg: float,
                 breadth: float = 1.0):
        self.o = np.array(origin, float)
        self.s = px_per_unit
        self.bx = breadth
        a = math.radians(angle_deg)
        self.c, self.sn = math.cos(a), math.sin(a)

    def pt(self, x: float, y: float) -> np.ndarray:
        xx, yy = x * self.bx, -y
        return self.o + self.s * np.array([self.c * xx - self.sn * yy, self.sn * xx + self.c * yy])

    def ang(self, deg_from_x: float) -> float:
        """Image-frame angle of a hand-frame direction given in degrees from +x."""
        a = math.radians(deg_from_x)
        dx, dy = math.cos(a) * self.bx, -math.sin(a)
        return math.atan2(self.sn * dx + self.c * dy, self.c * dx - self.sn * dy)


def _dir(deg_from_vertical: float) -> np.ndarray:
    a = math.radians(deg_from_vertical)
    return np.array([math.sin(a), math.cos(a)])


@dataclass(frozen=True)
class _Draws:
    """Every per-image random number the drawing stages use, bar the film's marker/noise."""

    H: int
    W: int
    m: float  # bone age with individual maturity noise (months)
    size_jit: float
    slim: float
    breadth: float
    scale_jit: float
    rot: float
    shift: np.ndarray
    spread: float
    finger_jit: np.ndarray
    time_jit: np.ndarray
    contrast: float
    gamma: float
    bg: float
    noise_sd: float
    blur_sd: float
    marker: bool
    collim: bool
    collim_level: float
    collim_in: np.ndarray
    heel: float
    soft_gain: float
    fat: float
    texture_seed: int


def _draw_params(rng: np.random.Generator, m_label: float, male: bool,
                 size: tuple[int, int] | None) -> _Draws:
    """All per-image draws, up front and in one fixed order.

    WHY the order is sacred: the dataset is reproducible byte-for-byte from its seed, and
    each draw shifts every later one (tests/test_demo_fingerprint.py pins the result).
    """
    H = int(rng.integers(256, 321))
    W = int(round(H * rng.uniform(0.75, 0.86)))
    if size is not None:
        H, W = int(size[0]), int(size[1])
    m = max(m_label + rng.normal(0.0, 2.0), 0.0)  # individual maturity noise (months)
    size_jit = math.exp(rng.normal(0.0, 0.04))
    # girls: slimmer bones and narrower hands, more so after puberty
    puberty = _ramp(m_label, 96.0, 168.0)
    slim = (1.0 if male else 0.96 - 0.04 * puberty) * math.exp(rng.normal(0.0, 0.035))
    breadth = (1.0 if male else 0.975 - 0.025 * puberty) * math.exp(rng.normal(0.0, 0.025))
    scale_jit = math.exp(rng.normal(0.0, 0.05))
    rot = rng.normal(0.0, 8.0)
    shift = rng.normal(0.0, 0.02, 2)
    spread = rng.uniform(0.55, 1.2)
    finger_jit = rng.normal(0.0, 2.5, 5)
    time_jit = np.exp(rng.normal(0.0, 0.04, 64))  # per-feature timing variation
    contrast = rng.uniform(0.7, 1.1)
    gamma = math.exp(rng.normal(0.0, 0.18))
    bg = rng.uniform(0.0, 0.12) + (rng.uniform(0.08, 0.22) if rng.random() < 0.12 else 0.0)  # washed out
    noise_sd = rng.uniform(0.008, 0.025)
    blur_sd = rng.uniform(0.45, 0.9)
    marker = rng.random() < 0.7
    collim = rng.random() < 0.3
    collim_level = rng.uniform(0.12, 0.28)
    collim_in = rng.uniform(0.015, 0.05, 4)
    heel = rng.normal(0.0, 0.04)
    soft_gain = rng.uniform(0.85, 1.15)
    fat = rng.uniform(0.92, 1.1) * (1.0 + 0.15 * (1.0 - _ramp(m_label, 0.0, 48.0)))
    texture_seed = int(rng.integers(0, 2**31 - 1))
    return _Draws(H=H, W=W, m=m, size_jit=size_jit, slim=slim, breadth=breadth, scale_jit=scale_jit,
                  rot=rot, shift=shift, spread=spread, finger_jit=finger_jit, time_jit=time_jit,
                  contrast=contrast, gamma=gamma, bg=bg, noise_sd=noise_sd, blur_sd=blur_sd,
                  marker=marker, collim=collim, collim_level=collim_level, collim_in=collim_in,
                  heel=heel, soft_gain=soft_gain, fat=fat, texture_seed=texture_seed)


_FORE_LEN = 1.4  # forearm length drawn (hand units): bones and soft tissue share it


class _Hand:
    """One hand being drawn: its frame on the film, maturity, and the two canvases.

    ``bone`` holds projected bone thickness, ``soft`` the skin silhouette. Stages call
    ``tj`` in a fixed order: each call takes the next per-feature timing jitter.
    """

    def __init__(self, d: _Draws, m_label: float, male: bool) -> None:
        self.d = d
        self.m = d.m
        self.slim = d.slim
        # --- scale: hand length in cm -> pixels; big hands fill more of the film ---
        self.L_cm = hand_length_cm(m_label, male) * d.size_jit
        h_frac = 0.7 * (self.L_cm / 19.0) ** 0.6 * d.scale_jit
        hand_px = h_frac * d.H
        tip_y = d.H * (0.53 - 0.64 * h_frac + d.shift[1])
        origin = (d.W * (0.5 + d.shift[0]) - 0.12 * hand_px, tip_y + hand_px)
        self.F = _Frame(origin, hand_px, d.rot, d.breadth)
        self.u = hand_px  # px per hand unit
        self.bone = np.zeros((d.H, d.W), np.float32)
        self.soft = np.zeros((d.H, d.W), np.uint8)
        self._ji = itertools.count()
        m = self.m
        # Bone maturity: density and cortical thickness rise with age.
        dens = 0.75 + 0.25 * _ramp(m, 0.0, 210.0)
        self.cort_mid = 0.22 + 0.16 * _ramp(m, 0.0, 200.0)
        self.cart = 0.06 - 0.045 * _ramp(m, 0.0, 190.0)  # unossified end fraction (joint space)
        # Thickness in 'adult cm' (hand units x 19): mimics per-image windowing, so a baby's
        # small hand is not just a faint ghost; density and cortex carry the maturity signal.
        self.scale_cm = dens * 19.0 / self.u

    def tj(self, t: float) -> float:
        """``t`` with the next feature's own timing jitter."""
        return t * float(self.d.time_jit[next(self._ji) % 64])

    def draw(self, parts: list) -> None:
        _draw_group(self.bone, parts, self.scale_cm)

    def epi_state(self, kind: str) -> tuple[float, float, float, float]:
        """(height growth, width fraction, cap bend, fusion) of an epiphysis, or zeros."""
        m = self.m
        on, fs, fe = _EPI_TIMES[kind]
        on, fs, fe = self.tj(on), self.tj(fs), self.tj(fe)
        if m < on:
            return 0.0, 0.0, 0.0, 0.0
        grow = float(np.clip((m - on) / 84.0, 0.0, 1.0)) ** 0.6  # quick start, slow finish
        fuse = _ramp(m, fs, fe)
        width = (0.32 + 0.7 * grow + 0.1 * _ramp(m, on + 84.0, fs)) * (1.0 - 0.12 * fuse)
        bend = 0.5 * _ramp(m, on + 72.0, fs) * (1.0 - 0.5 * fuse)
        return 0.35 + 0.65 * grow, width, bend, fuse

    def tubular(self, p0: np.ndarray, direction: np.ndarray, length: float, r0: float, r1: float,
                epi_end: str | None, kind: str | None, waist: float = 0.3,
                eh_frac: float = 0.11) -> None:
        """One tubular bone (hand units) with an optional epiphysis at 'prox'/'dist'."""
        F, u, slim = self.F, self.u, self.slim
        c_end = self.cart * length
        s0, s1 = c_end, length - c_end
        parts: list = []
        if epi_end is not None and kind is not None:
            grow, wf, bend, fuse = self.epi_state(kind)
            eh_max = eh_frac * length
            phys = 0.05 * length * (1.0 - fuse)
            shaft_gap = c_end + eh_max + phys - fuse * 0.9 * eh_max
            if grow:
                eh = eh_max * grow
                r_end = (r0 if epi_end == "prox" else r1) * slim
                off = c_end + eh_max - eh / 2.0  # the nucleus grows toward the joint
                cpos = off if epi_end == "prox" else length - off
                c = F.pt(*(p0 + direction * cpos))
                sign = 1.0 if epi_end == "prox" else -1.0
                ang = F.ang(math.degrees(math.atan2(direction[1], direction[0])) - 90.0)
                ea = wf * r_end * 1.12
                # once fused, the cortical rim fades into the shaft (a faint scar at most)
                parts.append(_Blob(c, ea * u, eh / 2.0 * u, ang, h=0.7 * ea * u,
                                   p=2.0 + 1.4 * bend, bend=sign * bend, cort=0.25 * (1.0 - 0.8 * fuse),
                                   dens_med=0.45 + 0.15 * fuse))
            if epi_end == "prox":
                s0 = shaft_gap
            else:
                s1 = length - shaft_gap
        a = F.pt(*(p0 + direction * s0))
        b = F.pt(*(p0 + direction * s1))
        parts.insert(0, _Tube(a, b, r0 * u * slim * 1.12, r1 * u * slim * 1.12, waist=waist,
                              cort_mid=self.cort_mid, cort_end=0.1, flat=1.8))
        self.draw(parts)


def _draw_forearm(hand: _Hand) -> None:
    """Radius and ulna with their distal epiphyses (the radius fuses last of all)."""
    F, u, m = hand.F, hand.u, hand.m
    for kind, x, y_end, r_prox, r_dist, tilt in (
        ("radius", 0.053, 0.0, 0.042, 0.076, 14.0),
        ("ulna", -0.091, -0.02, 0.032, 0.042, 0.0),
    ):
        grow, wf, bend, fuse = hand.epi_state(kind)
        c_e = 0.012 + 0.02 * (1.0 - _ramp(m, 0.0, 190.0))
        eh_max = 0.05 if kind == "radius" else 0.04
        phys = 0.022 * (1.0 - fuse)
        shaft_end = y_end - c_e - eh_max - phys + fuse * 0.9 * eh_max
        rsf = hand.slim * (0.85 + 0.15 * _ramp(m, 0.0, 170.0))
        parts: list = [_Tube(F.pt(x - 0.012, y_end - _FORE_LEN), F.pt(x, shaft_end),
                             r_prox * u * rsf, r_dist * u * rsf, waist=0.0, cort_mid=hand.cort_mid,
                             cort_end=0.08, flat=2.0, flare_pow=6.0, dens_med=0.12)]
        if grow:
            eh = eh_max * grow
            c = F.pt(x, y_end - c_e - eh / 2.0)
            ea = wf * r_dist * rsf
            parts.append(_Blob(c, ea * u, eh * 0.5 * u, F.ang(tilt * (0.3 + 0.7 * wf)),
                               h=0.6 * ea * u, p=2.0 + 1.2 * bend, bend=-0.5 * bend,
                               cort=0.2, dens_med=0.4))
        hand.draw(parts)


def _draw_carpals(hand: _Hand) -> None:
    """Carpals appear in their textbook order and grow from round dots to packed angular bones."""
    F, u, m = hand.F, hand.u, hand.m
    carpals: list = []
    for name, (onset, cx, cy, ca, cb, cang) in _CARPALS.items():
        on = hand.tj(onset)
        if m < on:
            continue
        full = max(_CARPAL_FULL * float(hand.d.time_jit[7]), on + 40.0)
        g = float(np.clip((m - on) / (full - on), 0.0, 1.0)) ** 0.6  # fast early growth
        sz = (0.36 + 0.64 * g) * hand.slim ** 0.5 * 1.3
        r_ = math.sqrt(ca * cb)
        a_ = (r_ + (ca - r_) * g) * sz  # round nucleus -> adult shape
        b_ = (r_ + (cb - r_) * g) * sz
        carpals.append(_Blob(F.pt(cx, cy), a_ * u, b_ * u, F.ang(cang), h=0.45 * math.sqrt(a_ * b_) * u,
                             p=2.0 + 0.9 * g, cort=0.16 + 0.06 * g, dens_med=0.5))
    if carpals:  # one group: packed neighbours meet without bright additive seams
        hand.draw(carpals)


@dataclass
class _Digits:
    """Where the rays ended up (hand units), for the soft tissue drawn around them."""

    heads: list[np.ndarray]  # metacarpal heads, rays V..I
    tips: list[np.ndarray]  # fingertips
    dirs: list[np.ndarray]  # phalanx directions


def _draw_rays(hand: _Hand) -> _Digits:
    """Metacarpals and phalanges of rays V..I, and the thumb's sesamoid after puberty."""
    d, m = hand.d, hand.m
    out = _Digits([], [], [])
    for i, ray in enumerate(_RAYS):
        thumb = ray.name == "I"
        base = np.array(ray.mc_base)
        head = np.array(ray.mc_head)
        mc_vec = head - base
        mc_len = float(np.hypot(*mc_vec))
        mcdir = mc_vec / mc_len
        if thumb:
            hand.tubular(base, mcdir, mc_len, *ray.mc_r, "prox", "mc1", waist=0.3, eh_frac=0.12)
        else:
            hand.tubular(base, mcdir, mc_len, *ray.mc_r, "dist", "mc", waist=0.32, eh_frac=0.15)
        out.heads.append(head)
        pdir = _dir(ray.ph_angle * (d.spread if not thumb else 0.5 + 0.5 * d.spread) + d.finger_jit[i])
        out.dirs.append(pdir)
        q = head + pdir * 0.004
        kinds = ("prox", "dist1") if thumb else ("prox", "mid", "dist")
        for j, (ln, kind, (r0, r1)) in enumerate(zip(ray.ph_len, kinds, ray.ph_r)):
            last = j == len(ray.ph_len) - 1
            hand.tubular(q, pdir, ln, r0, r1, "prox", kind, waist=0.42 if last else 0.27)
            q = q + pdir * (ln + 0.004)
        out.tips.append(q)
        ses_on = hand.tj(150.0) if thumb else 0.0
        if thumb and m > ses_on:  # adductor sesamoid at the thumb MCP joint (puberty)
            g = _ramp(m, ses_on, 200.0)
            c = hand.F.pt(*(head + np.array([-0.022, 0.0])))
            r = (0.007 + 0.009 * g) * hand.u
            hand.draw([_Blob(c, r, r, 0.0, h=0.8 * r, cort=0.3)])
    return out


def _soft_tissue(hand: _Hand, digits: _Digits) -> np.ndarray:
    """Soft-tissue thickness (adult cm): fingers, palm with thenar eminence, forearm."""
    F, u, fat, soft = hand.F, hand.u, hand.d.fat, hand.soft

    def ipt(pt: np.ndarray | tuple[float, float]) -> tuple[int, int]:
        v = F.pt(float(pt[0]), float(pt[1])) * 16.0  # 4 fractional bits
        return int(round(v[0])), int(round(v[1]))

    heads, tips, ph_dirs = digits.heads, digits.tips, digits.dirs
    for i, ray in enumerate(_RAYS):
        thumb = ray.name == "I"
        r_f = (0.053 if not thumb else 0.06) * fat * (ray.ph_r[0][0] / 0.038) ** 0.5
        thick = max(int(round(2 * r_f * u)), 1)
        start = heads[i] if not thumb else (np.array(ray.mc_base) + heads[i]) / 2.0
        end = tips[i] - ph_dirs[i] * 0.25 * r_f
        cv2.line(soft, ipt(start), ipt(end), 255, thick, cv2.LINE_8, 4)
        cv2.circle(soft, ipt(end), int(round(r_f * u * 16)), 255, -1, cv2.LINE_8, 4)
    h5, h4, h3, h2, h1 = heads
    d5, d4, d3, d2, _d1 = ph_dirs
    web = 0.06
    palm = [
        (-0.16 * fat, 0.0), (-0.175 * fat, 0.16), h5 + np.array([-0.055 * fat, -0.03]),
        h5 + d5 * web, (h5 + h4) / 2.0 + (d5 + d4) * web * 0.6 + np.array([0.0, 0.02]),
        h4 + d4 * web, (h4 + h3) / 2.0 + (d4 + d3) * web * 0.6 + np.array([0.0, 0.02]),
        h3 + d3 * web, (h3 + h2) / 2.0 + (d3 + d2) * web * 0.6 + np.array([0.0, 0.02]),
        h2 + d2 * web, h2 + np.array([0.05, -0.02]),
        h2 * 0.45 + h1 * 0.55 + np.array([0.0, 0.03]),  # thumb web
        h1 + np.array([0.04, -0.05]), (0.27 * fat, 0.11), (0.2 * fat, 0.02), (0.16 * fat, -0.03),
    ]
    cv2.fillPoly(soft, [np.array([ipt(pt) for pt in palm], np.int32)], 255, cv2.LINE_8, 4)
    arm = [(-0.175 * fat, 0.02), (0.18 * fat, 0.0), (0.24 * fat, -_FORE_LEN), (-0.23 * fat, -_FORE_LEN)]
    cv2.fillPoly(soft, [np.array([ipt(pt) for pt in arm], np.int32)], 255, cv2.LINE_8, 4)

    dist = cv2.distanceTransform(soft, cv2.DIST_L2, 3) * (19.0 / u)  # adult-cm to the skin
    dist = np.minimum(dist, 1.25)
    return 2.0 * np.sqrt(dist * (2.5 - dist))  # chord of a finger-sized cylinder


def _expose(hand: _Hand, t_soft: np.ndarray) -> np.ndarray:
    """X-ray formation: bone texture, attenuation -> film brightness, exposure and heel effect."""
    d = hand.d
    tex = np.random.default_rng(d.texture_seed).standard_normal((d.H, d.W), dtype=np.float32)
    tex = cv2.GaussianBlur(tex, (0, 0), 1.1)
    bone = hand.bone
    bone *= 1.0 + 0.15 * tex  # trabecular mottling
    att = (0.1 * d.soft_gain * t_soft + 1.05 * bone) * (hand.L_cm / 19.0) ** 0.25
    att = cv2.GaussianBlur(att, (0, 0), d.blur_sd)
    img = 1.0 - np.exp(-att)
    yy = np.linspace(-1.0, 1.0, d.H, dtype=np.float32)[:, None]
    img = d.bg + (1.0 - d.bg) * img * d.contrast
    return img * (1.0 + d.heel * yy)


def _film_nuisance(img: np.ndarray, d: _Draws, rng: np.random.Generator) -> np.ndarray:
    """Collimation border, side marker, gamma and film noise; then 8-bit pixels.

    Takes the image's generator after ``_draw_params``: the marker's and the noise's
    draws come last, in this order.
    """
    H, W = d.H, d.W
    if d.collim:
        x0, y0 = int(d.collim_in[0] * W), int(d.collim_in[1] * H)
        x1, y1 = W - int(d.collim_in[2] * W), H - int(d.collim_in[3] * H)
        outside = np.ones((H, W), bool)
        outside[y0:y1, x0:x1] = False
        img = np.where(outside, np.maximum(img, d.collim_level), img)
    if d.marker:
        _draw_marker(img, rng)
    img = np.clip(img, 0.0, 1.0) ** d.gamma
    noise = rng.standard_normal((H, W), dtype=np.float32)
    noise = cv2.GaussianBlur(noise, (0, 0), 0.7)
    img = img + noise * (d.noise_sd * 1.6)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8)


def render_hand(age_months: float, male: bool, seed: int,
                size: tuple[int, int] | None = None) -> np.ndarray:
    """Render one synthetic left-hand PA radiograph (uint8, H x W).

    ``age_months`` is the bone age: every maturation feature follows it (with small
    per-image jitter). ``size`` is (H, W); None draws a plausible size from the seed.
    The stages run in a fixed order: each takes its timing jitter and random numbers in turn.
    """
    rng = np.random.default_rng(seed)
    m_label = float(np.clip(age_months, 0.0, 240.0))
    d = _draw_params(rng, m_label, male, size)
    hand = _Hand(d, m_label, male)
    _draw_forearm(hand)
    _draw_carpals(hand)
    digits = _draw_rays(hand)
    t_soft = _soft_tissue(hand, digits)
    return _film_nuisance(_expose(hand, t_soft), d, rng)


def _draw_marker(img: np.ndarray, rng: np.random.Generator) -> None:
    """A lead 'L' side marker (sometimes with technologist initials), as on RSNA films.

    WHY: real films carry these bright labels in varying places; a model (and the
    clustering page) should learn to ignore them, so the demo has them too.
    """
    H, W = img.shape
    s = H / 320.0
    size = rng.uniform(0.6, 1.2) * s
    thick = max(1, int(round(rng.uniform(1.5, 3.0) * s)))
    initials = "".join(chr(65 + int(k)) for k in rng.integers(0, 26, 3))[: int(rng.integers(0, 4))]
    small = size * 0.45
    (tw, th), _ = cv2.getTextSize("L", cv2.FONT_HERSHEY_SIMPLEX, size, thick)
    (iw, ih), _ = cv2.getTextSize(initials or "X", cv2.FONT_HERSHEY_SIMPLEX, small, 1)
    bw, bh = max(tw, iw if initials else 0), th + (ih + 4 if initials else 0)
    anchor = int(rng.integers(0, 6))  # corners or the middle of a side
    fx = rng.uniform(0.03, 0.08)
    fy = rng.uniform(0.03, 0.08)
    x = int(W * fx) if anchor % 2 == 0 else W - int(W * fx) - bw
    y = (int(H * fy), H - int(H * fy) - bh, int(H * rng.uniform(0.35, 0.6)))[anchor // 2]
    level = float(rng.uniform(0.8, 1.0))
    if rng.random() < 0.4:
        pad = int(4 * s) + 1
        cv2.rectangle(img, (x - pad, y - pad), (x + bw + pad, y + bh + pad), float(rng.uniform(0.0, 0.4)), -1)
    mask = np.zeros(img.shape, np.uint8)  # putText draws on 8-bit images only
    cv2.putText(mask, "L", (x, y + th), cv2.FONT_HERSHEY_SIMPLEX, size, 255, thick, cv2.LINE_AA)
    if initials:
        cv2.putText(mask, initials, (x, y + th + ih + 4), cv2.FONT_HERSHEY_SIMPLEX, small, 255, 1, cv2.LINE_AA)
    alpha = mask.astype(np.float32) / 255.0
    img *= 1.0 - alpha
    img += alpha * level


# ----------------------------------------------------------------------------------
# Dataset generation
# ----------------------------------------------------------------------------------


# Bone-age quantiles (months) per sex of the RSNA 2017 training labels (aggregate
# statistics only): girls mean ~118 sd ~38, boys mean ~135 sd ~42, both left-skewed.
_Q_LEVELS = np.array([0, 1, 2.5, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 97.5, 99, 100]) / 100.0
_Q_GIRLS = np.array([6, 24, 36, 50, 69, 82, 94, 106, 120, 132, 144, 150, 162, 180, 186, 192, 216], float)
_Q_BOYS = np.array([1, 24, 36, 54, 72, 96, 120, 138, 150, 156, 162, 168, 180, 192, 204, 216, 228], float)
MALE_FRACTION = 0.54


def _sample_labels(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Bone ages (int months) and sex distributed like the RSNA 2017 training labels.

    Inverse-CDF sampling from per-sex quantiles; exactly round(0.54 n) boys so small
    demo sets are not lopsided by chance.
    """
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xB0]))
    male = np.zeros(n, bool)
    male[rng.permutation(n)[: int(round(MALE_FRACTION * n))]] = True
    u = rng.random(n)
    ages = np.where(male, np.interp(u, _Q_LEVELS, _Q_BOYS), np.interp(u, _Q_LEVELS, _Q_GIRLS))
    ages = np.clip(np.rint(ages), 1, MAX_BONE_AGE).astype(int)
    return ages, male


def _image_seed(seed: int, image_id: int) -> int:
    return int(np.random.SeedSequence([seed, image_id]).generate_state(1, np.uint32)[0])


def _params(n: int, seed: int, val_fraction: float) -> dict:
    return {"generator": "h2a.data.demo", "version": GENERATOR_VERSION, "n": int(n), "seed": int(seed),
            "val_fraction": round(float(val_fraction), 6)}


def _read_marker(root: Path) -> dict | None:
    path = Path(root) / DEMO_MARKER
    try:
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line.startswith("{"):
                return json.loads(line)
    except (OSError, ValueError):
        return None
    return None


def is_synthetic(root: Path) -> bool:
    """True when ``root`` is a generated demo dataset (so the UI can label it)."""
    return (Path(root) / DEMO_MARKER).is_file()


def _complete(out: Path, params: dict) -> bool:
    return _read_marker(out) == params


def _jobs(root: Path, n: int, seed: int, val_fraction: float) -> list[tuple[str, int, int, bool, int, bool]]:
    """Every image as (path, id, bone age, male, image seed, is_validation).

    A pure function of (n, seed, val_fraction), each image with its own seed, so the
    output cannot depend on how the work is split among worker processes.
    """
    ages, male = _sample_labels(n, seed)
    n_val = int(round(n * val_fraction))
    perm = np.random.default_rng(np.random.SeedSequence([seed, 0x5A])).permutation(n)
    is_val = np.zeros(n, bool)
    is_val[perm[:n_val]] = True
    out = []
    for k in range(n):
        i = k + 1
        folder = VAL_DIR if is_val[k] else TRAIN_DIR
        out.append((str(Path(root) / folder / f"{i}.png"), i, int(ages[k]), bool(male[k]),
                    _image_seed(seed, i), bool(is_val[k])))
    return out


def _render_job(job: Sequence) -> None:
    """Render and write one image; ``job`` is a row of ``_jobs`` (a list after JSON)."""
    path, _image_id, age, male, img_seed, _val = job
    img = render_hand(float(age), bool(male), img_seed)
    if not cv2.imwrite(path, img, [cv2.IMWRITE_PNG_COMPRESSION, 3]):
        raise OSError(f"could not write {path}")


def _worker_init() -> None:
    """Each worker renders on one OpenCV thread: the pool's worker count is the parallelism."""
    cv2.setNumThreads(1)


def generate_demo(out: Path, n: int = 2000, seed: int = 0, *, progress: ProgressFn | None = None,
                  workers: int | None = None, val_fraction: float = 0.15) -> Path:
    """Write a synthetic dataset in the RSNA Kaggle layout into ``out``; return ``out``.

    Idempotent (a matching marker means done) and atomic (built in a temp sibling, then
    renamed) so a crash or a concurrent call never leaves a half dataset that looks whole.
    Output depends only on (n, seed, val_fraction), never on ``workers``.
    """
    out = Path(out)
    n = int(n)
    if n < 1:
        raise ValueError("n must be at least 1")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError("val_fraction must be in [0, 1)")
    params = _params(n, seed, val_fraction)
    if _complete(out, params):
        report(progress, n, n, "synthetic demo dataset already present")
        return out
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not is_synthetic(out))):
        raise FileExistsError(f"{out} exists and is not a synthetic demo dataset; refusing to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_stale(out)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        _generate_into(tmp, n, seed, val_fraction, params, progress, workers)
        if out.exists():
            if _complete(out, params):  # a concurrent call finished first
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            old = out.parent / f".{out.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
            os.replace(out, old)  # an empty dir or an older synthetic version
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.replace(tmp, out)
        except OSError:
            if _complete(out, params):
                shutil.rmtree(tmp, ignore_errors=True)
                return out
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _clean_stale(out: Path) -> None:
    """Remove temp/old siblings of ``out`` left by a generation that was killed.

    WHY: a kill -9 cannot run cleanup, and each dead attempt would otherwise keep a
    partial copy of the dataset on disk forever. Names carry the writer's PID, so a
    generation still running (another process, or another thread of this one) is kept.
    """
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.(tmp|old)-(\d+)-[0-9a-f]{{8}}$")
    try:
        siblings = list(out.parent.iterdir())
    except OSError:
        return
    for path in siblings:
        m = pattern.match(path.name)
        if not m or not path.is_dir():
            continue
        pid = int(m.group(2))
        if pid == os.getpid() or pid_alive(pid):
            continue
        shutil.rmtree(path, ignore_errors=True)


def _generate_into(root: Path, n: int, seed: int, val_fraction: float, params: dict,
                   progress: ProgressFn | None, workers: int | None) -> None:
    jobs = _jobs(root, n, seed, val_fraction)
    (root / TRAIN_DIR).mkdir()
    (root / VAL_DIR).mkdir()

    def tf(v: bool) -> str:
        return "True" if v else "False"

    train_rows = ["id,boneage,male"]
    val_rows = ["Image ID,male,Bone Age (months)"]
    for _path, i, a, s, _seed, val in jobs:
        if val:
            val_rows.append(f"{i},{tf(s)},{a}")
        else:
            train_rows.append(f"{i},{a},{tf(s)}")
    (root / TRAIN_CSV).write_text("\n".join(train_rows) + "\n", encoding="utf-8", newline="\n")
    (root / VAL_CSV).write_text("\n".join(val_rows) + "\n", encoding="utf-8", newline="\n")

    if workers is None:  # a worker costs ~0.5 s to start: not worth it for tiny sets
        nw = min(get_settings().workers, os.cpu_count() or 1, n // 100 + 1)
    else:
        nw = min(int(workers), n)
    nw = max(nw, 1)
    report(progress, 0, n, "rendering synthetic hands")
    done = 0

    def rendered(_result: None) -> None:
        nonlocal done
        done += 1
        report(progress, done, n, "rendering synthetic hands")

    run_tasks("h2a.data.demo:_render_job", jobs, nw, rendered, initializer="h2a.data.demo:_worker_init",
              what="A demo rendering worker")
    note = (
        "SYNTHETIC DATA - NOT REAL PATIENTS.\n"
        "These hand radiographs were drawn procedurally by h2a.data.demo (numpy + OpenCV) for\n"
        "demonstration and testing only. Anatomy follows textbook skeletal maturation by\n"
        "bone age; they must never be used to judge clinical performance.\n"
        "Layout: RSNA Pediatric Bone Age 2017 (Kaggle) CSVs and PNG folders.\n"
    )
    (root / DEMO_MARKER).write_text(note + json.dumps(params, sort_keys=True) + "\n", encoding="utf-8")


def ensure_demo(n: int | None = None, seed: int | None = None,
                progress: ProgressFn | None = None) -> Path:
    """The default demo dataset under the workspace, generated on first use."""
    st = get_settings()
    n = st.demo_n if n is None else int(n)
    seed = st.demo_seed if seed is None else int(seed)
    out = st.demo_dir / f"rsna-synthetic-n{n}-s{seed}"
    return generate_demo(out, n=n, seed=seed, progress=progress)
