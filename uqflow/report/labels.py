"""Labels for the points of a figure that neither overlap one another nor cover a marker: the
geometry behind the report's labelled scatter plots (``figures.accuracy_vs_auroc``). Written here
because matplotlib places each annotation where it is told and no library used here lays out many
labels at once."""

from __future__ import annotations

import math

import numpy as np


def label_points(ax, xy: np.ndarray, labels: list[str], fontsize: float = 8.0, marker_pt: float = 8.0):
    """Label each point with its text so that no two labels overlap and no label covers a marker.
    The first of three ways that fits: (1) every label right beside its point; (2) the labels in a
    column either side of the points, in the points' vertical order, each joined to its point by a
    thin leader line; (3) each label at the nearest free offset, with a leader line where it is set
    away. Deterministic: the same points always get the same labels."""
    fig = ax.figure
    fig.draw_without_rendering()  # settle the layout the labels must fit (they are kept out of it)
    lay = _Layout(ax, np.asarray(xy, dtype=float), labels, fontsize, marker_pt)
    plan = lay.beside() or lay.columns() or lay.greedy()
    out = []
    for i, (dx, dy, ha, va) in sorted(plan.items()):
        leader = ({"arrowstyle": "-", "color": "0.45", "lw": 0.6, "shrinkA": 0, "shrinkB": lay.half / lay.px}
                  if math.hypot(dx, dy) > 7 else None)
        ann = ax.annotate(labels[i], tuple(lay.xy[i]), xytext=(dx, dy), textcoords="offset points", ha=ha, va=va,
                          fontsize=fontsize, arrowprops=leader, annotation_clip=False)
        ann.set_in_layout(False)  # the layout was settled before the labels were placed
        out.append(ann)
    return out


