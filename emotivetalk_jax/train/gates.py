"""Learning gates: linear probes of the latents every stage hands on, on held-out synthetic clips.

A stage's `gate` (`train.stages`) calls these at every checkpoint; `eval.probes` is the command
that computes them for trained workdirs or checks the last logged row.

Shape legend: N frames (all clips concatenated), S image size, W = 2 c + 1 audio window,
D widths.

Each stage of the demo recipe must hand the next one latents that carry what the paper
says they carry, and a stage-2 run cannot make up for a stage that did not. The gates
(bars from the learning issue, checked before any long run and logged to `metrics.jsonl`
at every checkpoint of the stage that trains the part):

  gate/l_v_r             Pearson r of a ridge probe from the lip encoder's l_v to the true
                         mouth opening                                         >= 0.95
  gate/e_v_acc           per-frame accuracy of nearest-class-mean on the expression
                         encoder's e_v (8 emotions)                            >= 0.95
  gate/l_a_r_inference   ridge probe r from V-AID's l_a, computed exactly as the pipeline
                         computes it (`EmotiveTalkPipeline.encode_audio` ->
                         `VAID.lip`)                                           >= 0.90
  gate/l_a_r_training    the same with l_a computed the training way (the loader's
                         `feature_window` slices -> `train.stages.common.audio_windows`), which
                         must be within 0.03 of the inference figure
  gate/a_w_r             ridge probe r from the raw audio windows A_w (encoder features,
                         W frames flattened): what the audio encoder alone hears of the lips
  gate/e_a_acc           per-frame accuracy of nearest-class-mean (fitted on e_v) on Di-CTE's
                         sampled e_a, conditioned as at inference on the clip's own e_cond
                         (its first frame's e_v) and neutral portrait: does the expression
                         sequence keep the emotion it is given                  >= 0.90
  gate/reader_r_min      the smallest, over brow_raise, brow_inner, eye_open and corner, of
                         Pearson r between the expression reader's reading and the truth
                         (stage `reader`, `train.stages.reader.reader_gate`)     >= 0.90

Probes are fitted on clips of the training split that no run trains on (indices from
`FIT_OFFSET`; training identities, unseen utterances) and scored on the "test" split
(held-out identities and utterances), the clips `bench-synthetic` uses.
"""

from __future__ import annotations

import dataclasses
import functools

import jax.numpy as jnp
import numpy as np

from emotivetalk_jax.data.synthetic import SyntheticDomain, domain_config
from emotivetalk_jax.data.synthetic_speech import EMOTIONS

FIT_OFFSET = 50_000
BARS = {"gate/l_v_r": 0.95, "gate/e_v_acc": 0.95, "gate/l_a_r_inference": 0.90, "gate/e_a_acc": 0.90,
        "gate/reader_r_min": 0.90}
TRAINING_WAY_TOLERANCE = 0.03
_CHUNK = 256  # frames per probe forward (one compile whatever the clip lengths)


@dataclasses.dataclass
class ProbeClips:
    """Ground truth of a set of synthetic clips (frames rendered at `size`)."""

    frames: list  # per clip (N_i, S, S, 3) uint8
    opening: list  # per clip (N_i,)
    emotion: np.ndarray  # (clips,) int
    waves: list  # per clip (640 N_i,) float32
    size: int
    clips: list  # the `synthetic.Clip`s (identity, neutral portrait, ...)

    @property
    def frame_emotion(self) -> np.ndarray:
        return np.concatenate([np.full(len(o), e) for o, e in zip(self.opening, self.emotion)])

    @property
    def all_opening(self) -> np.ndarray:
        return np.concatenate(self.opening)

    @functools.cached_property
    def all_landmarks(self) -> np.ndarray:
        """(N, 68, 2) every frame's landmarks at `size` (what aligned face encoders read)."""
        return np.concatenate([c.landmarks(size=self.size) for c in self.clips]).astype(np.float32)


