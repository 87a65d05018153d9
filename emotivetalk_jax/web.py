"""`emotivetalk serve`: a Gradio page (and Gradio's HTTP API) over one loaded pipeline.

    app = WebApp(EmotiveTalkPipeline.from_pretrained(ckpt))   # the model, loaded once
    demo = app.blocks()                                        # gr.Blocks; demo.launch(**app.launch_options())

One request runs at a time (`concurrency_limit=1`); the others wait in Gradio's queue and the
page shows their place and the running one's progress by stage (the pipeline's tqdm bars,
tracked by `gr.Progress`). Every input goes through `validate` / the pipeline's own checks:
a bad one is one readable line in the page (`gr.Error`) and one line in the server log, never
a traceback. Uploads over `max_upload_mb` are refused by Gradio at upload, speech over
`validate.MAX_AUDIO_SECONDS` from its header, both before any work. Each request works in its
own folder under the app's temporary root, removed when the request ends, whatever the
outcome; the finished mp4 is handed to Gradio (which copies it into its cache for the page
and the API) before that folder goes. Gradio's cache (uploads, results) is aged out after
`keep_s` and removed when the server stops.

Needs the `web` extra: `pip install -e ".[web]"`.
"""

from __future__ import annotations

import dataclasses
import html
import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from emotivetalk_jax import validate
from emotivetalk_jax.emotion.keywords import KEYWORDS

log = logging.getLogger("emotivetalk_jax.web")

EMOTION_FROM = ("text", "image", "video", "speech clip", "none")
ABLATE = ("none", "lip", "expression")
DEFAULT_UPLOAD_MB = 50.0
_ASSETS = Path(__file__).parent / "assets"


class WebError(validate.InputError):
    """A request the page refuses; one-line message."""


def _gradio():
    try:
        import gradio as gr
    except ImportError as e:
        raise WebError("the web demo needs gradio: pip install -e \".[web]\" (or pip install gradio)") from e
    return gr


# ----------------------------------------------------------------------------- request checks


def media_seconds(path: str | os.PathLike) -> float:
    """Duration from the file's header (soundfile, else `ffmpeg -i`), without decoding; 0 if unknown."""
    try:
        import soundfile

        info = soundfile.info(str(path))
        return info.frames / info.samplerate if info.samplerate else 0.0
    except Exception:  # noqa: BLE001 - not soundfile-readable: ask ffmpeg
        pass
    from emotivetalk_jax.data.video import ffmpeg_exe

    err = subprocess.run([ffmpeg_exe(), "-hide_banner", "-i", str(path)], capture_output=True, text=True,
                         errors="replace").stderr
    m = re.search(r"Duration: (\d+):(\d+):(\d+(?:\.\d+)?)", err)
    return int(m.group(1)) * 3600 + int(m.group(2)) * 60 + float(m.group(3)) if m else 0.0


def _stage_in(upload, what: str, work: Path, max_bytes: int) -> Path | None:
    """An uploaded file linked (or copied) into the request's folder under its own name, so that
    messages name `photo.jpg`, not a cache path; refused when over the size limit."""
    if upload is None or upload == "":
        return None
    src = validate.check_file(upload, what, error=WebError)
    size = src.stat().st_size
    if size > max_bytes:
        raise WebError(f"{what} {src.name} is {size / 1e6:.1f} MB, over the {max_bytes / 1e6:g} MB upload limit")
    dst = work / what.replace(" ", "_") / src.name
    dst.parent.mkdir()
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)
    return dst


def _check_length(path: Path | None, what: str) -> None:
    if path is not None and media_seconds(path) > validate.MAX_AUDIO_SECONDS:
        raise validate.AudioTooLongError(
            f"{what} {path.name} lasts {media_seconds(path):.1f} s, over the {validate.MAX_AUDIO_SECONDS:g} s "
            f"limit: {validate.AUDIO_LIMIT_REASON}")


def one_line(e: BaseException) -> str:
    """The error as one line of at most `validate.LINE_CHARS` characters, each path cut to its file
    name (the page never shows the server's folders)."""
    text = " ".join(line.strip() for line in str(e).strip().splitlines() if line.strip()) or type(e).__name__
    text = re.sub(r"(?<![\w.~-])/(?:[^\s/]+/)+(?=[^\s/])", "", text)
    return validate.shorten_line(text, validate.LINE_CHARS)


