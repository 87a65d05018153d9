"""The user-facing generation pipeline: portrait + speech (+ emotion) -> talking video (3.1-3.5).

    pipe = EmotiveTalkPipeline.from_pretrained("checkpoint/")      # a bundle (see `bundle.py`)
    result = pipe("portrait.png", "speech.wav", emotion="happy", seed=0, out="talk.mp4")
    result.frames   # (N, R, R, 3) uint8, N = round(duration * 25); result.path: the mp4

Shape legend: N video frames, R model resolution, h = w = R / vae factor latent size,
W = 2 half_width + 1 audio window, Da audio width, Dl lip width, E expression width.

Stages (each a method, each timed in `result.timings`, each with a progress bar):
1. `prepare_portrait`: detect, align and crop the face to R x R; lip / face boxes -> masks;
2. `encode_audio`: 16 kHz mono -> wav2vec2 features per video frame -> windows A_w (N, W, Da);
3. `lip_latents`: V-AID's projector, l_a (N, Dl);
4. `expression_latents`: e_ref from the portrait; e_dri (N, E) from the emotion source: a
   driving video gives e_v directly; an image / text / speech gives e_cond, which Di-CTE
   expands over time with the audio (long continuation by chunks); no emotion -> the
   codebook's neutral entry (or e_ref if the codebook has none) through Di-CTE;
5. `denoise`: the ETHD backbone sampled over the whole length with overlapping windows
   fused every step (`diffusion.sampler`), one sampler step per call so the bar can move;
6. `decode`: the temporal VAE in chunks of frames (all chunks one size: one compile); with
   `fast_decode`, the bundle's small frame-wise decoder distilled from it instead (`fast_decoder/`,
   `models/fast_decoder.py`: about a seventh of the cost, issue 29);
7. optional paste-back into the original photo, the provenance watermark in the pixels, then
   an H.264 + AAC mp4 with the input audio muxed in (written to a temporary file and renamed:
   no partial output), labelled AI-generated and signed with C2PA content credentials
   (`provenance`; `mark=False` turns all three off, for research runs).
Ablations (`ablate="lip"` zeroes the lip tokens, `ablate="expression"` sets e_dri = e_ref)
reproduce the paper's Tab. 2 on the synthetic benchmark.

Inputs are checked by `emotivetalk_jax.validate` (the CLI's checks, the same messages): a bad
one raises a typed error (`GenerationError`, `AudioError`, `PortraitError`, `BundleError`,
`EmotionError`, `validate.NumberError`, ...), all ValueErrors with one-line messages.
"""

from __future__ import annotations

import dataclasses
import os
import time
from contextlib import contextmanager
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from emotivetalk_jax import interrupts, provenance, validate
from emotivetalk_jax.data import audio as audio_lib
from emotivetalk_jax.bundle import Bundle, BundleSettings, load_bundle, vae_factor
from emotivetalk_jax.data.portrait import Portrait, PortraitError, prepare_portrait
from emotivetalk_jax.provenance import label, watermark

SR = 16000
ABLATIONS = (None, "lip", "expression")


class GenerationError(validate.InputError):
    """A generation request that cannot be served; one-line message."""


@dataclasses.dataclass
class AudioInput:
    wave: np.ndarray  # (S,) float32 at 16 kHz, as given (not normalised)
    num_frames: int  # N = round(duration * fps)
    windows: np.ndarray  # (N, W, Da)


@dataclasses.dataclass
class Result:
    frames: np.ndarray  # (N, H, W, 3) uint8 as written (pasted back if asked)
    audio: np.ndarray  # (S,) the muxed audio
    path: Path | None
    timings: dict[str, float]
    info: dict


# ----------------------------------------------------------------------------- jitted pieces


@nnx.jit
def _ref_encode(face, vae, x_ref, noise, landmarks=None):
    """x_ref (1, R, R, 3) in [-1, 1] -> (e_ref (1, E), reference latent (1, h, w, 4), unscaled);
    `landmarks` (1, 68, 2) the portrait's, for aligned face encoders."""
    e_ref = face.encode_expression(x_ref, landmarks)
    mean, _ = vae.encode(x_ref + noise)
    return e_ref, mean


@nnx.jit
def _lip(vaid, windows):
    return vaid.lip(windows)


@nnx.jit(static_argnames=("num_new", "steps"))
def _dicte_chunk(dicte, cond, num_new, key, steps, prefix):
    from emotivetalk_jax.diffusion.dicte import sample_dicte

    return sample_dicte(dicte, cond, num_new, key, steps, prefix)


@nnx.jit(static_argnames=("num_frames",))
def _decode(vae, z, num_frames):
    """z (K, num_frames, h, w, 4) unscaled -> (K, num_frames, R, R, 3): K chunks decoded apart."""
    return jax.vmap(lambda c: vae.decode(c, num_frames))(z)


@nnx.jit
def _fast_decode(decoder, z, x_ref, z_ref):
    """z (K, h, w, 4) unscaled -> (K, R, R, 3) uint8, each frame alone (x_ref, z_ref: the portrait,
    read by a decoder with `reference` on; None for one without)."""
    return jnp.clip(jnp.round((decoder(z, x_ref, z_ref).astype(jnp.float32) + 1.0) * 127.5), 0, 255).astype(jnp.uint8)


