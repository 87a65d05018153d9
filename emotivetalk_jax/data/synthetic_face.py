"""Procedural cartoon faces: identities, expressions, 68 landmarks, anti-aliased frames.

Geometry lives in face-local units: origin at the face centre, X to the image right, Y
down, 1 unit = the face half-width. A head pose (shift, roll) maps it to pixels. Every
shape is an implicit function f(X, Y) <= 0; its coverage of a pixel is
clip(0.5 - f / |grad f|, 0, 1) with the gradient measured in pixels, which gives
anti-aliased edges whose column sums are exact to a fraction of a pixel (the property
the measurement functions in `measure.py` rely on). numpy only.

Per-frame state (all float): opening, width (mouth, from the audio), brow_raise,
brow_inner, eye_open, corner (expression), dx, dy (image fractions), roll (degrees).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from emotivetalk_jax.data.synthetic_speech import EMOTIONS, Voice

# Expression prototypes: (brow_raise, brow_inner, eye_open, corner).
EXPRESSION_KEYS = ("brow_raise", "brow_inner", "eye_open", "corner")
NEUTRAL_EXPRESSION = np.array([0.0, 0.0, 1.0, 0.0], np.float32)
PROTOTYPES = {
    "neutral": (0.0, 0.0, 1.0, 0.0),
    "happy": (0.3, 0.0, 0.62, 1.0),
    "angry": (-0.9, -1.0, 1.2, -0.5),
    "sad": (-0.2, 0.9, 0.65, -1.0),
    "surprised": (1.0, 0.0, 1.5, 0.0),
    "fearful": (0.7, 0.8, 1.4, -0.5),
    "disgusted": (-0.6, -0.3, 0.5, -0.9),
    "worried": (0.3, 1.0, 1.05, -0.3),
}
PROTOTYPE_ARRAY = np.array([PROTOTYPES[e] for e in EMOTIONS], np.float32)  # (8, 4)

OMAX = 0.30  # cavity height at opening 1 (local units)
LIP = 0.09  # lip thickness
CORNER = 0.09  # corner lift at corner = 1
BROW_OFF, BROW_RAISE, BROW_INNER, BROW_HALF, BROW_R = 0.42, 0.10, 0.05, 0.16, 0.045
NOSE_Y = 0.18
CAVITY_RGB = (0.30, 0.05, 0.08)
EYE_WHITE_RGB = (0.96, 0.96, 0.94)
STATE_KEYS = ("opening", "width", *EXPRESSION_KEYS, "dx", "dy", "roll")

_SKINS = np.array([[0.98, 0.84, 0.72], [0.92, 0.72, 0.58], [0.78, 0.57, 0.42], [0.58, 0.40, 0.27], [0.42, 0.28, 0.19]])
_HAIRS = np.array([[0.12, 0.09, 0.07], [0.35, 0.22, 0.12], [0.80, 0.64, 0.32], [0.62, 0.25, 0.10], [0.62, 0.62, 0.64]])
_IRIS = np.array([[0.30, 0.18, 0.08], [0.20, 0.40, 0.65], [0.25, 0.45, 0.25], [0.12, 0.10, 0.10]])


@dataclasses.dataclass(frozen=True)
class Identity:
    """One synthetic person. Positions/sizes are fractions of the image side."""

    cx: float
    cy: float
    size: float  # face half-width
    aspect: float  # half-height / half-width
    chin: float
    eye_sep: float  # half distance between eye centres (local units)
    eye_w: float
    mouth_w: float
    hair_style: int  # 0 short, 1 long, 2 bald, 3 big
    skin: tuple[float, float, float]
    hair: tuple[float, float, float]
    iris: tuple[float, float, float]
    lip: tuple[float, float, float]
    shirt: tuple[float, float, float]
    background: tuple[float, float, float]
    background2: tuple[float, float, float]
    voice_f0: float
    voice_tract: float

    @property
    def voice(self) -> Voice:
        return Voice(self.voice_f0, self.voice_tract)

    @property
    def brow(self) -> np.ndarray:
        return np.asarray(self.hair) * 0.45

    @property
    def nose(self) -> np.ndarray:
        return np.asarray(self.skin) * 0.78

    @property
    def neck(self) -> np.ndarray:
        return np.asarray(self.skin) * 0.88

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @staticmethod
    def from_dict(d: dict) -> Identity:
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return Identity(**kw)

    @staticmethod
    def sample(rng: np.random.Generator, variation: float = 1.0) -> Identity:
        """A random identity; `variation` in [0, 1] scales the spread of geometry."""
        v = float(np.clip(variation, 0.0, 1.0))

        def u(lo, hi):
            mid = 0.5 * (lo + hi)
            return float(mid + v * (rng.uniform(lo, hi) - mid))

        skin = _mix(_SKINS, rng.uniform(0, len(_SKINS) - 1))
        hair = _HAIRS[rng.integers(len(_HAIRS))] * rng.uniform(0.85, 1.1)
        lip = 0.25 * skin + 0.75 * np.array([0.86, 0.26, 0.33])  # contrasts with every skin tone
        bg = _background_colour(rng, skin, hair)
        shirt = rng.uniform(0.1, 0.9, 3)
        voice = Voice.sample(rng)
        return Identity(
            cx=u(0.45, 0.55), cy=u(0.44, 0.52), size=u(0.25, 0.31), aspect=u(1.2, 1.38), chin=u(0.0, 0.35),
            eye_sep=u(0.36, 0.46), eye_w=u(0.16, 0.20), mouth_w=u(0.36, 0.44), hair_style=int(rng.integers(4)),
            skin=_t(skin), hair=_t(np.clip(hair, 0, 1)), iris=_t(_IRIS[rng.integers(len(_IRIS))]), lip=_t(lip),
            shirt=_t(shirt), background=_t(bg), background2=_t(np.clip(bg * rng.uniform(0.8, 1.2, 3), 0, 1)),
            voice_f0=voice.f0, voice_tract=voice.tract,
        )

    # local-frame anchors
    @property
    def eye_y(self) -> float:
        return -0.12 * self.aspect

    @property
    def mouth_y(self) -> float:
        return 0.52 * self.aspect


def _t(x) -> tuple[float, float, float]:
    return tuple(round(float(c), 4) for c in x)


def _mix(table: np.ndarray, pos: float) -> np.ndarray:
    i = min(int(pos), len(table) - 2)
    a = pos - i
    return (1 - a) * table[i] + a * table[i + 1]


def _background_colour(rng, skin, hair) -> np.ndarray:
    for _ in range(100):
        bg = rng.uniform(0.15, 0.95, 3)
        if np.abs(bg - skin).sum() > 0.6 and np.abs(bg - hair).sum() > 0.45:
            return bg
    return np.array([0.3, 0.5, 0.8])


def expression(emotion: str | int, intensity: np.ndarray | float) -> np.ndarray:
    """Expression vectors (..., 4): neutral + intensity * (prototype - neutral)."""
    k = EMOTIONS.index(emotion) if isinstance(emotion, str) else int(emotion)
    s = np.asarray(intensity, np.float32)[..., None]
    return NEUTRAL_EXPRESSION + s * (PROTOTYPE_ARRAY[k] - NEUTRAL_EXPRESSION)


def neutral_state(num_frames: int = 1) -> np.ndarray:
    """(F, 9) state with a closed mouth, rest width, neutral face, no motion."""
    st = np.zeros((num_frames, len(STATE_KEYS)), np.float32)
    st[:, 1] = 0.5
    st[:, 2:6] = NEUTRAL_EXPRESSION
    return st


# ----------------------------------------------------------------------------- geometry


def _pose(ident: Identity, st: np.ndarray, size: int):
    """Pixel <-> local transform for one frame state: (centre px, scale px/unit, roll rad)."""
    c = np.array([(ident.cx + st[6]) * size, (ident.cy + st[7]) * size])
    return c, ident.size * size, math.radians(float(st[8]))


def to_pixels(ident: Identity, st: np.ndarray, size: int, pts: np.ndarray) -> np.ndarray:
    """Local (N, 2) -> pixel (N, 2) coordinates (x, y), pixel centres at integer + 0.5."""
    c, s, r = _pose(ident, st, size)
    rot = np.array([[math.cos(r), -math.sin(r)], [math.sin(r), math.cos(r)]])
    return pts @ rot.T * s + c


def _mouth_curves(ident: Identity, st: np.ndarray):
    w = ident.mouth_w * (0.8 + 0.4 * float(st[1]))
    h0 = 0.5 * OMAX * float(np.clip(st[0], 0, 1))
    k = CORNER * float(st[5])
    return w, 0.85 * w, h0, k


def _brow_segments(ident: Identity, st: np.ndarray):
    """[(inner (x, y), outer (x, y))] for the image-left and image-right brows."""
    yb = ident.eye_y - BROW_OFF - BROW_RAISE * float(st[2])
    d = BROW_INNER * float(st[3])
    segs = []
    for side in (-1, 1):
        xc = side * ident.eye_sep
        inner = (xc - side * BROW_HALF, yb - d)
        outer = (xc + side * BROW_HALF, yb + d)
        segs.append((inner, outer))
    return segs


def landmarks(ident: Identity, st: np.ndarray, size: int) -> np.ndarray:
    """The 68 points in dlib / iBUG-300W order, pixel (x, y), for one frame state (9,)."""
    a, chin = ident.aspect, ident.chin
    pts = np.zeros((68, 2))
    th = np.linspace(1.12 * math.pi, -0.12 * math.pi, 17)  # image-left ear -> chin -> image-right ear
    y = a * np.sin(th)
    pts[0:17] = np.stack([np.cos(th) / (1 + chin * np.clip(y / a, 0, None)), y], -1)
    (li, lo), (ri, ro) = _brow_segments(ident, st)
    t = np.linspace(0, 1, 5)[:, None]
    pts[17:22] = np.asarray(lo) + t * (np.asarray(li) - np.asarray(lo))
    pts[22:27] = np.asarray(ri) + t * (np.asarray(ro) - np.asarray(ri))
    ny = NOSE_Y * a
    pts[27:31] = np.stack([np.zeros(4), np.linspace(ident.eye_y, ny, 4)], -1)
    pts[31:36] = np.stack([np.linspace(-0.14, 0.14, 5), np.full(5, ny + 0.05) - np.array([0, 0.02, 0.03, 0.02, 0])], -1)
    ew, eh = ident.eye_w, 0.5 * ident.eye_w * float(st[4])
    # dlib order per eye: outer-left corner, two upper, right corner, two lower (clockwise)
    ang = np.array([math.pi, 2 * math.pi / 3, math.pi / 3, 0.0, -math.pi / 3, -2 * math.pi / 3])
    for j, side in ((36, -1), (42, 1)):
        pts[j : j + 6] = np.stack([side * ident.eye_sep + ew * np.cos(ang), ident.eye_y - eh * np.sin(ang)], -1)
    w, wi, h0, k = _mouth_curves(ident, st)
    my = ident.mouth_y
    xs = np.linspace(-w, w, 7)
    yc = my - k * (xs / w) ** 2
    ho = h0 * np.sqrt(np.clip(1 - (xs / wi) ** 2, 0, 1)) + LIP * np.sqrt(np.clip(1 - (xs / w) ** 2, 0, 1))
    pts[48:55] = np.stack([xs, yc - ho], -1)
    pts[55:60] = np.stack([xs[5:0:-1], (yc + ho)[5:0:-1]], -1)
    xi = np.linspace(-wi, wi, 5)
    yi = my - k * (xi / w) ** 2
    hi = h0 * np.sqrt(np.clip(1 - (xi / wi) ** 2, 0, 1))
    pts[60:65] = np.stack([xi, yi - hi], -1)
    pts[65:68] = np.stack([xi[3:0:-1], (yi + hi)[3:0:-1]], -1)
    return to_pixels(ident, st, size, pts).astype(np.float32)


# ----------------------------------------------------------------------------- render


def _grad_mag(f: np.ndarray) -> np.ndarray:
    """Per-pixel slope bound: max of forward/backward differences on each axis."""
    p = np.pad(f, 1, mode="edge")
    dx = np.maximum(np.abs(p[1:-1, 2:] - f), np.abs(f - p[1:-1, :-2]))
    dy = np.maximum(np.abs(p[2:, 1:-1] - f), np.abs(f - p[:-2, 1:-1]))
    return np.hypot(dx, dy) + 1e-9


class _Canvas:
    def __init__(self, ident: Identity, st: np.ndarray, size: int, bg: np.ndarray):
        self.img = bg.copy()
        self.size = size
        c, s, r = _pose(ident, st, size)
        self.c, self.s, self.r = c, s, r
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        px, py = xs - c[0], ys - c[1]
        cr, sr = math.cos(r), math.sin(r)
        self.X = (cr * px + sr * py) / s
        self.Y = (-sr * px + cr * py) / s
        self.rot = np.array([[cr, -sr], [sr, cr]])

    def paint(self, colour, fn, box) -> None:
        x0, y0, x1, y1 = box
        corners = np.array([[x0, y0], [x1, y0], [x0, y1], [x1, y1]]) @ self.rot.T * self.s + self.c
        lo = np.floor(corners.min(0)).astype(int) - 2
        hi = np.ceil(corners.max(0)).astype(int) + 2
        lo, hi = np.clip(lo, 0, self.size), np.clip(hi, 0, self.size)
        if hi[0] - lo[0] < 3 or hi[1] - lo[1] < 3:
            return
        sl = (slice(lo[1], hi[1]), slice(lo[0], hi[0]))
        f = fn(self.X[sl], self.Y[sl])
        cov = np.clip(0.5 - f / _grad_mag(f), 0.0, 1.0)[..., None]
        self.img[sl] += cov * (np.asarray(colour, np.float32) - self.img[sl])


def _ellipse(cx, cy, rx, ry):
    return lambda X, Y: np.sqrt(((X - cx) / rx) ** 2 + ((Y - cy) / ry) ** 2) - 1.0


def _capsule(p, q, r):
    p, q = np.asarray(p), np.asarray(q)
    d = q - p

    def f(X, Y):
        t = np.clip(((X - p[0]) * d[0] + (Y - p[1]) * d[1]) / (d @ d), 0, 1)
        return np.hypot(X - p[0] - t * d[0], Y - p[1] - t * d[1]) - r

    return f


def render_frame(ident: Identity, st: np.ndarray, size: int) -> np.ndarray:
    """One (size, size, 3) float32 frame in [0, 1] for a state vector (9,)."""
    a = ident.aspect
    ys = (np.arange(size, dtype=np.float32)[:, None, None] + 0.5) / size
    bg = (1 - ys) * np.asarray(ident.background, np.float32) + ys * np.asarray(ident.background2, np.float32)
    cv = _Canvas(ident, st, size, np.broadcast_to(bg, (size, size, 3)).astype(np.float32))
    hair, skin = ident.hair, ident.skin
    # behind the head
    if ident.hair_style == 1:
        back = _ellipse(0, 0.15 * a, 1.25, 1.2 * a)
        cv.paint(hair, lambda X, Y: np.maximum(back(X, Y), Y - 1.1 * a), (-1.3, -1.3 * a, 1.3, 1.2 * a))
    elif ident.hair_style == 3:
        cv.paint(hair, _ellipse(0, -0.55 * a, 1.35, 0.85 * a), (-1.4, -1.45 * a, 1.4, 0.35 * a))
    cv.paint(ident.shirt, _ellipse(0, a + 1.5, 2.0, 1.0), (-2.1, a + 0.45, 2.1, 2.6 + a))
    cv.paint(ident.neck, lambda X, Y: np.maximum(np.abs(X) - 0.42, np.abs(Y - (a + 0.3)) - 0.6), (-0.5, 0.2 * a, 0.5, a + 1.0))
    for side in (-1, 1):
        cv.paint(skin, _ellipse(side * 0.98, ident.eye_y + 0.18, 0.14, 0.24), (side * 0.98 - 0.2, -0.3, side * 0.98 + 0.2, 0.4))
    chin = ident.chin

    def face(X, Y):
        return np.sqrt((X * (1 + chin * np.clip(Y / a, 0, None))) ** 2 + (Y / a) ** 2) - 1.0

    cv.paint(skin, face, (-1.05, -1.05 * a, 1.05, 1.05 * a))
    if ident.hair_style != 2:
        cap = _ellipse(0, -0.02 * a, 1.07, 1.06 * a)
        line = -0.72 * a
        cv.paint(hair, lambda X, Y: np.maximum(cap(X, Y), Y - (line + 0.12 * X**2)), (-1.1, -1.1 * a, 1.1, -0.4 * a))
    # eyes
    ew, eh = ident.eye_w, 0.5 * ident.eye_w * max(float(st[4]), 0.05)
    for side in (-1, 1):
        ex = side * ident.eye_sep
        white = _ellipse(ex, ident.eye_y, ew, eh)
        box = (ex - ew - 0.05, ident.eye_y - eh - 0.05, ex + ew + 0.05, ident.eye_y + eh + 0.05)
        cv.paint(EYE_WHITE_RGB, white, box)
        iris = _ellipse(ex, ident.eye_y, 0.5 * ew, 0.5 * ew)
        cv.paint(ident.iris, lambda X, Y, w=white, i=iris: np.maximum(w(X, Y), i(X, Y)), box)
    for inner, outer in _brow_segments(ident, st):
        xs = sorted([inner[0], outer[0]])
        cv.paint(ident.brow, _capsule(inner, outer, BROW_R), (xs[0] - 0.08, min(inner[1], outer[1]) - 0.08, xs[1] + 0.08, max(inner[1], outer[1]) + 0.08))
    ny = NOSE_Y * a
    cv.paint(ident.nose, _ellipse(0, ny, 0.12, 0.06), (-0.16, ny - 0.1, 0.16, ny + 0.1))
    # mouth
    w, wi, h0, k = _mouth_curves(ident, st)
    my = ident.mouth_y

    def lips(X, Y):
        u = np.clip(X / w, -1, 1)
        ho = h0 * np.sqrt(np.clip(1 - (X / wi) ** 2, 0, 1)) + LIP * np.sqrt(1 - u**2)
        return np.maximum(np.abs(Y - (my - k * u**2)) - ho, np.abs(X) - w)

    def cavity(X, Y):
        u = np.clip(X / w, -1, 1)
        hi = h0 * np.sqrt(np.clip(1 - (X / wi) ** 2, 0, 1))
        return np.maximum(np.abs(Y - (my - k * u**2)) - hi, np.abs(X) - wi)

    mbox = (-w - 0.06, my - CORNER - OMAX / 2 - LIP - 0.06, w + 0.06, my + CORNER + OMAX / 2 + LIP + 0.06)
    cv.paint(ident.lip, lips, mbox)
    if h0 > 0:
        cv.paint(CAVITY_RGB, cavity, mbox)
    return np.clip(cv.img, 0.0, 1.0)


def render(ident: Identity, states: np.ndarray, size: int) -> np.ndarray:
    """(F, size, size, 3) uint8 frames for states (F, 9)."""
    if not 16 <= size <= 2048:
        raise ValueError(f"frame size must be in [16, 2048] pixels, got {size}")
    out = np.empty((len(states), size, size, 3), np.uint8)
    for i, st in enumerate(states):
        out[i] = np.round(render_frame(ident, st, size) * 255.0)
    return out