@functools.lru_cache(maxsize=8)
def probe_clips(split: str, clips: int, size: int, data_seed: int = 0, head_motion: float = 1.0,
                moving_heads: bool = False) -> ProbeClips:
    """`clips` clips of `split` ("test": clips 0.. as the bench takes them; "train": from index
    FIT_OFFSET on, at most ceil(clips / 8) per emotion)."""
    domain = SyntheticDomain(data_seed, domain_config(head_motion, moving_heads))
    if split == "test":
        cs = [domain.clip(i, split) for i in range(clips)]
    else:  # balanced over emotions, so every class has a mean to compare with
        per, counts, cs, i = -(-clips // len(EMOTIONS)), np.zeros(len(EMOTIONS), int), [], FIT_OFFSET
        while len(cs) < clips:
            c = domain.clip(i, split)
            i += 1
            if counts[c.emotion_id] < per:
                counts[c.emotion_id] += 1
                cs.append(c)
    return ProbeClips([c.frames(size=size) for c in cs], [c.states[:, 0].copy() for c in cs],
                      np.array([c.emotion_id for c in cs]), [c.audio for c in cs], size, cs)


def stage_clips(cfg, size: int) -> tuple[ProbeClips, ProbeClips]:
    """(fit, eval) clips of a training run's gates (`cfg.gate_clips` each, its data seed and head
    motion), rendered at `size`."""
    n, seed = int(cfg.get("gate_clips", 16)), int(cfg.data.data_seed)
    motion, moving = float(cfg.data.get("head_motion", 1.0)), bool(cfg.data.get("moving_heads", False))
    return probe_clips("train", n, size, seed, motion, moving), probe_clips("test", n, size, seed, motion, moving)


# ----------------------------------------------------------------------------- readouts


def ridge_r(fit_x: np.ndarray, fit_y: np.ndarray, eval_x: np.ndarray, eval_y: np.ndarray,
            lam: float = 1e-2) -> float:
    """Pearson r between eval_y and a ridge regression (standardised inputs, penalty `lam`
    per sample) fitted on (fit_x, fit_y). nan when a side is constant."""
    fit_x, eval_x = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (fit_x, eval_x))
    mu, sd = fit_x.mean(0), fit_x.std(0) + 1e-8
    a, b = (fit_x - mu) / sd, (eval_x - mu) / sd
    y = np.asarray(fit_y, np.float64)
    w = np.linalg.solve(a.T @ a + lam * len(a) * np.eye(a.shape[1]), a.T @ (y - y.mean()))
    pred = b @ w + y.mean()
    if pred.std() < 1e-12 or np.std(eval_y) < 1e-12:
        return float("nan")
    return float(np.corrcoef(pred, eval_y)[0, 1])


def nearest_mean_accuracy(fit_x: np.ndarray, fit_labels: np.ndarray, eval_x: np.ndarray,
                          eval_labels: np.ndarray) -> float:
    """Accuracy of labelling each eval row by the nearest class mean of the fit rows
    (standardised by the fit rows' statistics)."""
    mu, sd = fit_x.mean(0), fit_x.std(0) + 1e-8
    a, b = (fit_x - mu) / sd, (eval_x - mu) / sd
    classes = np.unique(fit_labels)
    means = np.stack([a[fit_labels == c].mean(0) for c in classes])
    pred = classes[np.argmin(((b[:, None] - means[None]) ** 2).sum(-1), axis=1)]
    return float(np.mean(pred == eval_labels))


def _chunked(fn, x: np.ndarray, *more: np.ndarray) -> np.ndarray:
    """fn over rows of x (and of `more`, row for row) in fixed chunks of _CHUNK (the last one
    padded), concatenated."""
    out = []
    for i in range(0, len(x), _CHUNK):
        pieces = [a[i : i + _CHUNK] for a in (x, *more)]
        pad = _CHUNK - len(pieces[0])
        if pad:
            pieces = [np.concatenate([p, np.repeat(p[-1:], pad, 0)]) for p in pieces]
        out.append(np.asarray(fn(*(jnp.asarray(p) for p in pieces)))[: _CHUNK - pad])
    return np.concatenate(out)


# ----------------------------------------------------------------------------- gates


