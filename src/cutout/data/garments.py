"""Garment silhouettes for the synthetic catalogue: outlines in canonical units (height ≈ 1, y down).

One builder per kind of product; `SILHOUETTES` maps each non-light product type to its builder (light
products borrow any of them). Outlines are smoothed polygons, straps are thin lines with a width,
seams are drawn on the fabric only (never in the mask).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

Rng = np.random.Generator


@dataclass
class Shape:
    """A product in canonical units (height ≈ 1, y down), before it is posed in the frame."""

    outlines: list[np.ndarray]  # filled closed polygons
    straps: list[tuple[np.ndarray, float]] = field(default_factory=list)  # thin lines and their widths
    seams: list[np.ndarray] = field(default_factory=list)  # stitching: drawn on the fabric, not the mask


def _smooth(points: np.ndarray | list, closed: bool = True, detail: int = 1, rounds: int = 2) -> np.ndarray:
    """Round corners by Chaikin corner cutting; ``detail`` splits edges first, for tighter corners."""
    points = np.asarray(points, dtype=np.float64)
    # First split every edge at t = 0, 1/detail, …; then cut every corner at t = 1/4 and 3/4.
    for t in [np.arange(detail) / detail] + [np.array([0.25, 0.75])] * rounds:
        nxt = np.roll(points, -1, axis=0) if closed else points[1:]
        cut = (points[: len(nxt), None] * (1 - t[:, None]) + nxt[:, None] * t[:, None]).reshape(-1, 2)
        if closed:
            points = cut
        else:  # an open line keeps its end points
            points = np.vstack([points[:1], cut, points[-1:]] if t[0] > 0 else [cut, points[-1:]])
    return points


def _mirror(right: np.ndarray | list) -> np.ndarray:
    """A left-right symmetric outline from its right half, listed top to bottom."""
    half = np.asarray(right, dtype=np.float64)
    return np.vstack([half, half[::-1] * [-1, 1]])


def _pants(rng: Rng, short: bool) -> Shape:
    """Trousers or shorts laid flat: waistband, two legs from the crotch, pockets, fly and hems."""
    waist, rise = rng.uniform(0.19, 0.25), rng.uniform(0.22, 0.3)
    hip = waist + rng.uniform(0.0, 0.04)
    leg = rng.uniform(0.12, 0.24) if short else rng.uniform(0.7, 0.95)
    hem = rng.uniform(0.24, 0.32) if short else rng.uniform(0.16, 0.24)
    legs, seams = [], [np.array([(-waist, 0.05), (waist, 0.05)])]
    for side in (1, -1):  # each leg splays on its own: a little pose variation
        splay = rng.uniform(0.02, 0.1) if short else rng.uniform(-0.02, 0.1)
        centre, y_hem = max(hip / 2 + splay, hem / 2 + 0.015), rise + leg * rng.uniform(0.95, 1.0)
        inner, outer = centre - hem / 2, centre + hem / 2
        leg_outline = [(waist, 0), (hip, 0.12), (hip + splay * 0.4, rise), (outer, y_hem), (inner, y_hem)]
        legs.append(np.array([*leg_outline, (0.012, rise + 0.02)]) * [side, 1])
        pocket = _smooth([(waist - 0.09, 0), (waist - 0.03, 0.07), (hip, 0.12)], closed=False)
        seams += [np.array([(inner, y_hem - 0.035), (outer, y_hem - 0.035)]) * [side, 1], pocket * [side, 1]]
    seams.append(_smooth([(0.04, 0.05), (0.045, rise * 0.6), (0.0, rise * 0.8)], closed=False))  # fly
    return Shape([_smooth(np.vstack([legs[0], [(0.0, rise)], legs[1][::-1]]))], [], seams)


def _top(rng: Rng, long_sleeves: bool) -> Shape:
    """A shirt, T-shirt or (one in three) flared dress laid flat, with sleeves, collar and hem."""
    shoulder, neck, armpit = rng.uniform(0.19, 0.25), rng.uniform(0.07, 0.11), rng.uniform(0.2, 0.27)
    dress = rng.random() < 0.3
    length = rng.uniform(1.1, 1.45) if dress else rng.uniform(0.65, 0.85)
    hem = shoulder * (rng.uniform(1.25, 1.8) if dress else rng.uniform(0.92, 1.08))
    t = np.linspace(0, np.pi / 2, 6)  # the neckline as a sampled arc keeps its corners crisp
    neckline = np.column_stack([neck * np.sin(t), rng.uniform(0.03, 0.14) * np.cos(t)])
    waist = (shoulder * rng.uniform(0.85, 0.97), length * 0.5)
    body = [*neckline, (shoulder, 0.05), (shoulder - 0.01, armpit), waist, (hem, length), (0, length)]
    collar = _mirror(neckline[::-1])
    collar[:, 1] += 0.025
    seams = [np.array([(-hem, length - 0.03), (hem, length - 0.03)]), collar]
    if rng.random() < 0.3:  # a shirt placket
        seams.append(np.array([(0.0, neckline[0, 1]), (0.0, length - 0.03)]))
    outlines = [_smooth(_mirror(body)[:-1])]
    for side in (1, -1):
        sleeve, cuff = _sleeve(rng, long_sleeves, shoulder, armpit)
        outlines.append(_smooth(sleeve * [side, 1], detail=3))
        seams += [cuff * [side, 1], np.array([(shoulder, 0.05), (shoulder - 0.01, armpit)]) * [side, 1]]
    return Shape(outlines, [], seams)


def _sleeve(rng: Rng, long: bool, shoulder: float, armpit: float) -> tuple[np.ndarray, np.ndarray]:
    """A right sleeve hanging outwards from the shoulder, and its cuff seam."""
    angle = np.radians(rng.uniform(14, 38) if long else rng.uniform(40, 62))
    length = rng.uniform(0.55, 0.72) if long else rng.uniform(0.2, 0.3)
    cuff = rng.uniform(0.08, 0.11) if long else rng.uniform(0.14, 0.2)
    top, along = np.array([shoulder, 0.05]), np.array([np.sin(angle), np.cos(angle)])
    end, across = top + along * length, np.array([-along[1], along[0]])
    sleeve = np.array([top, end, end + across * cuff, (shoulder - 0.01, armpit)])
    return sleeve, np.array([end, end + across * cuff]) - along * 0.04


def _bikini(rng: Rng) -> Shape:
    """Two cups and a bottom joined by thin strings: the thin structures a mask must keep."""
    strap, drop = rng.uniform(0.007, 0.013), rng.uniform(0.24, 0.32)
    cup = np.array([(0.02, 0.14), (0.14, -0.12), (0.27, 0.15)])
    inner, apex, outer = 0.5 * cup + 0.5 * cup.mean(axis=0)  # straps start inside the rounded cup
    bottom = _mirror([(0.23, drop + 0.02), (0.14, drop + 0.15), (0.05, drop + 0.32)])
    straps = [np.array([inner * [-1, 1], (0.0, inner[1] - 0.01), inner])]
    for side in (1, -1):
        tie = rng.uniform(-0.05, 0.05)
        straps.append(np.array([apex, (0.1, -0.28), (0.03 + tie, -0.42)]) * [side, 1])
        straps.append(np.array([outer, (0.38, 0.17), (0.44, 0.24 + tie)]) * [side, 1])
        hip_tie = [(0.17, drop + 0.05), (0.35, drop + 0.05), (0.38, drop + 0.16 + tie)]
        straps.append(np.array(hip_tie) * [side, 1])
    outlines = [_smooth(cup), _smooth(cup * [-1, 1]), _smooth(bottom)]
    return Shape(outlines, [(_smooth(s, closed=False), strap) for s in straps])


def _swimsuit(rng: Rng) -> Shape:
    hip, cut = rng.uniform(0.17, 0.22), rng.uniform(0.62, 0.78)
    right = [(0, 0.2), (0.1, 0.1), (0.16, 0.12), (0.18, 0.35), (0.15, 0.55), (hip, cut), (0.06, 0.93)]
    right.append((0.05, 1.0))  # the crotch
    width = rng.uniform(0.008, 0.015)
    straps = [(np.array([(0.12, 0.11), (0.1, -0.1)]) * [side, 1], width) for side in (1, -1)]
    return Shape([_smooth(_mirror(right))], straps, [np.array([(-0.06, 0.96), (0.06, 0.96)])])


def _cap(rng: Rng) -> Shape:
    t = np.linspace(np.pi, 2 * np.pi, 24)
    crown = np.column_stack([0.3 * np.cos(t), rng.uniform(0.22, 0.3) * np.sin(t)])
    brim = _smooth([(0.15, -0.02), (rng.uniform(0.5, 0.66), 0.04), (0.66, 0.09), (0.2, 0.1), (-0.3, 0.04)])
    band = np.array([(-0.3, 0.0), (0.3, 0.0), (0.3, 0.04), (-0.3, 0.04)])
    top = crown[:, 1].min()
    panels = [_smooth([(0, top), (x * 0.6, -0.15), (x, 0)], closed=False) for x in (-0.2, 0, 0.2)]
    return Shape([crown, brim, band], [], panels)


def _bag(rng: Rng) -> Shape:
    width, height, reach = rng.uniform(0.26, 0.36), rng.uniform(0.32, 0.5), rng.uniform(0.2, 0.4)
    body = _smooth(_mirror([(width * 0.9, 0.0), (width, height)]), detail=4)
    t = np.linspace(np.pi, 2 * np.pi, 16)
    straps = [(np.column_stack([width * 0.5 * np.cos(t), reach * np.sin(t)]), rng.uniform(0.02, 0.05))]
    if rng.random() < 0.4:  # a long, thin shoulder strap
        straps.append((np.column_stack([width * 0.85 * np.cos(t), 2.2 * reach * np.sin(t)]), 0.012))
    return Shape([body], straps, [np.array([(-width * 0.88, 0.06), (width * 0.88, 0.06)])])


SILHOUETTES: dict[str, Callable[[Rng], Shape]] = {
    "long_pants": lambda rng: _pants(rng, short=False),
    "shorts": lambda rng: _pants(rng, short=True),
    "short_sleeve_top": lambda rng: _top(rng, long_sleeves=False),
    "long_sleeve_top": lambda rng: _top(rng, long_sleeves=True),
    "swimwear_accessory": lambda rng: (_bikini, _swimsuit, _cap, _bag)[rng.integers(4)](rng),
}
