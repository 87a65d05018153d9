"""Pipeline checkpoints ("bundles"): every model `emotivetalk generate` needs, in one folder.

Layout:
    config.json       {"format": "emotivetalk_jax", "component": "pipeline", "variant": NAME,
                       ...settings (`BundleSettings`: resolution, fps, windows, steps, guidance,
                       audio layer, half-width, ...)}
    ethd/ vae/ audio/ component checkpoints of `convert.native` (config.json + orbax state/)
    vaid/             the same layout, component "vaid", config = the `VAIDVariant` as a dict
    face_encoders/    the same layout, component "face_encoders" (`emotion.sources.save_expression_encoder`)
    codebook/         `emotion.codebook.save_codebook` layout
    speech_head/      optional, `emotion.speech.save_speech_head` layout
    fast_decoder/     optional, `train.fast_decoder.save_fast_decoder` layout: a small frame-wise
                      decoder distilled from vae/'s (`generate --fast-decode`)

    manifest.json     size and sha256 of every file; per part its component, variant and
                      parameter shapes (`emotivetalk_jax.manifest`)

`make_random_bundle` writes a random-weight bundle (tiny by default) in seconds: models are
built abstractly (`nnx.eval_shape`) and filled on the host (`convert.engine.random_params`),
never initialised eagerly. `save_bundle` writes the whole folder or nothing (a temporary
sibling renamed into place). `load_bundle` checks, before orbax reads anything, the
manifest (sizes always, sha256 with `verify=True`; a part from a checkpoint of another
variant is named), then that the parts fit together (widths of lip and expression latents,
audio features) and that the bundle is the variant / resolution asked for, each failure a
one-line `BundleError`. A bundle without a manifest (an older one) loads with a notice.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from emotivetalk_jax import interrupts, manifest
from emotivetalk_jax.convert import svd
from emotivetalk_jax.convert.audio import build_audio_encoder
from emotivetalk_jax.convert.engine import ConversionError, fill_from_arrays, random_params
from emotivetalk_jax.convert.native import load_model, save_model
from emotivetalk_jax.data.synthetic import SyntheticDomain
from emotivetalk_jax.emotion.codebook import Codebook, load_codebook, save_codebook
from emotivetalk_jax.emotion.keywords import KEYWORDS
from emotivetalk_jax.emotion.sources import load_expression_encoder, save_expression_encoder
from emotivetalk_jax.emotion.speech import load_speech_head, save_speech_head
from emotivetalk_jax.models.ethd import ETHD
from emotivetalk_jax.models.ethd_variants import ETHD_VARIANTS, InferenceConfig, get_ethd_variant
from emotivetalk_jax.models.face_encoders import FaceEncoders
from emotivetalk_jax.models.vaid import VAID
from emotivetalk_jax.models.vaid_variants import DiCTEConfig, get_vaid_variant
from emotivetalk_jax.models.variants import BASE_AUDIO, TINY_AUDIO
from emotivetalk_jax.train import stages as S
from emotivetalk_jax.train.checkpoint import restore_model_arrays
from emotivetalk_jax.train.fast_decoder import FastDecoderError, load_fast_decoder, save_fast_decoder

FORMAT = "emotivetalk_jax"
COMPONENT = "pipeline"
PARTS = ("ethd", "vae", "audio", "vaid", "face_encoders", "codebook")


class BundleError(ValueError):
    """A pipeline checkpoint that cannot be used; the message says why, in one line."""


@dataclasses.dataclass(frozen=True)
class BundleSettings:
    """Generation settings stored in a bundle's config.json (all overridable per call where sensible)."""

    variant: str
    vaid_variant: str
    resolution: int  # pixels of the square face crop the model works at
    # The paper's numbers are written once, in models/ethd_variants.py and models/vaid_variants.py.
    fps: int = InferenceConfig.fps
    window: int = InferenceConfig.window  # frames per denoising window (3.4)
    overlap: int = InferenceConfig.overlap
    steps: int = InferenceConfig.steps  # DDIM steps of the backbone
    lip_scale: float = 1.0  # CFG scales (1: off); `for_variant` takes the variant's (the paper's: two branches)
    expr_scale: float = 1.0
    dicte_steps: int = DiCTEConfig.sample_steps  # Di-CTE DDIM steps
    audio_layer: int = -1  # wav2vec2 hidden state used as A
    half_width: int = 2  # audio window A_w = 2 half_width + 1 frames
    audio_chunk_s: float = 30.0  # long audio is encoded in chunks (data.audio.encode_chunked)
    audio_context_s: float = 5.0
    motion_bucket_id: int = 127
    noise_aug: float = 0.02
    # The synthetic domain's head motion the bundle was trained on (`data.head_motion`):
    # `bench-synthetic` scores on the same domain by default.
    synthetic_head_motion: float = 1.0
    synthetic_moving_heads: bool = False  # and whether that domain was `MOVING_HEADS` (`data.moving_heads`)
    # Beyond the paper (issue 30), the motion knob: with motion_conditioning stage 2 gave each clip
    # SVD's motion bucket 127 x its pose motion / motion_typical (`data.pose.motion_level`), and
    # generation asks for bucket 127 x LEVEL (`--motion`, 1 = the training data's typical motion,
    # 0 = still; default 1). Off: the constant `motion_bucket_id`, and --motion is refused.
    motion_conditioning: bool = False
    motion_typical: float = 0.0
    crop_scale: float = 1.8  # square crop side = crop_scale x the face box's larger side
    decode_chunk: int = 16  # frames the VAE decodes together (its temporal layers see one chunk)
    decode_batch: int = 1  # chunks per VAE call (vmapped: the same frames, fewer calls)
    batch_windows: int = 1  # windows per backbone call while sampling (0: all of a step's windows in one)
    # "ddim" (any backbone) or "consistency": `ethd/` is a student of stage `student`, sampled in
    # `steps` (1 or 2) single-branch steps from `student_grid` (`diffusion.consistency`); its
    # guidance is folded in at `folded_scales` (lip, expr), so lip_scale / expr_scale stay 1.
    sampler: str = "ddim"
    student_grid: int = 32
    student_sigma_hi: float = 2.0  # the few-step schedule's second sigma (`consistency.student_sigmas`)
    # 0: sampling starts from pure noise at sigma_max; > 0: from the reference frame's latent
    # noised to this sigma (`SamplerConfig.sigma_start`; any sampler kind)
    sigma_start: float = 0.0
    folded_scales: tuple[float, float] | None = None

    def __post_init__(self):
        from emotivetalk_jax.diffusion.sampler import KINDS

        if self.sampler not in KINDS:
            raise BundleError(f"bad pipeline settings: sampler {self.sampler!r}; choose one of {', '.join(KINDS)}")
        if self.sampler == "consistency" and (self.lip_scale != 1.0 or self.expr_scale != 1.0):
            raise BundleError(f"this checkpoint's backbone is a consistency student with its guidance folded in (at "
                              f"{self.folded_scales}); it runs one branch: leave lip_scale and expr_scale at 1 (got "
                              f"{self.lip_scale}, {self.expr_scale})")
        if self.folded_scales is not None:
            object.__setattr__(self, "folded_scales", tuple(float(v) for v in self.folded_scales))
        if not (self.window >= 1 and 0 <= self.overlap < self.window and self.steps >= 1 and self.dicte_steps >= 1
                and self.resolution > 0 and self.fps > 0 and self.decode_chunk >= 1 and self.half_width >= 0
                and self.decode_batch >= 1 and self.batch_windows >= 0 and self.sigma_start >= 0):
            raise BundleError(f"bad pipeline settings: need window >= 1, 0 <= overlap < window, steps, dicte_steps, "
                              f"decode_chunk >= 1, resolution, fps > 0, sigma_start >= 0 (got window={self.window}, "
                              f"overlap={self.overlap}, steps={self.steps}, resolution={self.resolution}, "
                              f"sigma_start={self.sigma_start})")

    @classmethod
    def for_variant(cls, variant: str, vaid_variant: str | None = None, resolution: int | None = None) -> "BundleSettings":
        ev = get_ethd_variant(variant)
        vv = get_vaid_variant(vaid_variant or variant)
        ic = ev.inference
        return cls(variant, vv.name, int(resolution or ev.resolution), ic.fps, ic.window, ic.overlap, ic.steps,
                   lip_scale=ic.guidance_scale, expr_scale=ic.guidance_scale,
                   dicte_steps=vv.dicte.sample_steps, half_width=vv.perceiver.window_half_width,
                   motion_bucket_id=ic.motion_bucket_id, noise_aug=ic.noise_aug, decode_chunk=ic.decode_chunk)

    def to_json(self) -> dict:
        return {"format": FORMAT, "component": COMPONENT, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, meta: dict) -> "BundleSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in meta.items() if k in names})