def _images(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / 127.5 - 1.0


def face_latents(face, clips: ProbeClips) -> tuple[np.ndarray, np.ndarray]:
    """(l_v (N, Dl), e_v (N, E)) of every frame (aligned encoders: with its known landmarks)."""
    from flax import nnx

    x = _images(np.concatenate(clips.frames))
    lm = clips.all_landmarks if getattr(face.cfg, "aligned", False) else np.zeros((len(x), 68, 2), np.float32)
    lip = nnx.jit(lambda m, v, p: m.encode_lip(v, p))
    expr = nnx.jit(lambda m, v, p: m.encode_expression(v, p))
    return _chunked(lambda v, p: lip(face, v, p), x, lm), _chunked(lambda v, p: expr(face, v, p), x, lm)


def face_gates(face, fit: ProbeClips, ev: ProbeClips, *, latents=face_latents) -> dict[str, float]:
    """l_v and e_v gates of the face encoders; `latents(face, clips) -> (l_v, e_v)` reads them."""
    fl, fe = latents(face, fit)
    el, ee = latents(face, ev)
    return {"gate/l_v_r": ridge_r(fl, fit.all_opening, el, ev.all_opening),
            "gate/e_v_acc": nearest_mean_accuracy(fe, fit.frame_emotion, ee, ev.frame_emotion)}


def inference_windows(encoder, clips: ProbeClips, half_width: int, layers=-1) -> list[np.ndarray]:
    """Per clip A_w (N_i, W, D) exactly as `EmotiveTalkPipeline.encode_audio` builds them."""
    from emotivetalk_jax.data.audio import audio_features, frame_windows

    return [frame_windows(np.asarray(audio_features(w, encoder, layers=layers), np.float32), half_width)
            for w in clips.waves]


def training_windows(features: list[np.ndarray], frames: int, half_width: int) -> list[np.ndarray]:
    """Per clip A_w (N_i, W, D) built the training way: the loader's `feature_window` slices of
    the clip's cached features over consecutive F-frame windows (the last one shifted back to
    end at the clip's end, as a clip shorter than F is edge-repeated), then the stage's
    `audio_windows`."""
    from emotivetalk_jax.data.audio_cache import feature_window
    from emotivetalk_jax.train.stages.common import audio_windows

    out = []
    for feats in features:
        n = len(feats)
        rows = np.empty((n, 2 * half_width + 1, feats.shape[-1]), np.float32)
        for start in list(range(0, max(n - frames, 0) + 1, frames)) + [max(n - frames, 0)]:
            w = feature_window(feats, start, frames, half_width)[None]
            win = np.asarray(audio_windows(jnp.asarray(w), frames, half_width))[0]
            k = min(frames, n - start)
            rows[start : start + k] = win[:k]
        out.append(rows)
    return out


def _lip(vaid, windows: list[np.ndarray]) -> np.ndarray:
    from flax import nnx

    lip = nnx.jit(lambda m, w: m.lip(w[None])[0])
    return _chunked(lambda w: lip(vaid, w), np.concatenate(windows))


def audio_window_gate(fit_w: list[np.ndarray], ev_w: list[np.ndarray], fit: ProbeClips, ev: ProbeClips) -> dict:
    return {"gate/a_w_r": ridge_r(np.concatenate(fit_w), fit.all_opening, np.concatenate(ev_w), ev.all_opening)}


def lip_audio_gates(vaid, encoder, fit: ProbeClips, ev: ProbeClips, *, frames: int, layers=-1) -> dict[str, float]:
    """l_a gates, both ways, plus gate/a_w_r of the encoder they rest on."""
    from emotivetalk_jax.data.audio_cache import clip_features

    hw = vaid.variant.perceiver.window_half_width
    fit_w, ev_w = inference_windows(encoder, fit, hw, layers), inference_windows(encoder, ev, hw, layers)
    fit_la, ev_la = _lip(vaid, fit_w), _lip(vaid, ev_w)
    out = audio_window_gate(fit_w, ev_w, fit, ev)
    out["gate/l_a_r_inference"] = ridge_r(fit_la, fit.all_opening, ev_la, ev.all_opening)
    ev_t = training_windows(clip_features(encoder, ev.waves, layers=layers), frames, hw)
    out["gate/l_a_r_training"] = ridge_r(fit_la, fit.all_opening, _lip(vaid, ev_t), ev.all_opening)
    return out


def expression_gate(vaid, face, encoder, fit: ProbeClips, ev: ProbeClips, *, clips: int = 8, layers=-1,
                    seed: int = 0, steps: int | None = None) -> dict[str, float]:
    """gate/e_a_acc: V-AID's any-length e_a (`diffusion.long_dicte.vaid_expression`) for the first
    `clips` held-out clips, audio windows the inference way, e_cond the clip's first-frame e_v and
    x_ref its neutral portrait, `steps` DDIM steps (default: the variant's); each frame labelled by
    the nearest class mean of the fit clips' e_v."""
    import jax
    from flax import nnx

    from emotivetalk_jax.diffusion.long_dicte import vaid_expression

    _, fit_e = face_latents(face, fit)
    cs = ev.clips[:clips]
    sub = dataclasses.replace(ev, frames=ev.frames[:clips], opening=ev.opening[:clips], emotion=ev.emotion[:clips],
                              waves=ev.waves[:clips], clips=cs)
    _, ev_e = face_latents(face, sub)
    windows = inference_windows(encoder, sub, vaid.variant.perceiver.window_half_width, layers)
    starts = np.cumsum([0] + [len(f) for f in sub.frames])
    sample = nnx.jit(lambda m, w, ref, e0, key: vaid_expression(m, w, ref, e0, key, steps=steps))
    e_a = [np.asarray(sample(vaid, jnp.asarray(w[None]), jnp.asarray(_images(c.portrait(ev.size))[None]),
                             jnp.asarray(ev_e[s][None]), jax.random.key(seed + i)))[0]
           for i, (c, w, s) in enumerate(zip(cs, windows, starts))]
    return {"gate/e_a_acc": nearest_mean_accuracy(fit_e, fit.frame_emotion, np.concatenate(e_a), sub.frame_emotion)}


def _window_starts(c, frames: int, windows: int) -> list[int]:
    return [min(k * frames, max(c.num_frames - frames, 0)) for k in range(windows)]


def _denoiser_batch(encoder, ev: ProbeClips, *, frames: int, context: int, latent: int, windows: int, clips: int,
                    neutral: bool = False) -> dict[str, np.ndarray]:
    """`windows` windows of `frames` frames of each of the first `clips` held-out clips, shaped
    like a training batch, with the clip's neutral portrait as the reference; `neutral` adds
    `neutral_frames`: the same frames with the expression set to neutral (mouth, pose kept)."""
    from emotivetalk_jax.data import face as facelib
    from emotivetalk_jax.data import synthetic_face as sf
    from emotivetalk_jax.data.audio_cache import clip_features, feature_window

    cs = ev.clips[:clips]
    feats = clip_features(encoder, [c.audio for c in cs])
    s = ev.size
    rows = []
    for c, f, vid in zip(cs, feats, ev.frames):
        lm = c.portrait_landmarks(s)
        lip, face = facelib.box_mask(facelib.lip_box(lm), s, latent), facelib.box_mask(facelib.face_box(lm), s, latent)
        for start in _window_starts(c, frames, windows):
            row = dict(frames=vid[start : start + frames], reference=c.portrait(s),
                       landmarks=c.landmarks(start, start + frames, size=s), reference_landmarks=lm.astype(np.float32),
                       frame_features=feature_window(f, start, frames, context),
                       **{f"mask_lip_{latent}": lip, f"mask_face_{latent}": face})
            if neutral:
                st = c.states[start : start + frames].copy()
                st[:, 2:6] = sf.NEUTRAL_EXPRESSION
                row["neutral_frames"] = sf.render(c.identity, st, s)
            rows.append(row)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def expression_transfer_gate(transfer_fn, encoder, ev: ProbeClips, *, frames: int, context: int, latent: int,
                             windows: int = 2, clips: int = 8) -> dict[str, float]:
    """gate/expr_transfer: how much of the expression the backbone's x0 takes from e_dri, in
    latent space (so the VAE's blur does not hide it). For each held-out window, z_e and z_n
    are the latents of its frames and of the same frames with a neutral expression, e_e and e_n
    their e_v; from x_t = (z_e + z_n) / 2 + sigma n (the gate's sigma: the noise hides the
    expression), the ratio is <D(x_t; e_e) - D(x_t; e_n), z_e - z_n> / |z_e - z_n|^2, pooled over
    the clips that are not neutral. 1: x0 moves by exactly the expression's latent change; 0: it
    ignores e_dri (the demo's first stage-2 run: 0.04). `gate/expr_transfer/<emotion>`: the same
    pooled over each emotion's windows alone.

    `transfer_fn(batch) -> (<dD, dz> (B,), |dz|^2 (B,))` on a batch with `neutral_frames`."""
    batch = _denoiser_batch(encoder, ev, frames=frames, context=context, latent=latent, windows=windows,
                            clips=clips, neutral=True)
    emotion = np.repeat([c.emotion for c in ev.clips[:clips]], windows)
    emotional = emotion != "neutral"
    if not emotional.any():
        return {}
    dot, norm = (np.asarray(x, np.float64) for x in transfer_fn(batch))

    def pooled(rows):
        return float(dot[rows].sum() / max(norm[rows].sum(), 1e-12))

    out = {"gate/expr_transfer": pooled(emotional)}
    for e in sorted(set(emotion[emotional])):  # which emotions it has learned (few windows each)
        out[f"gate/expr_transfer/{e}"] = pooled(emotion == e)
    return out


def denoiser_gates(x0_fn, encoder, ev: ProbeClips, *, frames: int, context: int, latent: int,
                   windows: int = 4, clips: int = 8) -> dict[str, float]:
    """Stage 2's gate: the backbone's one-call x0 prediction from heavy noise, on held-out clips
    with their neutral portraits as the reference, scored like `bench-synthetic` (mouth opening
    read back from the decoded frames vs the truth, majority emotion, PSNR). No sampling loop, so
    it is cheap enough for every checkpoint; the sampler's 8-25 steps do better.

    `x0_fn(batch) -> frames (B, F, S, S, 3) in [-1, 1]`: the stage's prepare + one denoise +
    decode on a batch shaped like a training batch."""
    from emotivetalk_jax.data.measure import lag_correlations, psnr, read_opening_and_emotion

    cs = ev.clips[:clips]
    s = ev.size
    batch = _denoiser_batch(encoder, ev, frames=frames, context=context, latent=latent, windows=windows,
                            clips=clips)
    out = np.asarray(x0_fn(batch))
    px = np.clip(np.round((out + 1.0) * 127.5), 0, 255).astype(np.uint8)
    measured, truth, correct, ps = [], [], [], []
    for i, c in enumerate(cs):
        video = px[i * windows : (i + 1) * windows].reshape(-1, s, s, 3)
        gt = batch["frames"][i * windows : (i + 1) * windows].reshape(-1, s, s, 3)
        idx = np.concatenate([np.arange(st, st + frames) for st in _window_starts(c, frames, windows)])
        opening, emo = read_opening_and_emotion(video, c.identity)
        measured.append(opening)
        truth.append(c.states[idx, 0])
        votes = np.bincount(emo[emo >= 0], minlength=len(EMOTIONS))
        correct.append(votes.sum() > 0 and int(votes.argmax()) == c.emotion_id)
        ps.append(np.mean([psnr(a, b) for a, b in zip(video, gt)]))
    return {"gate/x0_lip_corr": lag_correlations(measured, truth, 0)[0],
            "gate/x0_emotion_acc": float(np.mean(correct)), "gate/x0_psnr": float(np.mean(ps))}


def passed(gates: dict[str, float]) -> dict[str, bool]:
    """Which bars the gates meet (only the gates present)."""
    out = {k: bool(gates[k] >= bar) for k, bar in BARS.items() if k in gates}
    if "gate/l_a_r_training" in gates and "gate/l_a_r_inference" in gates:
        out["gate/l_a_r_training"] = bool(
            abs(gates["gate/l_a_r_training"] - gates["gate/l_a_r_inference"]) <= TRAINING_WAY_TOLERANCE)
    return out
