"""Read mouth opening, mouth width and expression back from any frame of a known identity.

This is the scoring tool for generated videos of the synthetic domain (the exact
counterpart of SyncNet and E-FID): it needs only the frame and the `Identity` (its
colours and geometry), not the frame's state. Head shift and roll are found from the
eye whites. Every pixel in a feature window is explained as a blend of two palette
colours (anti-aliased edges give fractional coverage), and column sums of coverage
give heights to a fraction of a pixel:

* opening  = tallest column of mouth-cavity coverage / (OMAX * unit)
* width    = horizontal extent of lips / (2 * unit), mapped back to [0, 1]
* corner   = curvature of the lips' centre line (mean Y per column vs X^2)
* eye_open = tallest column of eye (white + iris) coverage / (eye_w * unit)
* brows    = centroid height and principal-axis tilt of the brow coverage

Shapes: frames (F, H, W, 3) uint8 or float in [0, 1]; outputs (F,) per quantity.
"""

from __future__ import annotations

import math

import numpy as np

from emotivetalk_jax.data import synthetic_face as sf
from emotivetalk_jax.data.synthetic_speech import EMOTIONS

MEASURE_KEYS = ("opening", "width", *sf.EXPRESSION_KEYS)
RECENTRE = 0.08  # local units an eye may move before its window is re-centred on it


class MeasureError(ValueError):
    """The frame does not show the given identity well enough to be measured."""


def _unmix(px: np.ndarray, palette: np.ndarray, pairs: list[tuple[int, int]], max_residual: float = 0.12) -> np.ndarray:
    """Explain each pixel as the best blend of a palette pair: (N, 3) -> coverage (N, K)."""
    n, k = len(px), len(palette)
    best = np.full(n, np.inf)
    cov = np.zeros((n, k))
    for a, b in pairs:
        ca, cb = palette[a], palette[b]
        d = cb - ca
        t_raw = (px - ca) @ d / max(d @ d, 1e-9)
        t = np.clip(t_raw, 0.0, 1.0)
        res = np.linalg.norm(px - ca - t[:, None] * d, axis=1)
        t = np.clip(t_raw, -0.25, 1.25)  # unclipped near 0 / 1: pixel noise averages out in sums
        better = res < best
        best = np.where(better, res, best)
        cov[better] = 0.0
        cov[better, a] = 1 - t[better]
        cov[better, b] = t[better]
    cov[best > max_residual] = 0.0  # not explained by this palette: no coverage
    return cov


def _unmix3(px: np.ndarray, base: np.ndarray, c1: np.ndarray, c2: np.ndarray, max_residual: float = 0.12) -> np.ndarray:
    """Barycentric blend of three colours: (N, 3) -> share of c1 + c2 (not `base`), (N,)."""
    m = np.stack([c1 - base, c2 - base], -1)  # (3, 2)
    w = (px - base) @ np.linalg.pinv(m).T  # (N, 2)
    res = np.linalg.norm(px - base - np.clip(w, 0.0, 1.0) @ m.T, axis=1)
    tot = np.clip(w.sum(-1), -0.25, 1.0)  # slightly negative allowed: pixel noise averages out in sums
    return np.where(res > max_residual, 0.0, tot)


def _keep_strong(w: np.ndarray, frac: float = 0.45) -> np.ndarray:
    """Coverage for shape statistics: drop weak (noise) pixels below `frac` of the peak."""
    peak = min(float(w.max(initial=0.0)), 1.0)
    return np.where(w > frac * peak, np.minimum(w, 1.0), 0.0)


def _column_stats(cols: np.ndarray, w: np.ndarray, ncol: int) -> np.ndarray:
    return np.bincount(cols, weights=w, minlength=ncol)