def no_fast_decoder(path) -> str:
    """The one-line refusal of `fast_decode` for a bundle without fast_decoder/."""
    return (f"checkpoint {path} has no fast decoder (fast_decoder/), which --fast-decode uses; train one "
            f"(emotivetalk fast-decoder train OUT --checkpoint {path}, then emotivetalk fast-decoder add OUT "
            f"{path}) or drop --fast-decode")


class _Backbone(nnx.Module):
    """The sampler's keyword signature over ETHD's positional one (module level: one class, so
    every pipeline's backbone has the same graph and reuses the compiled sampler)."""

    def __init__(self, ethd: nnx.Module):
        self.m = ethd

    def __call__(self, sample, c_noise, *, lip_tokens, e_dri, added_time_ids, e_ref, lip_mask, face_mask, pose=None):
        return self.m(sample, c_noise, lip_tokens, added_time_ids, e_dri, e_ref, lip_mask, face_mask, pose=pose)


# ----------------------------------------------------------------------------- the pipeline


_PRECISION_PARTS = ("ethd", "vae", "audio", "vaid", "face_encoders", "fast_decoder")


class EmotiveTalkPipeline:
    """Everything to generate from one bundle; stage methods are public for tests and benchmarks."""

    def __init__(self, bundle: Bundle, *, progress: bool = True, text_options: dict | None = None,
                 precision: str = "auto", attention: str | None = None, fast_decode: bool = False):
        """`precision`: auto (bf16 on an accelerator, float32 on CPU) | float32 | bfloat16, applied to
        the bundle's models in place (`accelerators.apply_precision`). `attention`: auto | xla | cudnn |
        pallas for every attention layer (`models/attention.py`); None keeps the process default.
        `fast_decode`: decode with the bundle's fast decoder (GenerationError if it has none; the
        attribute can be switched later)."""
        from emotivetalk_jax.accelerators import apply_precision, resolve_precision
        from emotivetalk_jax.models.attention import set_attention

        self.dtype = resolve_precision(precision)
        for name in _PRECISION_PARTS:
            part = getattr(bundle, name)
            if part is None:
                continue
            if self.dtype != jnp.float32:
                apply_precision(part, self.dtype)
            if attention is not None:
                set_attention(part, attention)
        self.bundle = bundle
        self.text_options = dict(text_options or {})  # text_model_dir / endpoint / endpoint_model
        self.settings: BundleSettings = bundle.settings
        self.progress = progress
        self.timings: dict[str, float] = {}
        self._backbone = _Backbone(bundle.ethd)
        self._speech = None
        self.fast_decode = fast_decode
        # provenance: the checkpoint named in every video's label and credential, and who signs
        # (None: `provenance.identity()`, the environment's certificate or the tool's own key)
        self.checkpoint_sha256 = label.checkpoint_hash(bundle.path)
        self.signer: provenance.Identity | None = None

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, *, variant: str | None = None, resolution: int | None = None,
                        progress: bool = True, text_options: dict | None = None,
                        verify: bool = False, precision: str = "auto", attention: str | None = None,
                        fast_decode: bool = False) -> "EmotiveTalkPipeline":
        """Load a bundle folder; `variant` / `resolution` if given must match it (else a BundleError).
        `verify`: check every file's sha256 against the bundle's manifest (sizes are always checked).
        `precision`, `attention`, `fast_decode`: as in `__init__`."""
        return cls(load_bundle(path, variant=variant, resolution=resolution, verify=verify), progress=progress,
                   text_options=text_options, precision=precision, attention=attention, fast_decode=fast_decode)

    # -- helpers

    @contextmanager
    def _stage(self, name: str, total: int | None = None, unit: str = "it"):
        interrupts.check()
        bar = tqdm(total=total if total is not None else 1, desc=f"{name:>10}", unit=unit, disable=not self.progress,
                   leave=True, dynamic_ncols=True)
        t0 = time.perf_counter()
        try:
            yield bar
        finally:
            if total is None:
                bar.update(1)
            bar.close()
            self.timings[name] = self.timings.get(name, 0.0) + time.perf_counter() - t0

    @property
    def fast_decode(self) -> bool:
        """Whether `decode` uses the bundle's fast decoder instead of its VAE's decoder."""
        return self._fast_decode

    @fast_decode.setter
    def fast_decode(self, on: bool) -> None:
        if on and self.bundle.fast_decoder is None:
            raise GenerationError(no_fast_decoder(self.bundle.path or "in use"))
        self._fast_decode = bool(on)

    @property
    def resolution(self) -> int:
        return self.settings.resolution

    @property
    def latent_size(self) -> int:
        return self.resolution // vae_factor(self.bundle.vae)

    # -- stages

    def prepare_portrait(self, portrait, *, face_box=None, crop: bool = True, boxes=None) -> Portrait:
        """A path / image array -> the model's `Portrait` (an already prepared one passes through)."""
        with self._stage("portrait"):
            if isinstance(portrait, Portrait):
                if portrait.resolution != self.resolution:
                    raise GenerationError(f"portrait prepared at {portrait.resolution} px; the model works at "
                                          f"{self.resolution} px")
                return portrait
            if isinstance(portrait, (str, os.PathLike)):
                validate.check_file(portrait, "portrait", error=PortraitError)
            return prepare_portrait(portrait, self.resolution, face_box=face_box, crop=crop,
                                    crop_scale=self.settings.crop_scale, boxes=boxes)

    def encode_audio(self, audio: str | os.PathLike | np.ndarray) -> AudioInput:
        """A path or a 16 kHz mono waveform -> windows A_w, one per video frame."""
        from emotivetalk_jax.data.audio import audio_features, frame_windows

        s = self.settings
        with self._stage("audio"):
            if isinstance(audio, (str, os.PathLike)):
                wave = audio_lib.check_audio_file(audio, "audio", sr=SR, fps=s.fps)
            else:
                wave = validate.check_wave(audio, "audio", sr=SR, fps=s.fps)
            feats = audio_features(wave, self.bundle.audio, fps=s.fps, layers=s.audio_layer,
                                   chunk_s=s.audio_chunk_s, context_s=s.audio_context_s)
            return AudioInput(wave, len(feats), frame_windows(feats.astype(np.float32), s.half_width))

    def lip_latents(self, audio: AudioInput) -> jax.Array:
        with self._stage("lip"):
            return jax.block_until_ready(_lip(self.bundle.vaid, jnp.asarray(audio.windows)[None]))  # (1, N, Dl)

    def reference(self, portrait: Portrait, key: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(x_ref (1, R, R, 3) in [-1, 1], e_ref (1, E), reference latent (1, h, w, 4)); SVD's noise augmentation."""
        x_ref = jnp.asarray(portrait.image, jnp.float32)[None] / 127.5 - 1.0
        noise = self.settings.noise_aug * jax.random.normal(key, x_ref.shape)
        lm = None
        if getattr(self.bundle.face_encoders.cfg, "aligned", False):  # they read the face aligned by its landmarks
            if portrait.landmarks is None:
                raise GenerationError("this checkpoint's face encoders read landmark-aligned faces, and the portrait "
                                      "has no landmarks (given as boxes only); pass the photo and let the face be "
                                      "detected, or a face box")
            lm = jnp.asarray(portrait.landmarks, jnp.float32)[None]
        e_ref, ref_latent = _ref_encode(self.bundle.face_encoders, self.bundle.vae, x_ref, noise, lm)
        return x_ref, e_ref, ref_latent

    def resolve_emotion(self, emotion, num_frames: int):
        """None | keyword / free text | EmotionSource | EmotionCondition -> EmotionCondition."""
        from emotivetalk_jax.emotion import EmotionCondition, EmotionSource, resolve_emotion

        b = self.bundle
        if emotion is None:
            if b.codebook.counts[-1] > 0:  # KEYWORDS[-1] == "neutral"
                return EmotionCondition("none", e_cond=b.codebook.lookup("neutral"), keyword="neutral")
            return None
        if isinstance(emotion, EmotionCondition):
            return emotion
        source = emotion if isinstance(emotion, EmotionSource) else EmotionSource.text(str(emotion))
        check_emotion_source(source)
        cond = resolve_emotion(source, num_frames=num_frames, expression_encoder=b.face_encoders, codebook=b.codebook,
                               speech=self._speech_recognizer() if source.kind == "audio" else None,
                               fps=self.settings.fps, **self.text_options)
        if source.kind in ("image", "video") and cond.detail.get("crop") == "center":
            validate.warn(f"no face found in the emotion {source.kind} {source.value}; using its centre square "
                          "(crop it around the face for a closer match)")
        return cond

    def _speech_recognizer(self):
        from emotivetalk_jax.emotion.speech import SpeechEmotionRecognizer, feature_fn

        if self.bundle.speech_head is None:
            return None
        if self._speech is None:
            # a head on encoder features reads the bundle's own audio encoder (what it was trained on)
            self._speech = SpeechEmotionRecognizer(self.bundle.speech_head,
                                                   feature_fn(self.bundle.speech_head.cfg, self.bundle.audio))
        return self._speech

    def expression_latents(self, emotion, audio: AudioInput, x_ref: jax.Array, e_ref: jax.Array, key: jax.Array,
                           *, steps: int | None = None) -> tuple[jax.Array, dict]:
        """e_dri (1, N, E) and what was used (see the module docstring)."""
        from emotivetalk_jax.diffusion.long_dicte import sample_long
        from emotivetalk_jax.models.dicte import DiCTECond

        n = audio.num_frames
        with self._stage("expression"):
            cond = self.resolve_emotion(emotion, n)
            if cond is not None and cond.temporal:
                e = np.asarray(cond.e_v, np.float32)
                return jnp.asarray(e)[None], {"emotion_source": cond.source, "dicte": False}
            e_cond = e_ref if cond is None else jnp.asarray(cond.e_cond, jnp.float32)[None]
            dc = self.bundle.vaid.variant.dicte
            full = DiCTECond(jnp.asarray(audio.windows)[None], x_ref, e_cond)
            st = int(steps or self.settings.dicte_steps)

            def chunk_fn(start, num_new, prefix, k):
                p = 0 if prefix is None else prefix.shape[1]
                sub = full._replace(audio=full.audio[:, start - p:start + num_new])
                return _dicte_chunk(self.bundle.vaid.dicte, sub, num_new, k, st, prefix)

            e = sample_long(chunk_fn, n, key, chunk=dc.train_frames, prefix_frames=dc.prefix_frames)
            info = {"emotion_source": "none (e_ref)" if cond is None else cond.source, "dicte": True,
                    "keyword": None if cond is None else cond.keyword}
            if cond is not None and "probs" in cond.detail:  # speech: the head's probabilities
                info["emotion_probs"] = cond.detail["probs"]
            return jax.block_until_ready(e), info

    def sampler_config(self, steps: int | None = None):
        from emotivetalk_jax.diffusion.sampler import SamplerConfig

        s = self.settings
        return SamplerConfig(steps=int(steps or s.steps), window=s.window, overlap=s.overlap,
                             lip_scale=s.lip_scale, expr_scale=s.expr_scale, kind=s.sampler, grid=s.student_grid,
                             sigma_hi=s.student_sigma_hi, batch_windows=s.batch_windows, sigma_start=s.sigma_start)

    @property
    def has_pose_condition(self) -> bool:
        """Whether the backbone has the per-frame pose guider (stage 2's `pose_condition`)."""
        return bool(getattr(getattr(self.bundle.ethd, "ethd_config", None), "pose", False))

    @property
    def latent_scale(self) -> float:
        """The VAE's scaling factor: diffusion latents = VAE latents x this."""
        return float(self.bundle.vae.config.get("scaling_factor", 0.18215))

    def start_latents(self, branches) -> jax.Array | None:
        """What sampling starts from (`BundleSettings.sigma_start`): None (pure noise), or the
        reference frame's latent (1, 1, h, w, 4), scaled as the diffusion latents are."""
        if not self.settings.sigma_start:
            return None
        return branches.cond.reference[:, None] * self.latent_scale

    def conditions(self, l_a, e_dri, e_ref, ref_latent, portrait: Portrait, *, motion: float | None = None,
                   pose: np.ndarray | None = None):
        """The sampler's Branches (the dropped variants only when guidance is on). `motion`: a
        motion level (bundles with the motion knob; None: the constant bucket, or level 1 with the
        knob); `pose` (N, 4): the driving pose, in every branch."""
        from emotivetalk_jax.data.face import box_mask
        from emotivetalk_jax.data.pose import motion_bucket
        from emotivetalk_jax.diffusion.guidance import Branches, Conditions

        s, h = self.settings, self.latent_size
        masks = {k: jnp.asarray(box_mask(b, self.resolution, h))[None]
                 for k, b in (("lip_mask", portrait.lip_box), ("face_mask", portrait.face_box))}
        bucket = float(motion_bucket(1.0 if motion is None else motion)) if s.motion_conditioning else s.motion_bucket_id
        ids = jnp.asarray([[s.fps - 1, bucket, s.noise_aug]], jnp.float32)
        video = {"added_time_ids": ids, "e_ref": e_ref, **masks}
        extra = {} if pose is None else {"pose": jnp.asarray(pose, jnp.float32)[None]}
        cond = Conditions(ref_latent, {"lip_tokens": l_a, "e_dri": e_dri, **extra}, video)
        if s.lip_scale == 1.0 and s.expr_scale == 1.0:
            return Branches(cond)
        e_ref_f = jnp.broadcast_to(e_ref[:, None], e_dri.shape)
        no_expr = Conditions(ref_latent, {"lip_tokens": l_a, "e_dri": e_ref_f, **extra}, video)
        null = Conditions(ref_latent, {"lip_tokens": jnp.zeros_like(l_a), "e_dri": e_ref_f, **extra}, video)
        return Branches(cond, no_expr, null)

    def denoise(self, branches, num_frames: int, key: jax.Array, *, steps: int | None = None) -> jax.Array:
        """Whole-length DDIM with window fusion, all steps in one program (the bar moves after
        each): -> latents (1, N, h, w, 4) x scaling."""
        from emotivetalk_jax.diffusion.sampler import sample

        config = self.sampler_config(steps)
        h = self.latent_size
        shape = (1, h, h, 4)
        noise = jax.vmap(lambda f: jax.random.normal(jax.random.fold_in(key, f), shape))(jnp.arange(num_frames))
        with self._stage("denoise", total=config.steps, unit="step") as bar:
            x = sample(self._backbone, branches, key, config, num_frames=num_frames, latent_shape=(h, h, 4),
                       noise=jnp.moveaxis(noise, 0, 1), callback=lambda step: bar.update(1),
                       start=self.start_latents(branches))
        interrupts.check()
        return x

    def decode_reference(self, x_ref: jax.Array):
        """What `decode` needs of the portrait x_ref (1, R, R, 3) in [-1, 1]: (x_ref, its unscaled VAE
        encoder mean) when the fast decoder in use reads the portrait, else None. Once per video."""
        if not (self.fast_decode and self.bundle.fast_decoder.cfg.reference):
            return None
        from emotivetalk_jax.train.fast_decoder import encode_mean

        return x_ref, encode_mean(self.bundle.vae, x_ref)

    def decode(self, latents: jax.Array, reference=None) -> np.ndarray:
        """Latents (1, N, h, w, 4) (scaled) -> frames (N, R, R, 3) uint8, in equal chunks of frames.
        `reference`: `decode_reference(x_ref)`, which a fast decoder that reads the portrait needs."""
        vae = self.bundle.vae
        z = latents[0] / self.latent_scale
        n = z.shape[0]
        if self.fast_decode:
            return self._decode_fast(z, reference)
        c = max(1, min(self.settings.decode_chunk, n))
        starts = list(range(0, n - c + 1, c))
        if starts[-1] + c < n:
            starts.append(n - c)  # last chunk shifted back: same size, one compile
        out = np.empty((n, self.resolution, self.resolution, 3), np.uint8)
        k = max(1, min(self.settings.decode_batch, len(starts)))
        done = 0
        with self._stage("decode", total=n, unit="frame") as bar:
            for g in range(0, len(starts), k):
                group = starts[g:g + k]
                group = group + [group[-1]] * (k - len(group))  # one call shape: the last group padded
                x = np.asarray(_decode(vae, jnp.stack([z[s0:s0 + c] for s0 in group]), c))
                px = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)
                for s0, chunk in zip(starts[g:g + k], px):
                    out[done:s0 + c] = chunk[done - s0:]
                    bar.update(s0 + c - done)
                    done = s0 + c
                interrupts.check()
        return out

    def _decode_fast(self, z: jax.Array, reference) -> np.ndarray:
        """Unscaled latents (N, h, w, 4) -> frames (N, R, R, 3) uint8 by the fast decoder, frame by
        frame, in calls of decode_chunk x decode_batch frames (the last padded: one compile)."""
        if self.bundle.fast_decoder.cfg.reference and reference is None:
            raise GenerationError("this checkpoint's fast decoder reads the portrait; pass "
                                  "decode(latents, pipe.decode_reference(x_ref))")
        x_ref, z_ref = reference or (None, None)
        n = z.shape[0]
        k = max(1, self.settings.decode_chunk * self.settings.decode_batch)
        out = np.empty((n, self.resolution, self.resolution, 3), np.uint8)
        with self._stage("decode", total=n, unit="frame") as bar:
            for s0 in range(0, n, k):
                group = z[s0:s0 + k]
                m = group.shape[0]
                if m < k:
                    group = jnp.concatenate([group, jnp.broadcast_to(group[-1:], (k - m, *group.shape[1:]))])
                out[s0:s0 + m] = np.asarray(_fast_decode(self.bundle.fast_decoder, group, x_ref, z_ref))[:m]
                bar.update(m)
                interrupts.check()
        return out

    # -- the whole thing

    def __call__(self, portrait, audio, *, emotion=None, seed: int = 0, steps: int | None = None,
                 dicte_steps: int | None = None, out: str | os.PathLike | None = None, paste: bool = False,
                 face_box=None, crop: bool = True, boxes=None, ablate: str | None = None, mark: bool = True,
                 motion: float | None = None, pose=None, pose_video=None) -> Result:
        """Generate a talking video. `out`: an .mp4 path to write (checked before any work).

        `emotion`: None, a keyword / free text, an `EmotionSource` or an `EmotionCondition`.
        `paste`: put the generated face back into the original photo's framing.
        `ablate`: None | "lip" | "expression" (see the module docstring).
        `mark`: watermark the frames and label and sign the mp4 (`provenance`); False for research.
        Head motion (beyond the paper; issue 30): `motion` a level in [0, 2] (0 = still, 1 = the
        training data's typical motion, the default) for a bundle trained with the motion knob;
        `pose` (F, 4) (`data.pose.POSE_KEYS`) or `pose_video` (a path: its face's pose relative to
        its first frame) for a bundle whose backbone has the pose condition (`data.pose.driving_pose`).
        """
        from emotivetalk_jax.data.pose import check_motion_level, driving_pose, play_to

        if ablate not in ABLATIONS:
            raise GenerationError(f"unknown ablation {ablate!r}; choose lip or expression")
        seed = validate.check_seed(seed, "seed", error=GenerationError)
        validate.check_steps(steps, "steps", error=GenerationError)
        validate.check_steps(dicte_steps, "dicte_steps", error=GenerationError)
        out_path = (check_output_path(out, input_paths(portrait, audio, emotion, pose_video=pose_video))
                    if out is not None else None)
        who = self.signing_identity() if mark and out_path is not None else None  # its files checked before work
        motion = check_motion_level(motion, self.settings.motion_conditioning, "motion")
        pose = driving_pose(pose, pose_video, fps=self.settings.fps, supported=self.has_pose_condition)
        self.timings = {}
        key = jax.random.key(seed)
        k_ref, k_expr, k_noise = jax.random.split(key, 3)
        p = self.prepare_portrait(portrait, face_box=face_box, crop=crop, boxes=boxes)
        a = self.encode_audio(audio)
        l_a = self.lip_latents(a)
        x_ref, e_ref, ref_latent = self.reference(p, k_ref)
        e_dri, info = self.expression_latents(emotion, a, x_ref, e_ref, k_expr, steps=dicte_steps)
        if ablate == "lip":
            l_a = jnp.zeros_like(l_a)
        elif ablate == "expression":
            e_dri = jnp.broadcast_to(e_ref[:, None], e_dri.shape)
        pose = None if pose is None else play_to(pose, a.num_frames)
        branches = self.conditions(l_a, e_dri, e_ref, ref_latent, p, motion=motion, pose=pose)
        latents = self.denoise(branches, a.num_frames, k_noise, steps=steps)
        frames = self.decode(latents, self.decode_reference(x_ref))
        if paste:
            from emotivetalk_jax.data.portrait import paste_back

            with self._stage("paste", total=len(frames), unit="frame") as bar:
                frames = paste_back(frames, p)
                bar.update(len(frames))
        if mark:
            frames = watermark.embed(frames)
        written = self.write(out_path, frames, a.wave, who) if out_path is not None else None
        info.update(num_frames=a.num_frames, duration_s=len(a.wave) / SR, seed=int(seed), ablate=ablate, marked=mark,
                    motion=motion, driving_pose=pose is not None,
                    portrait=p.detail, resolution=self.resolution, variant=self.settings.variant)
        return Result(frames, a.wave, written, dict(self.timings), info)

    def signing_identity(self) -> provenance.Identity:
        """Who signs this pipeline's videos: `self.signer`, else `provenance.identity()` (the
        environment's certificate or the tool's own key, made on first use)."""
        return self.signer or provenance.identity()

    def write(self, out_path: Path, frames: np.ndarray, wave: np.ndarray, who: provenance.Identity | None) -> Path:
        """The mp4 (temporary file renamed; the folders made for it removed on failure); with a
        signing identity `who`, labelled and signed (`provenance.write_marked`; the frames come
        watermarked), without one plain (`mark=False`)."""
        from emotivetalk_jax.data.video import write_mp4
        from emotivetalk_jax.manifest import remove_created

        made = validate.missing_ancestors(out_path.parent)
        try:
            with self._stage("write"):
                if who is not None:
                    return provenance.write_marked(out_path, frames, self.settings.fps, wave, SR,
                                                   checkpoint_sha256=self.checkpoint_sha256, who=who)
                return write_mp4(out_path, frames, self.settings.fps, wave, SR)
        except BaseException:
            remove_created(made)
            raise

    def stream(self, portrait, audio_chunks, **kwargs):
        """A generator: speech in as it arrives (`audio_chunks`, arrays at `sr` or (array, rate)
        pairs), finished frames out window by window ((k, R, R, 3) uint8), frames once emitted
        never changed; its return value is the `Result`. Keywords: emotion, seed, steps, sr, out,
        paste, face_box, crop, boxes, audio_context_s, lookahead, stats, mark, motion, pose, pose_video
        (`streaming.stream`)."""
        from emotivetalk_jax.streaming import stream

        return stream(self, portrait, audio_chunks, **kwargs)