# ----------------------------------------------------------------------------- the app


@dataclasses.dataclass
class Request:
    """One generation's inputs, as the page and the API give them (files are paths)."""

    portrait: str | None
    speech: str | None
    emotion_from: str = "text"
    emotion_text: str | None = "happy"
    emotion_image: str | None = None
    emotion_video: str | None = None
    emotion_speech: str | None = None
    steps: int | None = None
    seed: int = 0
    expression_strength: float | None = None
    paste_back: bool = False
    crop: bool = True
    face_box: str | None = None
    dicte_steps: int | None = None
    lip_strength: float | None = None
    ablate: str = "none"


class WebApp:
    """The page's logic over one pipeline; `generate` is the whole request, usable without a browser."""

    def __init__(self, pipe, *, max_upload_mb: float = DEFAULT_UPLOAD_MB, keep_s: float = 3600.0,
                 temp_root: str | os.PathLike | None = None):
        self.pipe = pipe
        self.settings = pipe.settings  # the checkpoint's; a request's strengths override a copy
        self.max_upload_mb = validate.check_float(max_upload_mb, "--max-upload-mb", 0, lo_open=True, error=WebError)
        self.keep_s = float(keep_s)
        self.root = Path(tempfile.mkdtemp(prefix="emotivetalk-web-", dir=temp_root))
        self.requests = 0

    @property
    def student(self) -> bool:
        return self.settings.sampler == "consistency"

    def close(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)

    def generate(self, r: Request, progress=None) -> tuple[str, str, dict]:
        """Run one request in its own folder -> (mp4 path, summary line, details). The caller must
        use the mp4 before calling `cleanup(path)` (the page does: see `_handler`)."""
        from emotivetalk_jax.emotion import EmotionError, EmotionSource
        from emotivetalk_jax.pipeline import GenerationError

        work = Path(tempfile.mkdtemp(prefix="request-", dir=self.root))
        try:
            max_bytes = int(self.max_upload_mb * 1e6)
            if not r.portrait:
                raise WebError("no portrait: upload a photo with one face, or take one with the webcam")
            if not r.speech:
                raise WebError("no speech: upload a recording, or record one with the microphone")
            portrait = _stage_in(r.portrait, "portrait", work, max_bytes)
            speech = _stage_in(r.speech, "speech", work, max_bytes)
            _check_length(speech, "speech")
            kind = r.emotion_from or "text"
            if kind not in EMOTION_FROM:
                raise EmotionError(f"emotion from {validate.quote(kind)}; choose one of {', '.join(EMOTION_FROM)}")
            emotion, how = None, "none: the codebook's neutral expression"
            if kind == "text":
                from emotivetalk_jax.emotion import text_to_keyword

                o = self.pipe.text_options
                m = text_to_keyword(r.emotion_text or "", model_dir=o.get("text_model_dir"),
                                    endpoint=o.get("endpoint"), endpoint_model=o.get("endpoint_model", "gpt-4o"))
                emotion, how = EmotionSource.text(m.keyword), f"text {validate.quote(r.emotion_text)} ({m.method})"
            elif kind != "none":
                value = {"image": r.emotion_image, "video": r.emotion_video, "speech clip": r.emotion_speech}[kind]
                if not value:
                    raise EmotionError(f"emotion from {kind}: upload one, or pick another emotion source")
                path = _stage_in(value, f"emotion {kind}", work, max_bytes)
                if kind == "speech clip":
                    _check_length(path, "emotion speech clip")
                emotion = {"image": EmotionSource.image, "video": EmotionSource.video,
                           "speech clip": EmotionSource.audio}[kind](path)
                how = f"{kind} {path.name}"
            steps = validate.check_steps(_int_or_none(r.steps, "steps"), "steps", error=GenerationError)
            seed = validate.check_seed(_int_or_none(r.seed, "seed"), "seed", error=GenerationError)
            dicte_steps = validate.check_steps(_int_or_none(r.dicte_steps, "Di-CTE steps"), "Di-CTE steps",
                                               error=GenerationError)
            settings = self._request_settings(r.expression_strength, r.lip_strength)
            face_box = validate.parse_face_box(r.face_box or None, "face box", error=GenerationError)
            ablate = None if r.ablate in (None, "", "none") else r.ablate
            out = work / "talk.mp4"
            self.pipe.settings = settings
            t0 = time.perf_counter()
            try:
                result = self.pipe(str(portrait), str(speech), emotion=emotion, seed=seed, steps=steps,
                                   dicte_steps=dicte_steps, out=out, paste=bool(r.paste_back), face_box=face_box,
                                   crop=bool(r.crop), ablate=ablate)
            finally:
                self.pipe.settings = self.settings
            wall = time.perf_counter() - t0
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        self.requests += 1
        details = self._details(result, how, settings, steps, wall)
        summary = (f"{details['frames']} frames ({details['video_s']:.2f} s of video) at {details['size']} px, "
                   f"emotion {details['emotion']} from {how}; {wall:.1f} s of compute = "
                   f"{details['compute_s_per_video_s']:.2f} s per second of video"
                   + (" (the first request includes compilation)" if self.requests == 1 else ""))
        log.info("generated: %s", summary)
        return str(result.path), summary, details

    def cleanup(self, path: str | os.PathLike) -> None:
        """Remove the folder of the request that made `path`."""
        p = Path(path).resolve().parent
        if p.parent == self.root.resolve():
            shutil.rmtree(p, ignore_errors=True)

    def _request_settings(self, expression_strength, lip_strength):
        from emotivetalk_jax.pipeline import GenerationError

        s = self.settings
        expr = s.expr_scale if expression_strength in (None, "") else expression_strength
        lip = s.lip_scale if lip_strength in (None, "") else lip_strength
        expr = validate.check_float(expr, "expression strength", 0.0, 10.0, error=GenerationError)
        lip = validate.check_float(lip, "lip strength", 0.0, 10.0, error=GenerationError)
        if self.student and (expr, lip) != (s.expr_scale, s.lip_scale):
            raise GenerationError(f"this checkpoint is a distilled student with its guidance folded in at "
                                  f"{s.folded_scales}: leave expression and lip strength at 1")
        return dataclasses.replace(s, expr_scale=expr, lip_scale=lip)

    def _details(self, result, how: str, settings, steps, wall: float) -> dict:
        from emotivetalk_jax.pipeline import marks_summary

        info, fps = result.info, settings.fps
        video_s = info["num_frames"] / fps
        return {"emotion": info.get("keyword") or info["emotion_source"], "emotion_how": how,
                "emotion_source": info["emotion_source"], "dicte": info.get("dicte"),
                "frames": int(info["num_frames"]), "fps": fps, "video_s": round(video_s, 3),
                "size": "x".join(str(v) for v in result.frames.shape[1:3]), "seed": info["seed"],
                "steps": int(steps or settings.steps), "sampler": settings.sampler,
                "expression_strength": settings.expr_scale, "lip_strength": settings.lip_scale,
                "ablate": info.get("ablate"), "portrait": _plain(info.get("portrait")),
                "seconds": {k: round(v, 3) for k, v in result.timings.items()}, "wall_s": round(wall, 3),
                "compute_s_per_video_s": round(wall / max(video_s, 1e-9), 3), "request": self.requests,
                "marks": marks_summary(self.pipe.signing_identity())}  # every video the page makes (issue 35)

    # -- the page

    def launch_options(self) -> dict:
        return {"max_file_size": f"{self.max_upload_mb:g}mb", "show_error": True}

    def blocks(self):
        """The gr.Blocks page; queue of one (`concurrency_limit=1`), API name `/generate`."""
        gr = _gradio()
        s = self.settings
        with gr.Blocks(title="EmotiveTalk", analytics_enabled=False,
                       delete_cache=(max(60, int(self.keep_s / 4)), int(self.keep_s))) as demo:
            gr.Markdown("# EmotiveTalk\nA portrait and speech in, a talking video out, with the emotion you choose. "
                        "One request runs at a time; others wait in the queue, their place shown here. "
                        f"The first request compiles the model (slower); later ones reuse it. Uploads up to "
                        f"{self.max_upload_mb:g} MB, speech up to {validate.MAX_AUDIO_SECONDS:g} s.")
            with gr.Row():
                with gr.Column():
                    portrait = _file_image(gr, label="Portrait (one face)", sources=["upload", "webcam"],
                                           type="filepath", height=260, elem_id="portrait")
                    speech = gr.Audio(label="Speech", sources=["upload", "microphone"], type="filepath",
                                      format=None, elem_id="speech")
                    emotion_from = gr.Radio(list(EMOTION_FROM), value="text", label="Emotion from",
                                            elem_id="emotion_from")
                    emotion_text = gr.Dropdown(list(KEYWORDS), value="happy", allow_custom_value=True,
                                               label="Emotion (one of the eight keywords, or a few words)",
                                               elem_id="emotion_text")
                    emotion_image = _file_image(gr, label="Emotion image (a face showing it)", type="filepath",
                                                sources=["upload", "webcam"], visible=False, elem_id="emotion_image")
                    emotion_video = gr.Video(label="Emotion video (expressions followed frame by frame)",
                                             sources=["upload", "webcam"], format=None, visible=False,
                                             elem_id="emotion_video")
                    emotion_speech = gr.Audio(label="Emotion speech clip (its emotion is recognised)",
                                              sources=["upload", "microphone"], type="filepath", format=None,
                                              visible=False, elem_id="emotion_speech")
                    steps = gr.Slider(1, 4 if self.student else max(50, 2 * s.steps), value=s.steps, step=1,
                                      label="Steps", info=f"denoising steps (checkpoint: {s.steps}, {s.sampler})")
                    seed = gr.Number(0, precision=0, minimum=0, maximum=validate.MAX_SEED, label="Seed")
                    expression = gr.Slider(0.0, 4.0, value=s.expr_scale, step=0.1, label="Expression strength",
                                           interactive=not self.student,
                                           info="guidance on the emotion (1: off; higher: stronger expressions)")
                    paste = gr.Checkbox(False, label="Paste back into the original photo")
                    with gr.Accordion("Advanced", open=False):
                        crop = gr.Checkbox(True, label="Detect and crop the face (off: the whole square photo)")
                        face_box = gr.Textbox("", label="Face box X0,Y0,X1,Y1 (when detection fails)")
                        dicte_steps = gr.Slider(1, 50, value=s.dicte_steps, step=1, label="Di-CTE steps",
                                                info="steps of the expression-over-time sampler")
                        lip = gr.Slider(0.0, 4.0, value=s.lip_scale, step=0.1, label="Lip strength",
                                        interactive=not self.student, info="guidance on the lips (1: off)")
                        ablate = gr.Radio(list(ABLATE), value="none", label="Ablation (research)")
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column():
                    video = gr.Video(label="Talking video", format=None, interactive=False, elem_id="video")
                    summary = gr.Markdown(label="Summary", elem_id="summary")
                    details = gr.JSON(label="Details", elem_id="details")
            inputs = [portrait, speech, emotion_from, emotion_text, emotion_image, emotion_video, emotion_speech,
                      steps, seed, expression, paste, crop, face_box, dicte_steps, lip, ablate]
            emotion_from.change(lambda k: [gr.update(visible=k == v) for v in EMOTION_FROM[:4]], emotion_from,
                                [emotion_text, emotion_image, emotion_video, emotion_speech], api_name=False,
                                queue=False)
            button.click(self._handler(), inputs, [video, summary, details], api_name="generate",
                         concurrency_limit=1)
            gr.Examples([[str(_ASSETS / "demo_portrait.png"), str(_ASSETS / "demo_speech.wav"), "text", "happy"]],
                        [portrait, speech, emotion_from, emotion_text], label="Example (the shipped portrait and "
                        "speech)")
        return demo.queue(default_concurrency_limit=1, max_size=32)

    def _handler(self):
        """The click handler: a generator, so that the request's folder goes only after Gradio has
        copied the yielded mp4 into its cache (it asks for the next item after that)."""
        gr = _gradio()

        def generate(portrait, speech, emotion_from="text", emotion_text="happy", emotion_image=None,
                     emotion_video=None, emotion_speech=None, steps=None, seed=0, expression_strength=None,
                     paste_back=False, crop=True, face_box="", dicte_steps=None, lip_strength=None, ablate="none",
                     progress=gr.Progress(track_tqdm=True)):
            r = Request(portrait, speech, emotion_from, emotion_text, emotion_image, emotion_video, emotion_speech,
                        steps, seed, expression_strength, paste_back, crop, face_box, dicte_steps, lip_strength,
                        ablate)
            try:
                path, summary, details = self.generate(r)
            except (ValueError, OSError) as e:  # every bad input: validate's typed errors are ValueErrors
                line = one_line(e)
                log.warning("refused: %s", line)
                raise gr.Error(html.escape(line), duration=None, print_exception=False) from None
            except Exception as e:  # noqa: BLE001 - a bug: one line in the page, the traceback in the log
                log.exception("failed")
                raise gr.Error(html.escape(f"generation failed ({type(e).__name__}); the server log has the "
                                           "details"), duration=None, print_exception=False) from None
            try:
                yield path, summary, details
            finally:
                self.cleanup(path)

        return generate