class _Frame:
    """Pose of one frame (from the eye whites) and local coordinates of every pixel."""

    def __init__(self, img: np.ndarray, ident: sf.Identity):
        self.img = img
        h, w, _ = img.shape
        self.size = w
        self.unit = ident.size * w  # px per local unit (no scale motion in the domain)
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32) + 0.5
        self.xs, self.ys = xs, ys
        # nominal local coordinates (no motion) to find the eyes
        c0 = np.array([ident.cx * w, ident.cy * w])
        nx, ny = (xs - c0[0]) / self.unit, (ys - c0[1]) / self.unit
        face_win = (np.abs(nx) < 0.6) & (np.abs(ny) < 0.6 * ident.aspect)
        skin_share = (np.linalg.norm(img[face_win] - np.asarray(ident.skin), axis=-1) < 0.15).mean()
        if skin_share < 0.2:
            raise MeasureError(f"the frame does not show this identity's face (skin colour covers {skin_share:.0%} "
                               "of where the face should be)")
        nominal = [(side * ident.eye_sep, ident.eye_y) for side in (-1, 1)]  # local units, no motion
        centres = self._eye_centres(img, ident, nx, ny, c0, nominal)
        # A head moved by more than RECENTRE units (1.4 px at 64 px; the still domain's motion never
        # is) may push an eye past the edge of its nominal window: look again around the first find.
        moved = [((cx - c0[0]) / self.unit, (cy - c0[1]) / self.unit) for cx, cy in centres]
        if self.eyes_found and max(math.hypot(m[0] - n[0], m[1] - n[1]) for m, n in zip(moved, nominal)) > RECENTRE:
            centres = self._eye_centres(img, ident, nx, ny, c0, moved)
        (lx, ly), (rx, ry) = centres
        self.eye_distance = math.hypot(rx - lx, ry - ly)  # px
        self.roll = math.atan2(ry - ly, rx - lx)
        cr, sr = math.cos(self.roll), math.sin(self.roll)
        mx, my = 0.5 * (lx + rx), 0.5 * (ly + ry)
        px, py = xs - mx, ys - my
        self.X = (cr * px + sr * py) / self.unit
        self.Y = (-sr * px + cr * py) / self.unit + ident.eye_y
        self.shift = ((mx - c0[0]) / w, (my - c0[1]) / w - ident.eye_y * ident.size)  # approximately (dx, dy) for small roll

    def _eye_centres(self, img, ident, nx, ny, c0, around) -> list[tuple[float, float]]:
        """Pixel centres of the two eyes (white + iris coverage) in windows around `around` (local)."""
        pal = np.stack([ident.skin, sf.EYE_WHITE_RGB, ident.iris, ident.brow])
        centres = []
        self.eyes_found = True
        for side, (ax, ay) in zip((-1, 1), around):
            win = (np.abs(nx - ax) < ident.eye_w + 0.12) & (np.abs(ny - ay) < 0.2)
            cov = _unmix(img[win], pal, [(0, 1), (0, 2), (1, 2), (0, 3), (2, 3)], max_residual=0.2)
            wgt = cov[:, 1] + cov[:, 2]
            if wgt.sum() < 0.3:  # eyes (nearly) invisible: assume no head motion
                self.eyes_found = False
                centres.append((c0[0] + side * ident.eye_sep * self.unit, c0[1] + ident.eye_y * self.unit))
            else:
                centres.append(((self.xs[win] * wgt).sum() / wgt.sum(), (self.ys[win] * wgt).sum() / wgt.sum()))
        return centres

    def window(self, x0, x1, y0, y1):
        return (self.X >= x0) & (self.X <= x1) & (self.Y >= y0) & (self.Y <= y1)