def check_output_path(out: str | os.PathLike, inputs: dict | None = None) -> Path:
    """The output .mp4 path, checked writable and none of `inputs` ({name: path}) before any
    work (GenerationError otherwise). Creates nothing (its folder is made when the video is
    written); removes the temporary file a killed earlier run may have left beside it."""
    from emotivetalk_jax.data.video import temp_path

    validate.check_not_input(out, inputs or {}, "the output", error=GenerationError)
    path = validate.check_output_file(out, "the output", suffix=".mp4", error=GenerationError)
    validate.check_not_input(temp_path(path), inputs or {}, "the output's temporary file", error=GenerationError)
    temp_path(path).unlink(missing_ok=True)
    return path


def input_paths(portrait=None, audio=None, emotion=None, **files) -> dict:
    """{name: path} of the inputs given as files (arrays and emotion words are not), for
    `check_output_path`."""
    if getattr(emotion, "kind", "text") != "text":
        files[f"emotion {emotion.kind}"] = emotion.value
    files.update(portrait=portrait, audio=audio)
    return {k.replace("_", " "): v for k, v in files.items() if isinstance(v, (str, os.PathLike))}


def check_emotion_source(source) -> None:
    """An emotion file exists and is readable (the file is named before any model is asked)."""
    from emotivetalk_jax.emotion import EmotionError

    if source.kind == "image":
        validate.check_image_file(source.value, "emotion image", error=EmotionError)
    elif source.kind == "audio":
        validate.check_file(source.value, "emotion audio", error=EmotionError)
    elif source.kind == "video":
        validate.check_file(source.value, "emotion video", error=EmotionError)