def parse_settings(items: list[str] | None) -> dict:
    """`["window=16", "steps=10"]` (the CLI's repeated --set) -> checked BundleSettings overrides."""
    names = {f.name for f in dataclasses.fields(BundleSettings)} - {"variant", "vaid_variant", "resolution"}
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in names:
            raise BundleError(f"--set {item!r}: expected KEY=VALUE with KEY one of {', '.join(sorted(names))}")
        try:
            out[key] = ast.literal_eval(value.strip())
        except (ValueError, SyntaxError):
            raise BundleError(f"--set {item!r}: {value!r} is not a number") from None
    return out


@dataclasses.dataclass
class Bundle:
    """The loaded models of a pipeline checkpoint."""

    settings: BundleSettings
    ethd: nnx.Module
    vae: nnx.Module
    audio: nnx.Module
    vaid: nnx.Module
    face_encoders: nnx.Module
    codebook: Any
    speech_head: Any = None
    path: Path | None = None
    fast_decoder: Any = None


# ----------------------------------------------------------------------------- V-AID component


def save_vaid(vaid, folder: str | os.PathLike) -> Path:
    """V-AID (projector, Di-CTE, CLUB) as config.json (its `VAIDVariant`) + orbax state/."""
    return save_model(vaid, Path(folder), "vaid")