def measure_frame(frame: np.ndarray, ident: sf.Identity) -> dict[str, float]:
    """Mouth opening, width and the 4 expression values of one frame (H, W, 3)."""
    img = np.asarray(frame)
    if img.ndim != 3 or img.shape[-1] != 3:
        raise MeasureError(f"expected an (H, W, 3) frame, got shape {img.shape}")
    img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
    fr = _Frame(img, ident)
    skin, lip, cav = np.asarray(ident.skin), np.asarray(ident.lip), np.asarray(sf.CAVITY_RGB)
    out: dict[str, float] = {}

    # mouth
    my = ident.mouth_y
    a, chin = ident.aspect, ident.chin
    inside = np.sqrt((fr.X * (1 + chin * np.clip(fr.Y / a, 0, None))) ** 2 + (fr.Y / a) ** 2) < 0.97
    win = fr.window(-0.75, 0.75, my - 0.27, my + 0.33) & inside
    pal = np.stack([skin, lip, cav, ident.nose])
    cov = _unmix(img[win], pal, [(0, 1), (1, 2), (0, 2), (0, 3)])
    cols = fr.xs[win].astype(int)
    ncol = fr.size
    cav_col = _column_stats(cols, cov[:, 2], ncol)
    out["opening"] = float(cav_col.max() / (fr.unit * sf.OMAX))
    mass = cov[:, 1] + cov[:, 2]
    mass = _keep_strong(mass)
    mass_col = _column_stats(cols, mass, ncol)
    # horizontal extent: per column, the fraction of the column the mouth reaches
    ext = np.zeros(ncol)
    np.maximum.at(ext, cols, mass)
    half_w = ext.sum() / (2 * fr.unit)
    out["width"] = float((half_w / ident.mouth_w - 0.8) / 0.4)
    good = mass_col > 0.5 * max(mass_col.max(), 1e-9) * 0.3
    xm = _column_stats(cols, mass * fr.X[win], ncol)[good] / mass_col[good]
    ym = _column_stats(cols, mass * fr.Y[win], ncol)[good] / mass_col[good]
    wt = mass_col[good]
    if len(xm) >= 3:
        u2 = (xm / max(half_w, 1e-6)) ** 2
        A = np.stack([np.ones_like(u2), u2], -1) * np.sqrt(wt)[:, None]
        coef = np.linalg.lstsq(A, ym * np.sqrt(wt), rcond=None)[0]
        out["corner"] = float(-coef[1] / sf.CORNER)
    else:
        out["corner"] = 0.0

    # eyes
    eo = []
    for side in (-1, 1):
        ex = side * ident.eye_sep
        win = fr.window(ex - ident.eye_w - 0.08, ex + ident.eye_w + 0.08, ident.eye_y - 0.19, ident.eye_y + 0.19)
        eye = _unmix3(img[win], skin, np.asarray(sf.EYE_WHITE_RGB), np.asarray(ident.iris))
        col = _column_stats(fr.xs[win].astype(int), eye, ncol)
        eo.append(col.max() / (fr.unit * ident.eye_w))
    out["eye_open"] = float(np.mean(eo))

    # brows
    raise_, inner = [], []
    for side in (-1, 1):
        ex = side * ident.eye_sep
        win = fr.window(ex - 0.3, ex + 0.3, ident.eye_y - 0.68, ident.eye_y - 0.2)
        if ident.hair_style != 2:  # stay below the hairline
            win &= fr.Y > -0.72 * ident.aspect + 0.12 * fr.X**2 + 0.06
        pal = np.stack([skin, ident.brow])
        cov = _unmix(img[win], pal, [(0, 1)])
        wgt = _keep_strong(cov[:, 1])
        if wgt.sum() < 1e-6:
            raise MeasureError("no eyebrow found above the eyes")
        X, Y = fr.X[win], fr.Y[win]
        mx, myb = (wgt * X).sum() / wgt.sum(), (wgt * Y).sum() / wgt.sum()
        vx, vy = (wgt * (X - mx) ** 2).sum(), (wgt * (Y - myb) ** 2).sum()
        cxy = (wgt * (X - mx) * (Y - myb)).sum()
        ang = 0.5 * math.atan2(2 * cxy, vx - vy)
        raise_.append((ident.eye_y - sf.BROW_OFF - myb) / sf.BROW_RAISE)
        d = math.tan(ang) * sf.BROW_HALF * side  # outer end below inner by 2d
        inner.append(d / sf.BROW_INNER)
    out["brow_raise"] = float(np.mean(raise_))
    out["brow_inner"] = float(np.mean(inner))
    return out


def read_pose(frames: np.ndarray, ident: sf.Identity) -> np.ndarray:
    """Head pose (F, 4) of every frame in `data.pose.POSE_KEYS` order, from the eye whites:
    roll (degrees), the face centre's shift dx, dy (image fractions, as the domain renders
    them), scale (eye distance over the identity's); nan rows where the eyes cannot be read."""
    out = np.full((len(frames), 4), np.nan, np.float32)
    for i, f in enumerate(frames):
        img = np.asarray(f)
        img = img.astype(np.float32) / 255.0 if img.dtype == np.uint8 else img.astype(np.float32)
        try:
            fr = _Frame(img, ident)
        except (MeasureError, ValueError, FloatingPointError):
            continue
        if not fr.eyes_found:
            continue
        w = fr.size
        scale = fr.eye_distance / (2 * ident.eye_sep * fr.unit)
        mx = fr.shift[0] * w + ident.cx * w  # the eye midpoint (px)
        my = (fr.shift[1] + ident.eye_y * ident.size) * w + ident.cy * w
        # the face centre sits eye_y units below the eye midpoint, along the rolled face's Y axis
        d = -ident.eye_y * fr.unit * scale
        cx, cy = mx - math.sin(fr.roll) * d, my + math.cos(fr.roll) * d
        out[i] = (math.degrees(fr.roll), cx / w - ident.cx, cy / w - ident.cy, scale)
    return out