def _int_or_none(v, name: str):
    if v is None or v == "":
        return None
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _plain(v):
    """JSON-friendly copy (numpy scalars / arrays to Python)."""
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    return v


def _file_image(gr, **kwargs):
    """gr.Image that passes the uploaded file on untouched: `validate` and the project's image
    reader judge it (a text file gets their message, not Pillow's inside Gradio)."""

    class FileImage(gr.Image):
        is_template = True  # the page draws it as an Image

        def preprocess(self, payload):
            if payload is not None and payload.path and not (payload.url or "").startswith("data:"):
                return str(payload.path)
            return super().preprocess(payload)

    return FileImage(**kwargs)


# ----------------------------------------------------------------------------- command line


def add_serve_arguments(p) -> None:
    """`emotivetalk serve` options (cli.py wires them)."""
    p.add_argument("--checkpoint", metavar="DIR", help="pipeline checkpoint folder (default: the installed demo)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 exposes it, see README)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--max-upload-mb", type=float, default=DEFAULT_UPLOAD_MB, help="largest upload accepted (MB)")
    p.add_argument("--keep-minutes", type=float, default=60.0,
                   help="uploads and results are deleted this long after they were made (and when the server stops)")
    p.add_argument("--verify", action="store_true", help="check every checkpoint file's sha256 before loading")
    p.add_argument("--precision", choices=("auto", "float32", "bfloat16"), default="auto")
    p.add_argument("--attention", choices=("auto", "xla", "cudnn", "pallas"), default="auto")
    from emotivetalk_jax.pipeline import add_signing_arguments

    add_signing_arguments(p)  # every video the page makes is marked (`provenance`); there is no --no-mark