def default_checkpoint() -> Path | None:
    """The demo bundle shipped in the package (emotivetalk_jax/assets/demo), if installed."""
    p = Path(__file__).parent / "assets" / "demo"
    return p if (p / "config.json").is_file() else None


__all__ = ["EmotiveTalkPipeline", "GenerationError", "Result", "AudioInput", "check_output_path", "input_paths",
           "check_emotion_source", "default_checkpoint"]


# ----------------------------------------------------------------------------- command line


def add_generate_arguments(p) -> None:
    """`emotivetalk generate` options (cli.py wires them)."""
    from emotivetalk_jax.emotion.commands import add_emotion_arguments

    p.add_argument("--portrait", required=True, metavar="IMG", help="a photo with one face (PNG / JPEG)")
    p.add_argument("--audio", required=True, metavar="AUDIO", help="speech: wav / flac / ogg / mp3 / a video with sound")
    add_emotion_arguments(p)
    p.add_argument("--checkpoint", metavar="DIR", help="pipeline checkpoint folder (default: the installed demo)")
    p.add_argument("--variant", help="refuse a checkpoint of another variant (tiny, emotivetalk_512, emotivetalk_1024)")
    p.add_argument("--steps", type=int, default=None, help="DDIM steps of the backbone (default: the checkpoint's, 25)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--face-box", metavar="X0,Y0,X1,Y1", help="face box in portrait pixels when detection fails")
    p.add_argument("--paste-back", action="store_true", help="paste the generated face into the original photo")
    p.add_argument("--no-crop", action="store_true", help="use the whole (square) portrait as the model input")
    p.add_argument("--out", required=True, metavar="OUT.mp4")
    p.add_argument("--motion", type=float, default=None, metavar="LEVEL",
                   help="head motion, 0 (still) to 2; 1 = the training data's typical motion (the default); needs a "
                        "checkpoint trained with the motion knob")
    p.add_argument("--pose-video", metavar="VIDEO",
                   help="make the head follow this video's head pose (relative to its first frame; a shorter video "
                        "plays forward and back); needs a checkpoint trained with the pose condition")
    p.add_argument("--stream", action="store_true",
                   help="generate window by window as the speech arrives (read in 0.2 s chunks) and report the "
                        "time to the first frame")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_signing_arguments(p)
    p.add_argument("--no-mark", action="store_true",
                   help="research runs only: no AI-generated label, content credential or watermark")
    p.add_argument("--verify", action="store_true", help="check every checkpoint file's sha256 before loading")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto",
                   help="weights and compute: auto = bfloat16 on GPU/TPU, float32 on CPU")
    p.add_argument("--fast-decode", action="store_true",
                   help="decode with the checkpoint's small frame-wise decoder (fast_decoder/): several times "
                        "cheaper than its VAE decoder, a little less faithful")
    p.add_argument("--attention", choices=("auto", "xla", "cudnn", "pallas"), default="auto",
                   help="attention kernels: auto = cuDNN flash on NVIDIA, Pallas flash on TPU, XLA otherwise; "
                        "a call a kernel does not take falls back to XLA (logged once)")