def measure_video(frames: np.ndarray, ident: sf.Identity) -> dict[str, np.ndarray]:
    """`measure_frame` over (F, H, W, 3) frames -> {key: (F,)}."""
    rows = [measure_frame(f, ident) for f in frames]
    return {k: np.array([r[k] for r in rows], np.float32) for k in MEASURE_KEYS}


def expression_vector(meas: dict[str, np.ndarray]) -> np.ndarray:
    """(..., 4) expression vectors in `synthetic_face.EXPRESSION_KEYS` order."""
    return np.stack([np.asarray(meas[k]) for k in sf.EXPRESSION_KEYS], -1)


def classify_expression(expr: np.ndarray, intensity_range: tuple[float, float] = (0.3, 1.3)) -> tuple[np.ndarray, np.ndarray]:
    """Nearest emotion ray: expr (..., 4) -> (emotion index (...,), intensity (...,)).

    Each emotion k spans neutral + s (prototype_k - neutral); the fit with s clipped to
    `intensity_range` that leaves the smallest residual wins (neutral: s = 0).
    """
    e = np.asarray(expr, np.float32) - sf.NEUTRAL_EXPRESSION
    d = sf.PROTOTYPE_ARRAY - sf.NEUTRAL_EXPRESSION  # (8, 4)
    nn = np.maximum((d * d).sum(-1), 1e-9)
    s = np.clip((e[..., None, :] * d).sum(-1) / nn, *intensity_range)
    s = np.where((d * d).sum(-1) > 0, s, 0.0)
    res = ((e[..., None, :] - s[..., None] * d) ** 2).sum(-1)
    k = res.argmin(-1)
    return k, np.take_along_axis(s, k[..., None], -1)[..., 0]


def emotion_names(idx: np.ndarray) -> list[str]:
    return [EMOTIONS[int(i)] for i in np.ravel(idx)]


# ----------------------------------------------------------------------------- audio probes
# Sanity checks of the domain: the audio must carry the lip signal and the emotion.


def audio_frame_features(audio: np.ndarray, num_frames: int, sr: int = 16000, fps: int = 25,
                         n_mels: int = 40, context: int = 2) -> np.ndarray:
    """Per-video-frame log-mel (mean over the frame's 10 ms hops), per-clip mean-normalised,
    stacked with +-`context` neighbour frames: (F, n_mels (2 context + 1))."""
    import librosa

    hop = sr // 100
    m = librosa.feature.melspectrogram(y=np.asarray(audio, np.float32), sr=sr, n_fft=512, hop_length=hop,
                                       n_mels=n_mels, fmax=sr / 2)
    lm = np.log(m + 1e-8).T  # (T, n_mels), hop t centred at t * 10 ms
    per = 100 // fps
    t = np.arange(num_frames * per) + per // 2
    lm = lm[np.clip(t, 0, len(lm) - 1)].reshape(num_frames, per, n_mels).mean(1)
    lm -= lm.mean(0, keepdims=True)
    pad = np.pad(lm, ((context, context), (0, 0)), mode="edge")
    return np.concatenate([pad[i : i + num_frames] for i in range(2 * context + 1)], -1).astype(np.float32)


def ridge_fit(x: np.ndarray, y: np.ndarray, lam: float = 1.0) -> np.ndarray:
    """Weights (D + 1, K) of ridge regression with a bias column."""
    xb = np.concatenate([x, np.ones((len(x), 1), x.dtype)], -1)
    a = xb.T @ xb + lam * np.eye(xb.shape[1])
    return np.linalg.solve(a, xb.T @ (y if y.ndim == 2 else y[:, None]))


def ridge_predict(w: np.ndarray, x: np.ndarray) -> np.ndarray:
    return np.concatenate([x, np.ones((len(x), 1), x.dtype)], -1) @ w