def load_vaid(folder: str | os.PathLike):
    meta = _read_json(Path(folder) / "config.json", "V-AID checkpoint")
    if meta.get("component") != "vaid":
        raise BundleError(f"{folder} holds component {meta.get('component')!r}, not 'vaid'")
    return load_model(folder, check=False, component="vaid")


# ----------------------------------------------------------------------------- bundle save / load


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise BundleError(f"{path.parent} is not a {what} (no config.json)")
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise BundleError(f"{path} is not readable JSON ({type(e).__name__}); the {what} is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise BundleError(f"{path} is not an emotivetalk_jax config; pass a pipeline checkpoint folder")
    return meta


def read_settings(path: str | os.PathLike) -> BundleSettings:
    """The settings of the bundle at `path` (BundleError if it is not one)."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise BundleError(f"checkpoint {folder} is a file, not a folder; pass a pipeline checkpoint folder")
    if not folder.is_dir():
        raise BundleError(f"checkpoint {folder} does not exist; pass a pipeline checkpoint folder")
    meta = _read_json(folder / "config.json", "pipeline checkpoint")
    if meta.get("component") != COMPONENT:
        raise BundleError(f"{folder} is a {meta.get('component')!r} component checkpoint, not a pipeline checkpoint "
                          "(a folder with config.json component 'pipeline' and ethd/ vae/ audio/ vaid/ ...)")
    try:
        return BundleSettings.from_json(meta)
    except TypeError as e:
        raise BundleError(f"{folder / 'config.json'} lacks pipeline settings ({e})") from None


def save_bundle(bundle: Bundle, out: str | os.PathLike) -> Path:
    """Write every model of `bundle` and its settings under `out` (a new or empty folder)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new output folder")
    _check_parts(bundle)
    s = bundle.settings
    with manifest.atomic_folder(out) as tmp:
        save_model(bundle.ethd, tmp / "ethd", "ethd", variant=s.variant)
        save_model(bundle.vae, tmp / "vae", "vae", variant=s.variant)
        save_model(bundle.audio, tmp / "audio", "audio", variant=s.variant)
        save_model(bundle.vaid, tmp / "vaid", "vaid", variant=s.vaid_variant)
        save_expression_encoder(bundle.face_encoders, tmp / "face_encoders")
        save_codebook(bundle.codebook, tmp / "codebook")
        if bundle.speech_head is not None:
            save_speech_head(bundle.speech_head, tmp / "speech_head")
        if bundle.fast_decoder is not None:
            save_fast_decoder(bundle.fast_decoder, tmp / "fast_decoder")
        (tmp / "config.json").write_text(json.dumps(s.to_json(), indent=2, sort_keys=True) + "\n")
        manifest.write_manifest(tmp, _components(bundle))
    return out


def _components(b: Bundle) -> dict[str, dict]:
    """The manifest's record of each part: component, variant and parameter shapes."""
    component_entry, model_shapes = manifest.component_entry, manifest.model_shapes
    s = b.settings
    parts = {"ethd": ("ethd", s.variant, model_shapes(b.ethd)), "vae": ("vae", s.variant, model_shapes(b.vae)),
             "audio": ("audio", s.variant, model_shapes(b.audio)),
             "vaid": ("vaid", s.vaid_variant, model_shapes(b.vaid)),
             "face_encoders": ("face_encoders", None, model_shapes(b.face_encoders)),
             "codebook": ("codebook", None, {"means": list(np.shape(b.codebook.means))})}
    if b.speech_head is not None:
        parts["speech_head"] = ("speech_head", None, model_shapes(b.speech_head))
    if b.fast_decoder is not None:
        parts["fast_decoder"] = ("fast_decoder", None, model_shapes(b.fast_decoder))
    return {k: component_entry(*v) for k, v in parts.items()}


def add_speech_head(path: str | os.PathLike, head, *, replace: bool = False) -> Path:
    """Put a speech-emotion head into the bundle at `path` as speech_head/ and rewrite its
    manifest (the other parts untouched). The bundle is checked first; a head on encoder
    features must match the width of the bundle's audio encoder, which it will read."""
    folder = Path(path)
    read_settings(folder)
    meta = verify_bundle(folder, hashes=True)
    width = _read_json(folder / "audio" / "config.json", "audio encoder")["config"]["hidden_size"]
    if head.cfg.feature == "wavlm" and head.cfg.encoder_width not in (None, width):
        raise BundleError(f"the speech-emotion head reads a {head.cfg.encoder_width}-wide encoder; the audio encoder "
                          f"of {folder} is {width} wide")
    return _add_part(folder, meta, "speech_head", head, save_speech_head, replace)


def add_fast_decoder(path: str | os.PathLike, decoder, *, replace: bool = False) -> Path:
    """Put a fast decoder (`train.fast_decoder`) into the bundle at `path` as fast_decoder/ and
    rewrite its manifest (the other parts untouched). Its latent channels and upsampling must be
    the bundle's VAE's (it should be distilled from that VAE's decoder: nothing here can tell)."""
    folder = Path(path)
    read_settings(folder)
    meta = verify_bundle(folder, hashes=True)
    vae = _read_json(folder / "vae" / "config.json", "VAE")["config"]
    _check_fast_decoder(decoder, int(vae["latent_channels"]), 2 ** (len(vae["block_out_channels"]) - 1), folder)
    return _add_part(folder, meta, "fast_decoder", decoder, save_fast_decoder, replace)


def _check_fast_decoder(decoder, latent_channels: int, factor: int, where) -> None:
    cfg = decoder.cfg
    if (cfg.latent_channels, cfg.factor) != (latent_channels, factor):
        raise BundleError(f"{where}: the fast decoder reads {cfg.latent_channels} latent channels and upsamples "
                          f"{cfg.factor}x, the VAE has {latent_channels} and {factor}x; distil one from this VAE")


def _add_part(folder: Path, meta: dict | None, name: str, model, save, replace: bool) -> Path:
    """Write `model` with `save` into `folder/name` (replacing one only with `replace`), then the manifest."""
    import shutil
    import secrets

    dest = folder / name
    if dest.exists() and not replace:
        raise BundleError(f"{folder} already has a {name}/; pass --replace to replace it")
    tmp = folder / f".{name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        save(model, tmp)
        if dest.exists():
            shutil.rmtree(dest)
        os.rename(tmp, dest)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    components = dict((meta or {}).get("components") or {})
    components[name] = manifest.component_entry(name, None, manifest.model_shapes(model))
    manifest.write_manifest(folder, components)
    verify_bundle(folder, hashes=True)
    return folder


def verify_bundle(path: str | os.PathLike, *, hashes: bool = True) -> dict | None:
    """Check a bundle folder against its manifest (BundleError naming the first bad file);
    returns the manifest, or None (with a notice) for a bundle written before manifests."""
    folder = Path(path)
    try:
        meta = manifest.verify(folder, hashes=hashes)
    except manifest.IntegrityError as e:
        raise BundleError(str(e)) from None
    if meta is None:
        manifest.notice_unverified(folder, "pipeline checkpoint")
    return meta


def ethd_has_pose(folder: str | os.PathLike) -> bool:
    """Whether a bundle's backbone has the pose guider (read from ethd/config.json, nothing loaded)."""
    try:
        meta = json.loads((Path(folder) / "ethd" / "config.json").read_text())
    except (OSError, ValueError):
        return False
    return bool(((meta.get("config") or {}).get("ethd") or {}).get("pose", False))


def check_request(settings: BundleSettings, path: Path | str, variant: str | None = None,
                  resolution: int | None = None) -> None:
    """BundleError unless the bundle is the variant / resolution asked for."""
    if variant is not None and variant != settings.variant:
        raise BundleError(f"checkpoint {path} is variant {settings.variant!r}, not the requested {variant!r}; "
                          f"pass a {variant} checkpoint or drop --variant")
    if resolution is not None and int(resolution) != settings.resolution:
        raise BundleError(f"checkpoint {path} works at {settings.resolution} px, not the requested {resolution} px")


def _check_parts(b: Bundle) -> None:
    """The parts of a bundle must fit: variant, lip / expression widths, audio features."""
    s, where = b.settings, b.path or "the bundle"
    ethd_cfg = b.ethd.ethd_config
    if s.variant in ETHD_VARIANTS:
        want = get_ethd_variant(s.variant).ethd  # the pose guider is a per-run choice (stage 2's pose_condition)
        want = dataclasses.replace(want, pose=ethd_cfg.pose, pose_hidden=ethd_cfg.pose_hidden)
        if dataclasses.asdict(ethd_cfg) != dataclasses.asdict(want):
            raise BundleError(f"{where}/ethd is not a {s.variant} backbone (its EmotiveTalk widths differ); "
                              "the checkpoint's parts are of different variants")
    v = b.vaid.variant
    checks = [
        ("lip latent width (V-AID projector vs ETHD)", v.perceiver.out_dim, ethd_cfg.lip_dim),
        ("expression width (Di-CTE vs ETHD)", v.dicte.expr_dim, ethd_cfg.expr_dim),
        ("expression width (face encoders vs ETHD)", b.face_encoders.cfg.expr_dim, ethd_cfg.expr_dim),
        ("expression width (codebook vs ETHD)", b.codebook.expr_dim, ethd_cfg.expr_dim),
        ("audio feature width (audio encoder vs V-AID)", b.audio.config["hidden_size"], v.perceiver.audio_dim),
        ("audio window half-width (settings vs V-AID)", s.half_width, v.perceiver.window_half_width),
    ]
    for what, a, c in checks:
        if a != c:
            raise BundleError(f"{where}: {what} disagree ({a} vs {c}); the checkpoint's parts are of different variants")
    factor = vae_factor(b.vae)
    if s.resolution % (factor * 2 ** (len(b.ethd.config["block_out_channels"]) - 1)):
        raise BundleError(f"{where}: resolution {s.resolution} does not divide into the VAE and UNet levels")
    if b.fast_decoder is not None:
        _check_fast_decoder(b.fast_decoder, int(b.vae.config["latent_channels"]), factor, where)


def vae_factor(vae: nnx.Module) -> int:
    """Pixels per latent cell of a VAE (2 ** (levels - 1))."""
    return 2 ** (len(vae.config["block_out_channels"]) - 1)


def load_bundle(path: str | os.PathLike, *, variant: str | None = None, resolution: int | None = None,
                verify: bool = False) -> Bundle:
    """Load a bundle written by `save_bundle`, checked (see `verify_bundle` (sizes; sha256 with
    `verify`), `check_request`, `_check_parts`)."""
    folder = Path(path)
    settings = read_settings(folder)
    check_request(settings, folder, variant, resolution)
    missing = [p for p in PARTS if not (folder / p).is_dir()]
    if missing:
        raise BundleError(f"checkpoint {folder} lacks {', '.join(p + '/' for p in missing)}; it is incomplete")
    verify_bundle(folder, hashes=verify)
    try:
        with interrupts.deferred():  # a signal mid-restore is raised after it (orbax's threads stay quiet)
            models = {k: load_model(folder / k, check=False) for k in ("ethd", "vae", "audio")}
            vaid = load_vaid(folder / "vaid")
            face = load_expression_encoder(folder / "face_encoders")
            book = load_codebook(folder / "codebook")
            head = None
            if (folder / "speech_head").is_dir():
                head = load_speech_head(folder / "speech_head")
            fast = load_fast_decoder(folder / "fast_decoder") if (folder / "fast_decoder").is_dir() else None
    except (ConversionError, BundleError, FastDecoderError) as e:
        raise BundleError(str(e).splitlines()[0]) from None
    except (ValueError, KeyError, FileNotFoundError) as e:  # orbax shape / tree mismatches
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise BundleError(f"checkpoint {folder} does not load ({first[:200]})") from None
    b = Bundle(settings, models["ethd"], models["vae"], models["audio"], vaid, face, book, head, folder, fast)
    _check_parts(b)
    return b


# ----------------------------------------------------------------------------- random bundles

def random_bundle(variant: str = "tiny", seed: int = 0, *, resolution: int | None = None, pose: bool = False,
                  **settings: Any) -> Bundle:
    """A bundle of `variant` with random weights (abstract build + host fill; nothing trained);
    `pose`: its ETHD has the pose guider (random too, so a driving pose changes the output)."""
    ev = get_ethd_variant(variant)
    vv = get_vaid_variant(settings.pop("vaid_variant", None) or variant)
    s = dataclasses.replace(BundleSettings.for_variant(variant, vv.name, resolution), **settings)
    abstract = lambda f: nnx.eval_shape(f)
    ecfg = dataclasses.replace(ev.ethd, pose=pose)
    ethd = random_params(abstract(lambda: ETHD.from_svd_config(dict(ev.svd.unet), ecfg, rngs=nnx.Rngs(0))), seed)
    vae = random_params(abstract(lambda: svd.build("vae", dict(ev.svd.vae), rngs=nnx.Rngs(0))), seed + 1)
    audio_cfg = dict(TINY_AUDIO if vv.perceiver.audio_dim == TINY_AUDIO["hidden_size"] else BASE_AUDIO)
    audio = random_params(build_audio_encoder(audio_cfg, abstract=True), seed + 2)
    vaid = random_params(abstract(lambda: VAID(vv, rngs=nnx.Rngs(0))), seed + 3)
    face = random_params(abstract(lambda: FaceEncoders(vv.face, rngs=nnx.Rngs(0))), seed + 4)
    rng = np.random.default_rng(seed + 5)
    book = Codebook(rng.standard_normal((8, vv.dicte.expr_dim)).astype(np.float32), np.ones(8, np.int64),
                    {"random": True})
    return Bundle(s, ethd, vae, audio, vaid, face, book)


def make_random_bundle(out: str | os.PathLike, variant: str = "tiny", seed: int = 0, *,
                       resolution: int | None = None, pose: bool = False, **settings: Any) -> Path:
    """Write a random-weight bundle of `variant` to `out` (for tests and trying the tools)."""
    return save_bundle(random_bundle(variant, seed, resolution=resolution, pose=pose, **settings), out)



# ----------------------------------------------------------------------------- from training


def training_config(workdir: str | os.PathLike) -> dict:
    """The config JSON saved with the latest checkpoint of a training workdir."""
    if not (Path(workdir) / "checkpoints").is_dir():
        raise BundleError(f"{workdir} is not a training workdir (no checkpoints/); pass the stage-2 workdir")
    mngr = ocp.CheckpointManager(Path(workdir).absolute() / "checkpoints", item_names=("config",),
                                 item_handlers={"config": ocp.JsonCheckpointHandler()})
    step = mngr.latest_step()
    if step is None:
        raise BundleError(f"no checkpoint in {workdir}/checkpoints; train a stage there first")
    cfg = mngr.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"]
    mngr.close()
    return dict(cfg)


def _workdir_arrays(workdir: str | os.PathLike, ema: bool = False, step: int | None = None) -> dict[str, np.ndarray]:
    """{dotted model path: array} of the latest checkpoint of a training workdir, on the host
    (`ema`: the run's moving average of its trained parameters, where it kept one)."""
    if not (Path(workdir) / "checkpoints").is_dir():
        raise BundleError(f"{workdir} is not a training workdir (no checkpoints/)")
    try:
        return restore_model_arrays(workdir, ema=ema, step=step)
    except FileNotFoundError as e:
        raise BundleError(f"{e}; train that stage first") from None
    except Exception as e:  # noqa: BLE001 - orbax errors are pages long; keep one line
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise BundleError(f"cannot restore {workdir}/checkpoints ({type(e).__name__}: {first[:160]})") from None


def _fill(abstract: nnx.Module, arrays: dict[str, np.ndarray], what: str, subtree: str | None = None) -> nnx.Module:
    """`abstract` with every variable taken from `arrays` (strict: missing or mis-shaped -> BundleError)."""
    try:
        return fill_from_arrays(abstract, arrays, what, subtree=subtree)
    except ConversionError as e:
        raise BundleError(str(e)) from None


def synthetic_codebook(face_encoders, resolution: int, *, data_seed: int = 0, clips: int = 64,
                       frames_per_clip: int = 8):
    """Emotion-to-expression codebook from training clips of the synthetic domain: the mean
    expression latent of each keyword's frames (what `codebook build` does with labelled photos)."""
    domain = SyntheticDomain(data_seed)
    sums = np.zeros((len(KEYWORDS), face_encoders.cfg.expr_dim), np.float64)
    counts = np.zeros(len(KEYWORDS), np.int64)
    aligned = bool(getattr(face_encoders.cfg, "aligned", False))
    encode = nnx.jit(lambda m, x, lm: m.encode_expression(x, lm))
    for i in range(clips):
        clip = domain.clip(i, "train")
        idx = np.linspace(0, clip.num_frames - 1, frames_per_clip).round().astype(int)
        x = jnp.asarray(clip.frames(size=resolution)[idx], jnp.float32) / 127.5 - 1.0
        lm = jnp.asarray(clip.landmarks(size=resolution)[idx]) if aligned else None  # aligned encoders read them
        e = np.asarray(encode(face_encoders, x, lm))
        k = KEYWORDS.index(clip.emotion)
        sums[k] += e.sum(0)
        counts[k] += len(e)
    means = (sums / np.maximum(counts, 1)[:, None]).astype(np.float32)
    return Codebook(means, counts, {"source": "synthetic", "data_seed": data_seed, "clips": clips})


def _with_parts_from(model: nnx.Module, workdir: str | os.PathLike, parts: tuple[str, ...],
                     what: tuple[str, str, str, str]) -> nnx.Module:
    """`model` with its top-level `parts` taken from the training workdir `workdir`; every other
    array must equal `model`'s (what stage 2 trained against), else BundleError naming the
    first that differs. `what`: (flag, kind, the model stage 2 used, how to make a fitting run)."""
    flag, kind, stage2, hint = what
    arrays = _workdir_arrays(workdir)
    mine = {".".join(str(k) for k in p): np.asarray(v.value) for p, v in nnx.to_flat_state(nnx.state(model))}
    for key, value in mine.items():
        if key.split(".")[0] not in parts and (key not in arrays or not np.array_equal(arrays[key], value)):
            raise BundleError(f"{flag} {workdir}: its {key} differs from the {kind} stage 2 trained against ({stage2}); "
                              f"{hint}")
    return _fill(model, arrays, f"{workdir} ({kind})")


def _with_decoder_from(vae: nnx.Module, workdir: str | os.PathLike, stage2_vae: str) -> nnx.Module:
    """`vae` with its decoder taken from a `vae_train=decoder` fine-tune in `workdir`; every other
    array (encoder, quant_conv) must equal `vae`'s, or the latents stage 2 learnt would change."""
    out = _with_parts_from(vae, workdir, ("decoder",), (
        "--vae", "VAE", stage2_vae, "pass a decoder fine-tune of that VAE (stage vae, vae_train=decoder, init.vae=it)"))
    out.config = dict(vae.config)  # stage 2's scaling factor
    return out


def _with_dicte_from(vaid: nnx.Module, workdir: str | os.PathLike, stage2_vaid: str) -> nnx.Module:
    """`vaid` with Di-CTE (and CLUB's q) taken from a `vaid_train=dicte` run in `workdir`; the lip
    projector must equal `vaid`'s, or the l_a stage 2 learnt on would change."""
    return _with_parts_from(vaid, workdir, ("dicte", "club"), (
        "--vaid", "V-AID", stage2_vaid,
        "pass a Di-CTE retrain of that V-AID (stage vaid, vaid_train=dicte, init.vaid=it)"))


def bundle_from_training(out: str | os.PathLike, ethd_workdir: str | os.PathLike, *, codebook=None,
                         resolution: int | None = None, vae: str | os.PathLike | None = None,
                         vaid: str | os.PathLike | None = None, step: int | None = None, **settings: Any) -> Path:
    """A bundle from a stage-2 (`ethd`) training workdir: the trained ETHD plus exactly the frozen
    models that stage trained against (its audio encoder, face encoders, V-AID and VAE, rebuilt
    from the run's saved config), and a codebook (given, or from synthetic training clips).
    `vae`: a decoder fine-tune (stage `vae`, `vae_train=decoder`) of stage 2's VAE whose decoder
    replaces the original one (its encoder must be identical). `vaid`: a Di-CTE retrain (stage
    `vaid`, `vaid_train=dicte`) of stage 2's V-AID whose Di-CTE replaces the original one (its lip
    projector must be identical). `step`: that checkpoint of the run instead of the latest.

    A `student` run (consistency distillation) gives a bundle with `sampler="consistency"`, two
    steps by default and its folded guidance recorded; where its teacher is a bundle's `ethd/`,
    that bundle's settings, codebook and speech head carry over."""
    cfg = ml_collections.ConfigDict(training_config(ethd_workdir))
    if cfg.stage not in ("ethd", "student"):
        raise BundleError(f"{ethd_workdir} is a {cfg.stage!r} run; pass the stage-2 (ethd) or student workdir")
    ev = get_ethd_variant(cfg.variant)
    vv = get_vaid_variant(cfg.vaid_variant or cfg.variant)
    seed = int(cfg.seed)
    shape = nnx.eval_shape
    ecfg = S.stage_ethd_config(cfg, ev)
    ethd = _fill(shape(lambda: ETHD.from_svd_config(dict(ev.svd.unet), ecfg, rngs=nnx.Rngs(0))),
                 _workdir_arrays(ethd_workdir, ema=True, step=step), f"{ethd_workdir} (ETHD)")
    # The frozen models exactly as stage 2 built them (its config's init paths and seeds).
    vae_model = S.vae_model(cfg, ev, seed + 3)
    if vae:
        vae_model = _with_decoder_from(vae_model, vae, cfg.init.vae or cfg.init.svd or "a random VAE")
    audio = S.audio_encoder(cfg, seed + 1)
    if cfg.init.face_encoders and S.is_workdir(cfg.init.face_encoders):
        fcfg = S.face_config(cfg, vv)  # aligned as stage 0 trained them
        face = _fill(shape(lambda: FaceEncoders(fcfg, rngs=nnx.Rngs(0))), _workdir_arrays(cfg.init.face_encoders),
                     f"{cfg.init.face_encoders} (face encoders)", "encoders")
    else:
        face = S.face_encoders(cfg, vv, seed + 2)
    if cfg.init.vaid and S.is_workdir(cfg.init.vaid):
        vaid_model = _fill(shape(lambda: VAID(vv, rngs=nnx.Rngs(0))), _workdir_arrays(cfg.init.vaid),
                           f"{cfg.init.vaid} (V-AID)")
    else:
        vaid_model = S.vaid_model(cfg, vv, seed + 4)
    if vaid:
        vaid_model = _with_dicte_from(vaid_model, vaid, cfg.init.vaid or "a random V-AID")
    factor = vae_factor(vae_model)
    size = int(resolution or cfg.image_size or int(ev.svd.unet["sample_size"]) * factor)
    motion = float(cfg.data.get("head_motion", 1.0))
    knob = {"synthetic_moving_heads": bool(cfg.data.get("moving_heads", False))}
    if cfg.stage == "ethd" and cfg.get("motion_conditioning", False):
        knob.update(motion_conditioning=True, motion_typical=S.motion_typical(cfg))
    base, teacher, head = BundleSettings.for_variant(ev.name, vv.name, size), None, None
    if cfg.stage == "student":
        from emotivetalk_jax.train.stages.student import teacher_scales

        try:
            teacher = Path(cfg.init.teacher).parent
            base = dataclasses.replace(read_settings(teacher), resolution=size)
        except BundleError:
            teacher = None  # a stage-2 workdir: the variant's settings
        base = dataclasses.replace(base, sampler="consistency", steps=2, lip_scale=1.0, expr_scale=1.0,
                                   folded_scales=teacher_scales(cfg), student_grid=int(cfg.student_grid))
        if teacher is not None and (teacher / "speech_head").is_dir():
            head = load_speech_head(teacher / "speech_head")
    s = dataclasses.replace(base, synthetic_head_motion=motion, **{**knob, **settings})
    if codebook is None and teacher is not None:
        codebook = load_codebook(teacher / "codebook")
    elif codebook is None:
        codebook = synthetic_codebook(face, size, data_seed=int(cfg.data.data_seed))
    elif not hasattr(codebook, "means"):
        codebook = load_codebook(codebook)
    b = Bundle(s, ethd, vae_model, audio, vaid_model, face, codebook, head)
    _check_parts(b)
    return save_bundle(b, out)

__all__ = [
    "Bundle", "BundleError", "BundleSettings", "load_bundle", "save_bundle", "verify_bundle", "read_settings",
    "add_speech_head", "add_fast_decoder",
    "check_request", "ethd_has_pose",
    "random_bundle", "make_random_bundle", "save_vaid", "load_vaid", "vae_factor", "bundle_from_training",
    "synthetic_codebook", "training_config", "parse_settings",
]