def add_signing_arguments(p) -> None:
    """--sign-cert / --sign-key: whose C2PA credential the videos carry (generate, serve)."""
    from emotivetalk_jax.provenance.credentials import CERT_ENV, KEY_ENV

    p.add_argument("--sign-cert", metavar="PEM", help=f"certificate chain (PEM, signing certificate first) for the "
                   f"videos' C2PA credentials (default: ${CERT_ENV}, else a self-signed key kept in the config folder)")
    p.add_argument("--sign-key", metavar="PEM", help=f"its private key (PEM, unencrypted; default: ${KEY_ENV})")


def marks_summary(signer: provenance.Identity | None) -> dict:
    """What `generate` reports about the marks of the video it wrote."""
    if signer is None:
        return {"label": False, "credential": "absent", "watermark": False}
    return {"label": True, "credential": "self-signed" if signer.self_signed else "signed", "watermark": True}


def _check_speech_emotion(args, ckpt, wave: np.ndarray, fps: float) -> None:
    """An emotion read from speech (--emotion-audio, --emotion-from-speech) needs audio that holds
    speech and a speech-emotion head (the checkpoint's speech_head/ or --speech-head)."""
    import warnings

    from emotivetalk_jax.emotion import EmotionError

    if args.emotion_from_speech:
        what = f"--audio {args.audio} (for --emotion-from-speech)"
    else:
        with warnings.catch_warnings():  # silence is refused below, not warned about as a closed mouth
            warnings.simplefilter("ignore", validate.InputWarning)
            wave = audio_lib.check_audio_file(args.emotion_audio, "emotion audio", sr=SR, fps=fps)
        what = f"emotion audio {args.emotion_audio}"
    validate.check_speech(wave, what, error=EmotionError)
    if not args.speech_head and not (Path(ckpt) / "speech_head").is_dir():
        flag = "--emotion-from-speech" if args.emotion_from_speech else "--emotion-audio"
        raise EmotionError(f"checkpoint {ckpt} has no speech-emotion head (speech_head/), so {flag} cannot read an "
                           "emotion; pass --speech-head DIR (train one: emotivetalk speech-head train OUT) or "
                           "give the emotion as --emotion TEXT")