def prosody_features(audio: np.ndarray, sr: int = 16000) -> np.ndarray:
    """Utterance-level prosody: log-F0 mean / std / range over voiced frames, energy mean /
    std, voiced fraction, syllable-rate proxy (energy-envelope peaks per second), spectral
    tilt. (12,)"""
    import librosa

    y = np.asarray(audio, np.float32)
    f0 = librosa.yin(y, fmin=70, fmax=500, sr=sr, frame_length=1024, hop_length=160)
    rms = librosa.feature.rms(y=y, frame_length=400, hop_length=160)[0]
    n = min(len(f0), len(rms))
    return prosody_from_tracks(y, f0[:n], rms[:n], sr)


def prosody_from_tracks(y: np.ndarray, f0: np.ndarray, rms: np.ndarray, sr: int) -> np.ndarray:
    """`prosody_features` from an utterance's F0 and RMS tracks (10 ms hops, equal lengths). (12,)"""
    loud = rms > 0.1 * rms.max()
    voiced = loud & (f0 < 480)
    lf0 = np.log(f0[voiced]) if voiced.sum() > 3 else np.zeros(4)
    le = np.log(rms[loud] + 1e-6) if loud.sum() > 3 else np.zeros(4)
    env = np.convolve(rms, np.hanning(9) / np.hanning(9).sum(), mode="same")
    peaks = ((env[1:-1] > env[:-2]) & (env[1:-1] > env[2:]) & (env[1:-1] > 0.2 * env.max())).sum()
    spec = np.abs(np.fft.rfft(y[: len(y) // 512 * 512].reshape(-1, 512) * np.hanning(512), axis=-1)) ** 2
    freqs = np.fft.rfftfreq(512, 1 / sr)
    tilt = np.log(spec[:, freqs > 2000].sum() + 1e-9) - np.log(spec[:, freqs <= 2000].sum() + 1e-9)
    dur = len(y) / sr
    return np.array([lf0.mean(), lf0.std(), np.percentile(lf0, 95) - np.percentile(lf0, 5), le.mean(), le.std(),
                     le.max(), voiced.mean(), loud.mean(), peaks / dur, tilt, np.log(rms.max() + 1e-6),
                     np.abs(np.diff(lf0)).mean() if len(lf0) > 1 else 0.0], np.float32)


# ----------------------------------------------------------------------------- scoring generated clips

MAX_LAG = 5  # lags (frames) of the AV-offset search, each way


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if len(x) < 3 or x.std() < 1e-8 or y.std() < 1e-8:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def lag_correlations(measured: list[np.ndarray], truth: list[np.ndarray], max_lag: int = MAX_LAG) -> dict[int, float]:
    """{lag: pooled Pearson r of measured[t + lag] vs truth[t]} over clips."""
    out = {}
    for lag in range(-max_lag, max_lag + 1):
        xs, ys = [], []
        for m, t in zip(measured, truth):
            n = len(t)
            idx = np.arange(max(0, -lag), min(n, n - lag))
            xs.append(m[idx + lag])
            ys.append(t[idx])
        out[lag] = _pearson(np.concatenate(xs), np.concatenate(ys)) if xs else float("nan")
    return out


def psnr(a: np.ndarray, b: np.ndarray, mask: np.ndarray | None = None) -> float:
    d = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    if mask is not None:
        d = d[np.broadcast_to(mask, d.shape)]
    mse = float(d.mean()) if d.size else float("nan")
    return float("inf") if mse == 0 else 10 * math.log10(255.0**2 / mse)


def read_opening_and_emotion(frames: np.ndarray, ident: sf.Identity) -> tuple[np.ndarray, np.ndarray]:
    """(opening (F,), emotion index (F,)) of every frame, nan / -1 where unreadable (not this identity's face)."""
    opening = np.full(len(frames), np.nan, np.float32)
    emo = np.full(len(frames), -1, np.int64)
    for i, f in enumerate(frames):
        try:
            m = measure_frame(f, ident)
        except (MeasureError, ValueError, FloatingPointError, np.linalg.LinAlgError):
            continue
        vals = [m[k] for k in MEASURE_KEYS]
        if not all(np.isfinite(vals)):
            continue
        opening[i] = m["opening"]
        emo[i] = int(classify_expression(expression_vector({k: np.float32(m[k]) for k in m}))[0])
    return opening, emo