def serve_main(args) -> str:
    """Load the model once, then serve until Ctrl-C."""
    from emotivetalk_jax.bundle import BundleError
    from emotivetalk_jax.pipeline import EmotiveTalkPipeline, default_checkpoint

    _gradio()  # the extra is installed: say so before the model loads
    validate.check_int(args.port, "--port", 1, 65535, error=WebError)
    ckpt = args.checkpoint or default_checkpoint()
    if ckpt is None:
        raise WebError("no --checkpoint given and no demo checkpoint installed; pass --checkpoint DIR")
    validate.check_folder(ckpt, "checkpoint", error=BundleError)
    from emotivetalk_jax.provenance import identity

    signer = identity(getattr(args, "sign_cert", None), getattr(args, "sign_key", None))
    logging.basicConfig(level=logging.INFO, format="emotivetalk serve: %(message)s")
    pipe = EmotiveTalkPipeline.from_pretrained(ckpt, verify=args.verify, precision=args.precision,
                                               attention=args.attention)
    pipe.signer = signer
    app = WebApp(pipe, max_upload_mb=args.max_upload_mb, keep_s=60.0 * args.keep_minutes)
    log.info("model loaded from %s (%s, %d px, %s sampler, %d steps)", ckpt, pipe.settings.variant,
             pipe.settings.resolution, pipe.settings.sampler, pipe.settings.steps)
    try:
        app.blocks().launch(server_name=args.host, server_port=args.port, inbrowser=False, share=False,
                            **app.launch_options())
    finally:
        app.close()
    return f"served http://{args.host}:{args.port}/"