class _Layout:
    """Where the labels of :func:`label_points` go, in display pixels; each way of placing them
    returns {point index: (dx, dy, ha, va)} in points, or None where it does not fit."""

    def __init__(self, ax, xy, labels, fontsize, marker_pt):
        self.ax, self.xy, self.labels, self.fontsize = ax, xy, labels, fontsize
        self.renderer = ax.figure.canvas.get_renderer()
        self.px = ax.figure.dpi / 72
        self.pts = ax.transData.transform(xy)
        self.ok = np.isfinite(self.pts).all(axis=1)
        self.half = marker_pt * self.px / 2 + 1
        self.markers = [(x - self.half, y - self.half, x + self.half, y + self.half) for x, y in self.pts[self.ok]]
        self.box = ax.get_window_extent(self.renderer)
        self.centre = self.pts[self.ok].mean(axis=0) if self.ok.any() else np.zeros(2)

    def extent(self, i, dx, dy, ha, va):
        ann = self.ax.annotate(self.labels[i], tuple(self.xy[i]), xytext=(dx, dy), textcoords="offset points",
                               ha=ha, va=va, fontsize=self.fontsize)
        bb = ann.get_window_extent(self.renderer)
        ann.remove()
        return (bb.x0 - 2, bb.y0 - 2, bb.x1 + 2, bb.y1 + 2)

    def outside(self, b) -> float:
        box = self.box
        return max(box.x0 - b[0], 0) + max(b[2] - box.x1, 0) + max(box.y0 - b[1], 0) + max(b[3] - box.y1, 0)

    @staticmethod
    def offset(r, a):
        dx, dy = r * math.cos(math.radians(a)), r * math.sin(math.radians(a))
        return dx, dy, ("left" if dx > 0.5 else "right" if dx < -0.5 else "center"), \
            ("bottom" if dy > 0.5 else "top" if dy < -0.5 else "center")

    def beside(self):
        """Every label next to its point (no leader lines), or None."""
        plan, placed = {}, []
        for i in np.flatnonzero(self.ok):
            for a in (0, 180, 90, 270, 45, 135, 315, 225):
                dx, dy, ha, va = self.offset(5, a)
                b = self.extent(i, dx, dy, ha, va)
                if not self.outside(b) and not any(_overlap(b, o) for o in placed + self.markers):
                    plan[i] = (dx, dy, ha, va)
                    placed.append(b)
                    break
            else:
                return None
        return plan

    def columns(self):
        """The labels in a column left and right of the points (points left of their centre label
        on the left), or all on one side where one side has no room; None if none fits."""
        idx = list(np.flatnonzero(self.ok))
        left = [i for i in idx if self.pts[i, 0] < self.centre[0]]
        right = [i for i in idx if i not in left]
        for split in ((left, right), ([], idx), (idx, [])):
            plan = {}
            for side, members in zip((-1, 1), split):
                part = self._column(members, side)
                if part is None:
                    break
                plan.update(part)
            else:
                return plan
        return None

    def _column(self, members, side):
        if not members:
            return {}
        sizes = {i: self.extent(i, 0, 0, "left", "center") for i in members}
        step = max(b[3] - b[1] for b in sizes.values()) + 1
        width = max(b[2] - b[0] for b in sizes.values())
        if step * len(members) > self.box.height:
            return None
        order = sorted(members, key=lambda i: (-self.pts[i, 1], i))
        want = np.array([self.pts[i, 1] for i in order])
        ys = want.copy()
        for k in range(1, len(ys)):
            ys[k] = min(ys[k], ys[k - 1] - step)
        ys += (want.mean() - ys.mean())  # as near the points as the spacing allows
        ys -= max(ys[0] + step / 2 - self.box.y1, 0)
        ys += max(self.box.y0 - (ys[-1] - step / 2), 0)
        if ys[0] + step / 2 > self.box.y1 + 0.5:
            return None
        lo, hi = ys[-1] - step, ys[0] + step
        band = self.pts[self.ok & (self.pts[:, 1] >= lo) & (self.pts[:, 1] <= hi), 0]
        gap = 16 * self.px
        x = (band.max() + gap) if side > 0 else (band.min() - gap)
        if (side > 0 and x + width > self.box.x1) or (side < 0 and x - width < self.box.x0):
            return None
        ha = "left" if side > 0 else "right"
        return {i: ((x - self.pts[i, 0]) / self.px, (y - self.pts[i, 1]) / self.px, ha, "center")
                for i, y in zip(order, ys)}

    def greedy(self):
        """Each label, from the outermost point inwards, at the nearest offset (preferring to point
        away from the others) where it covers no label or marker and its leader line crosses no
        label or other leader line; else the least crowded one."""
        plan, placed, leaders = {}, [], []
        for i in np.argsort(-np.hypot(*(self.pts - self.centre).T), kind="stable"):
            if not self.ok[i]:
                continue
            p0 = self.pts[i]
            d = p0 - self.centre
            away = math.degrees(math.atan2(d[1], d[0])) if np.hypot(*d) > 1 else 270.0
            angles = sorted(range(0, 360, 30), key=lambda a: (abs((a - away + 180) % 360 - 180), a))
            best, best_cost = None, math.inf
            for r in (5, 12, 22, 34, 48, 64, 82, 104, 128):
                for a in angles:
                    dx, dy, ha, va = self.offset(r, a)
                    b = self.extent(i, dx, dy, ha, va)
                    seg = (p0, p0 + np.array([dx, dy]) * self.px)
                    cost = sum(_overlap(b, o) for o in placed + self.markers) + 1000 * self.outside(b)
                    cost += 400 * sum(_crosses(o, b) for o in leaders)
                    if r > 5:
                        cost += 400 * sum(_crosses(seg, o) for o in placed)
                        cost += 400 * sum(_segments_cross(seg, o) for o in leaders)
                    if cost < best_cost:
                        best, best_cost = (dx, dy, ha, va, b, seg, r), cost
                    if cost == 0:
                        break
                if best_cost == 0:
                    break
            dx, dy, ha, va, b, seg, r = best
            plan[i] = (dx, dy, ha, va)
            placed.append(b)
            if r > 5:
                leaders.append(seg)
        return plan


def _overlap(a, b) -> float:
    """The area two boxes (x0, y0, x1, y1) share."""
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    return w * h if w > 0 and h > 0 else 0.0


def _segments_cross(s, t) -> bool:
    """Whether two line segments ((x, y), (x, y)) cross (touching at an end does not count)."""
    (p, q), (r, u) = s, t

    def orient(a, b, c):
        return np.sign((b[0] - a[0]) * (c[1] - a[1]) - (b[1] - a[1]) * (c[0] - a[0]))

    return (orient(p, q, r) * orient(p, q, u) < 0) and (orient(r, u, p) * orient(r, u, q) < 0)


def _crosses(seg, b) -> bool:
    """Whether a segment passes through a box (x0, y0, x1, y1), sampled along its length."""
    (x0, y0), (x1, y1) = seg
    t = np.linspace(0.08, 0.92, 24)
    xs, ys = x0 + t * (x1 - x0), y0 + t * (y1 - y0)
    return bool(((xs > b[0]) & (xs < b[2]) & (ys > b[1]) & (ys < b[3])).any())
