"""Streaming generation: speech goes in as it arrives, finished frames come out window by window.

    for frames in pipe.stream("portrait.png", chunks, emotion="happy"):   # chunks: 16 kHz arrays
        show(frames)                                                      # (k, R, R, 3) uint8

Shape legend: N frames so far, T window, O overlap, R resolution, h latent size, W audio window.

Windows of T frames start every T - O frames, as in offline sampling. A window is made as soon
as the audio reaches `lookahead` frames past its end (one window, or the end of the stream):
1. its audio windows A_w come from the wav2vec2 features of the audio from `audio_context_s`
   before the window to what has arrived (rows of frames already seen are kept, not redone);
2. its expression latents continue Di-CTE from the last `prefix_frames` generated ones (the
   paper's long continuation, one window at a time; an utterance-level emotion: text, image,
   speech or none);
3. the window is sampled with its first frames (those already emitted) held at the previous
   windows' clean latents, re-noised to every step's sigma (inpainting, `sampler.sample(known=)`),
   so frames already emitted never change and the new ones continue them;
4. the new frames are decoded (VAE chunks ending at the window's end) and yielded.
The starting noise of frame f is the offline pipeline's (fold_in(key, f)), so a stream and an
offline run of the same input and seed start from the same noise.

When the stream ends, the generator's return value (`StopIteration.value`) is a `Result` whose
frames are exactly the frames it yielded; with `out=`, the mp4 is written then (temporary file,
renamed; nothing written when an error stops the stream).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from emotivetalk_jax import validate
from emotivetalk_jax.data.audio import SAMPLE_RATE, num_video_frames
from emotivetalk_jax.provenance import watermark

SPF = SAMPLE_RATE // 25  # samples per frame at 25 fps


def _chunk_wave(chunk, sr: int | None, first_sr: list, index: int) -> np.ndarray:
    """One incoming chunk -> a finite mono float32 array at 16 kHz (AudioError family otherwise).
    A chunk is an array at `sr` or a (array, sample_rate) pair; every chunk must have one rate."""
    from emotivetalk_jax.data.audio import AudioError

    rate = sr
    if isinstance(chunk, tuple):
        if len(chunk) != 2:
            raise AudioError(f"audio chunk {index} is a tuple of {len(chunk)}; pass an array or (array, sample_rate)")
        chunk, rate = chunk
    rate = int(rate or SAMPLE_RATE)
    if not first_sr:
        first_sr.append(rate)
    elif rate != first_sr[0]:
        raise AudioError(f"audio chunk {index} is at {rate} Hz, the stream's first at {first_sr[0]} Hz; "
                         "send every chunk at one sample rate")
    wave = np.asarray(chunk)
    if wave.ndim != 1 or not np.issubdtype(wave.dtype, np.number):
        raise AudioError(f"audio chunk {index} has shape {wave.shape} and type {wave.dtype}; pass mono samples "
                         "(S,) as numbers")
    wave = wave.astype(np.float32)
    validate.check_finite_audio(wave, rate, f"audio chunk {index}")
    if rate != SAMPLE_RATE and wave.size:
        import librosa

        wave = librosa.resample(wave, orig_sr=rate, target_sr=SAMPLE_RATE).astype(np.float32)
    return wave


def exhaust(gen):
    """Run a `stream` generator to its end: its return value, the `Result`."""
    while True:
        try:
            next(gen)
        except StopIteration as stop:
            return stop.value


def stream(pipe, portrait, audio_chunks: Iterable, *, emotion=None, seed: int = 0, steps: int | None = None,
           sr: int | None = None, out=None, paste: bool = False, face_box=None, crop: bool = True, boxes=None,
           audio_context_s: float = 1.0, lookahead: int | None = None, stats: dict | None = None,
           mark: bool = True, motion: float | None = None, pose=None, pose_video=None) -> Iterator:
    """`EmotiveTalkPipeline.stream` (see the module docstring). `stats` (a dict, optional) gets
    `first_frame_s` (from the call to the first frames yielded), `windows` and `frames`. `mark`:
    each window's frames watermarked as they come out, the mp4 labelled and signed (`provenance`).
    `motion`, `pose`, `pose_video`: head motion as in the offline call; a driving pose shorter than
    the stream plays forward and back (`data.pose.fit_length`: frame f is the offline run's frame f,
    whatever the stream's length turns out to be), with one warning when the stream passes its end."""
    from emotivetalk_jax.data.pose import check_motion_level, driving_pose, fit_length
    from emotivetalk_jax.data.audio import AudioError, frame_windows
    from emotivetalk_jax.emotion import EmotionError
    from emotivetalk_jax.pipeline import SR, GenerationError, Result, _lip, check_output_path, input_paths

    t_start = time.perf_counter()
    seed = validate.check_seed(seed, "seed", error=GenerationError)
    validate.check_steps(steps, "steps", error=GenerationError)
    out_path = (check_output_path(out, input_paths(portrait, None, emotion, pose_video=pose_video))
                if out is not None else None)
    who = pipe.signing_identity() if mark and out_path is not None else None
    s = pipe.settings
    if s.fps != 25:
        raise GenerationError(f"streaming works at 25 fps; this checkpoint is at {s.fps}")
    if not audio_context_s >= 0:
        raise GenerationError(f"audio_context_s must be >= 0, got {audio_context_s}")
    t, o = s.window, s.overlap
    look = t if lookahead is None else int(lookahead)
    if not 0 <= look <= t:
        raise GenerationError(f"lookahead must be in 0..{t} frames (one window), got {lookahead}")
    ctx = int(round(audio_context_s * 25))
    motion = check_motion_level(motion, s.motion_conditioning, "motion")
    pose = driving_pose(pose, pose_video, fps=s.fps, supported=pipe.has_pose_condition)
    stats = {} if stats is None else stats
    pipe.timings = {}
    key = jax.random.key(seed)
    k_ref, k_expr, k_noise = jax.random.split(key, 3)
    progress, pipe.progress = pipe.progress, False
    try:
        p = pipe.prepare_portrait(portrait, face_box=face_box, crop=crop, boxes=boxes)
        x_ref, e_ref, ref_latent = pipe.reference(p, k_ref)
        decode_ref = pipe.decode_reference(x_ref)
        if getattr(emotion, "kind", None) == "video":
            cond = emotion
        else:
            cond = pipe.resolve_emotion(emotion, 1)
        if getattr(cond, "kind", None) == "video" or (cond is not None and getattr(cond, "temporal", False)):
            raise EmotionError("a driving video gives an expression per frame; streaming takes an utterance-level "
                               "emotion (text, an image, speech or none): use generate without --stream")
        e_cond = e_ref if cond is None else jnp.asarray(cond.e_cond, jnp.float32)[None]
        h = pipe.latent_size
        dc = pipe.bundle.vaid.variant.dicte
        config = pipe.sampler_config(steps)

        wave = np.zeros((0,), np.float32)
        rates: list[int] = []
        aw = np.zeros((0, 2 * s.half_width + 1, pipe.bundle.audio.config["hidden_size"]), np.float32)
        e_all = None  # (1, frames so far, E)
        lat = None  # (1, frames so far, h, h, 4) clean latents
        frames_out: list[np.ndarray] = []
        emitted = 0
        ws = 0
        warned = False  # that the driving pose ran out
        n_windows = 0

        def make_window(ws: int, we: int, avail: int, ended: bool) -> np.ndarray:
            nonlocal aw, e_all, lat, emitted, warned
            # 1. audio windows for frames [len(aw), we)
            if len(aw) < we:
                a = max(0, len(aw) - ctx)
                seg = wave[a * SPF:] if ended else wave[a * SPF:avail * SPF]
                with pipe._stage("audio"):
                    from emotivetalk_jax.data.audio import audio_features

                    feats = audio_features(seg, pipe.bundle.audio, fps=s.fps, layers=s.audio_layer,
                                           chunk_s=s.audio_chunk_s, context_s=s.audio_context_s)
                    rows = frame_windows(np.asarray(feats, np.float32), s.half_width)
                aw = np.concatenate([aw, rows[len(aw) - a:we - a]])
            windows = jnp.asarray(aw[ws:we])[None]
            with pipe._stage("lip"):
                l_a = jax.block_until_ready(_lip(pipe.bundle.vaid, windows))
            # 2. expression latents for frames [have, we), continuing Di-CTE
            have = 0 if e_all is None else e_all.shape[1]
            if have < we:
                from emotivetalk_jax.models.dicte import DiCTECond
                from emotivetalk_jax.pipeline import _dicte_chunk

                pre = min(dc.prefix_frames, have)
                sub = DiCTECond(jnp.asarray(aw[have - pre:we])[None], x_ref, e_cond)
                prefix = e_all[:, have - pre:have] if pre else None
                with pipe._stage("expression"):
                    new = _dicte_chunk(pipe.bundle.vaid.dicte, sub, we - have, jax.random.fold_in(k_expr, have),
                                       int(s.dicte_steps), prefix)
                e_all = new if e_all is None else jnp.concatenate([e_all, new], axis=1)
            e_dri = e_all[:, ws:we]
            # 3. the window, its emitted frames held
            if pose is not None and we > len(pose) and not warned:
                warned = True
                validate.warn(f"the driving pose has {len(pose)} frames and the stream has passed them; it plays "
                              "forward and back until the speech ends")
            branches = pipe.conditions(l_a, e_dri, e_ref, ref_latent, p, motion=motion,
                                       pose=None if pose is None else fit_length(pose, we)[ws:we])
            noise = jax.vmap(lambda f: jax.random.normal(jax.random.fold_in(k_noise, f), (1, h, h, 4)))(
                jnp.arange(ws, we))
            known = lat[:, ws:emitted] if emitted > ws else None
            from emotivetalk_jax.diffusion.sampler import sample

            with pipe._stage("denoise"):
                x = sample(pipe._backbone, branches, jax.random.fold_in(k_noise, 1_000_000 + ws), config,
                           num_frames=we - ws, latent_shape=(h, h, 4), noise=jnp.moveaxis(noise, 0, 1), known=known,
                           start=pipe.start_latents(branches))
            lat = x if lat is None else jnp.concatenate([lat[:, :emitted], x[:, emitted - ws:]], axis=1)
            # 4. decode the new frames (VAE chunks that end at the window's end)
            c = max(1, min(s.decode_chunk, we))
            d0 = max(0, we - -(-(we - emitted) // c) * c)
            px = pipe.decode(lat[:, d0:we], decode_ref)[emitted - d0:]
            if paste:
                from emotivetalk_jax.data.portrait import paste_back

                px = paste_back(px, p)
            if mark:
                px = watermark.embed(px, start=emitted)  # the sign sequence counts from the video's first frame
            emitted = we
            return np.array(px, copy=True)

        def ready(avail: int, ended: bool, total: int):
            """Window starts that can be made now (the last shifted back to end at the stream's end)."""
            nonlocal ws
            while ws < (total if ended else avail) and emitted < total:
                we = ws + t
                if ended and we >= total:
                    yield max(0, total - t), total
                    ws = total
                    return
                if not ended and we + look > avail:
                    return
                yield ws, we
                ws += t - o

        def emit(ws_we, avail, ended):
            nonlocal n_windows
            for a, b in ws_we:
                px = make_window(a, b, avail, ended)
                n_windows += 1
                frames_out.append(px)
                if "first_frame_s" not in stats:
                    stats["first_frame_s"] = time.perf_counter() - t_start
                yield px

        count = 0
        for i, chunk in enumerate(audio_chunks):
            w = _chunk_wave(chunk, sr, rates, i)
            if len(wave) + len(w) > validate.MAX_AUDIO_SECONDS * SAMPLE_RATE:
                from emotivetalk_jax.data.audio import AudioTooLongError

                raise AudioTooLongError(f"the streamed audio passes the {validate.MAX_AUDIO_SECONDS:g} s limit: "
                                        f"{validate.AUDIO_LIMIT_REASON}")
            wave = np.concatenate([wave, w])
            count += 1
            avail = len(wave) // SPF
            yield from emit(ready(avail, False, avail), avail, False)
        if count == 0:
            raise AudioError("the audio stream gave no chunks; pass at least one chunk of speech")
        validate.check_wave(wave, "the streamed audio", sr=SR, fps=s.fps)
        total = num_video_frames(len(wave) / SAMPLE_RATE, s.fps)
        yield from emit(ready(total, True, total), total, True)
    finally:
        pipe.progress = progress
    frames = np.concatenate(frames_out)
    written = pipe.write(out_path, frames, wave, who) if out_path is not None else None
    stats.update(windows=n_windows, frames=len(frames))
    info = dict(num_frames=len(frames), duration_s=len(wave) / SR, seed=int(seed), streamed=True, marked=mark,
                windows=n_windows, first_frame_s=stats.get("first_frame_s"), resolution=pipe.resolution,
                variant=s.variant, emotion_source="none (e_ref)" if cond is None else cond.source,
                keyword=None if cond is None else cond.keyword, portrait=p.detail)
    return Result(frames, wave, written, dict(pipe.timings), info)