def generate_main(args) -> dict:
    """Run `emotivetalk generate`; returns the summary cli.py prints. Every input is checked
    first, cheapest first, so a bad one fails in about a second, before any model loads."""
    from emotivetalk_jax.bundle import BundleError, check_request, ethd_has_pose, read_settings
    from emotivetalk_jax.data.pose import check_motion_level, driving_pose
    from emotivetalk_jax.emotion import EmotionError, EmotionSource, text_to_keyword
    from emotivetalk_jax.emotion.commands import source_from_args

    steps = validate.check_steps(args.steps, "--steps", error=GenerationError)
    seed = validate.check_seed(args.seed, "--seed", error=GenerationError)
    pose_video = getattr(args, "pose_video", None)
    out = check_output_path(args.out, input_paths(args.portrait, args.audio, emotion_image=args.emotion_image,
                                                  emotion_audio=args.emotion_audio, emotion_video=args.emotion_video,
                                                  pose_video=pose_video))
    face_box = validate.parse_face_box(args.face_box, error=GenerationError)
    mark = not getattr(args, "no_mark", False)
    if mark:  # the signing files are checked before any work
        signer = provenance.identity(getattr(args, "sign_cert", None), getattr(args, "sign_key", None))
    else:
        signer = None
        provenance.warn_unmarked()
    if args.variant is not None:
        validate.check_variant(args.variant, error=GenerationError)
    ckpt = args.checkpoint or default_checkpoint()
    if ckpt is None:
        raise GenerationError("no --checkpoint given and no demo checkpoint installed; pass --checkpoint DIR "
                              "(a random one for trying: emotivetalk random-bundle DIR)")
    validate.check_folder(ckpt, "checkpoint", error=BundleError)
    settings = read_settings(ckpt)
    check_request(settings, ckpt, args.variant)
    fast = bool(getattr(args, "fast_decode", False))
    if fast and not (Path(ckpt) / "fast_decoder").is_dir():
        raise GenerationError(no_fast_decoder(ckpt))
    motion = check_motion_level(getattr(args, "motion", None), settings.motion_conditioning)
    validate.check_image_file(args.portrait, "portrait", error=PortraitError)
    wave = audio_lib.check_audio_file(args.audio, "audio", sr=SR, fps=settings.fps)
    for flag in ("codebook", "speech_head"):
        if getattr(args, flag):
            validate.check_folder(getattr(args, flag), f"--{flag.replace('_', '-')}", error=EmotionError)
    text = {k: v for k, v in (("model_dir", args.text_model), ("endpoint", args.emotion_endpoint),
                              ("endpoint_model", args.emotion_endpoint_model)) if v is not None}
    emotion = source_from_args(args)
    if emotion is not None:
        check_emotion_source(emotion)
        if emotion.kind == "audio":
            _check_speech_emotion(args, ckpt, wave, settings.fps)
    pose = driving_pose(video=pose_video, fps=settings.fps, supported=ethd_has_pose(ckpt)) if pose_video else None
    if emotion is not None and emotion.kind == "text":  # unknown words fail here, listing the eight
        emotion = EmotionSource.text(text_to_keyword(emotion.value, **text).keyword)
    portrait = prepare_portrait(args.portrait, settings.resolution, face_box=face_box, crop=not args.no_crop,
                                crop_scale=settings.crop_scale)
    text = {("text_model_dir" if k == "model_dir" else k): v for k, v in text.items()}
    codebook = speech_head = None
    if args.codebook:
        from emotivetalk_jax.emotion.codebook import load_codebook

        codebook = load_codebook(args.codebook)
    if args.speech_head:
        from emotivetalk_jax.emotion.speech import load_speech_head

        speech_head = load_speech_head(args.speech_head)
    pipe = EmotiveTalkPipeline.from_pretrained(ckpt, variant=args.variant, progress=not args.quiet, text_options=text,
                                               verify=args.verify, precision=getattr(args, "precision", "auto"),
                                               attention=getattr(args, "attention", None), fast_decode=fast)
    if codebook is not None:
        pipe.bundle.codebook = codebook
    if speech_head is not None:
        pipe.bundle.speech_head = speech_head
    pipe.signer = signer
    if getattr(args, "stream", False):
        chunks = (wave[i:i + SR // 5] for i in range(0, len(wave), SR // 5))
        from emotivetalk_jax.streaming import exhaust

        r = exhaust(pipe.stream(portrait, chunks, emotion=emotion, seed=seed, steps=steps, out=out,
                                paste=args.paste_back, mark=mark, motion=motion, pose=pose))
    else:
        r = pipe(portrait, wave, emotion=emotion, seed=seed, steps=steps, out=out, paste=args.paste_back, mark=mark,
                 motion=motion, pose=pose)
    video_s = r.info["num_frames"] / pipe.settings.fps
    return {"out": str(r.path), "frames": int(r.info["num_frames"]), "fps": pipe.settings.fps,
            "size": list(r.frames.shape[1:3]), "emotion": r.info.get("keyword") or r.info["emotion_source"],
            **({"emotion_probs": {k: round(v, 4) for k, v in r.info["emotion_probs"].items()}}
               if "emotion_probs" in r.info else {}),
            "marks": marks_summary(signer),
            "seconds": {k: round(v, 3) for k, v in r.timings.items()},
            "seconds_per_video_second": round(sum(r.timings.values()) / max(video_s, 1e-9), 3),
            **({"first_frame_s": round(r.info["first_frame_s"], 3)} if r.info.get("first_frame_s") else {})}
