"""`emotivetalk speech-head train | eval | add`: the speech-emotion head (6.3) from labelled speech.

Shape legend: N utterances, F feature width, K = 8 keywords (`KEYWORDS` order).

The head is an MLP on one pooled feature per utterance (`speech.py`), so it trains full-batch
on features extracted once, with exactly the function inference uses (`speech.feature_fn`:
the whole utterance, as `generate --emotion-audio` reads it); held-out accuracy is measured
every `eval_every` steps (the head's counterpart of the stages' gates, `report.json`) and its
confusion matrix at the end. Data:

* `synthetic` (the default): training utterances are training-split clips of the synthetic
  domains `data_seed + 1 ..` (`voice_seeds` of them; each draws its own identity pool, so
  thousands of voices instead of one pool's 224). Held-out utterances are test-split clips of
  `data_seed` (the bench's domain): held-out identities, so held-out voices, and held-out
  utterances. Settings are chosen on a validation set that is neither: test-split clips of
  `val_seed` (another domain's held-out voices), scored beside the held-out set at every
  evaluation;
* a folder written by `emotivetalk prepare` whose clips carry emotion labels (MEAD's): its
  `train` split's labelled clips, scored on its `test` split (`--split-by speaker` there for
  held-out voices).

Features (`--feature`): `wavlm` reads an audio encoder's hidden layer, pooled (`--encoder`: a
converted WavLM / wav2vec2 folder or a bundle's `audio/`; the default is the demo bundle's own
encoder, which the pipeline then passes); `prosody` reads pitch, energy, rate and tilt
statistics (`data.measure.prosody_features`), no encoder.
"""

from __future__ import annotations

import dataclasses
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from emotivetalk_jax.emotion.keywords import KEYWORDS, EmotionError

BAR = 0.90  # held-out accuracy the shipped head must reach (chance 1 / 8)
VAL_SEED = 1000  # the synthetic domain whose held-out voices are the validation set
SPEECH_COMMANDS = ("speech-head",)


@dataclasses.dataclass
class SpeechSet:
    """Labelled utterances: waveforms (16 kHz), keyword indices (N,), speaker ids (N,)."""

    waves: list
    labels: np.ndarray
    speakers: np.ndarray
    source: str


def _keyword_index(emotion: str) -> int:
    return KEYWORDS.index(emotion)


def synthetic_set(split: str, clips: int, *, data_seed: int = 0, voice_seeds: int = 0,
                  progress: Callable | None = None) -> SpeechSet:
    """`clips` utterances: split "train" spreads them over the domains `data_seed + 1 ..
    data_seed + voice_seeds` (one domain, `data_seed`, when `voice_seeds` is 0); "test" takes
    clips 0.. of `data_seed`'s held-out identities."""
    from emotivetalk_jax.data.synthetic import SyntheticDomain

    seeds = [data_seed] if split != "train" or voice_seeds < 1 else [data_seed + 1 + s for s in range(voice_seeds)]
    per = -(-clips // len(seeds))
    items = [(seeds[i // per], i % per) for i in range(clips)]
    waves, labels, speakers = [], [], []
    for seed, index in (progress(items) if progress else items):
        c = SyntheticDomain(seed).clip(index, split)
        waves.append(c.audio)
        labels.append(_keyword_index(c.emotion))
        speakers.append(seed * 100_000 + c.identity_id)
    return SpeechSet(waves, np.array(labels, np.int32), np.array(speakers, np.int64),
                     f"synthetic {split} (data seeds {seeds[0]}..{seeds[-1]})")


def prepared_set(folder: str | os.PathLike, split: str) -> SpeechSet:
    """The emotion-labelled clips of a split written by `emotivetalk prepare`."""
    from emotivetalk_jax.data.prepare import open_prepared
    from emotivetalk_jax.data.synthetic_speech import EMOTIONS

    ds = open_prepared(folder, split)
    waves, labels, speakers = [], [], []
    for i in range(len(ds)):
        rec = ds[i]
        if int(rec["emotion"]) < 0:
            continue
        waves.append(np.asarray(rec["audio"], np.float32))
        labels.append(_keyword_index(EMOTIONS[int(rec["emotion"])]))
        speakers.append(zlib.crc32(str(rec.get("speaker", i)).encode()))
    if len(waves) < 2:
        raise EmotionError(f"{folder} split {split!r} has {len(waves)} clips with an emotion label; the speech-emotion "
                           "head needs labelled clips (MEAD-style folders named by emotion)")
    return SpeechSet(waves, np.array(labels, np.int32), np.array(speakers, np.int64), f"prepared {folder} ({split})")


def confusion(head, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(K, K) counts: row the true keyword, column the predicted one (`KEYWORDS` order)."""
    from emotivetalk_jax.emotion.speech import predict_keywords

    _, probs = predict_keywords(head, features)
    cm = np.zeros((len(KEYWORDS), len(KEYWORDS)), np.int64)
    np.add.at(cm, (np.asarray(labels), probs.argmax(-1)), 1)
    return cm


def confusion_report(cm: np.ndarray) -> dict:
    """Accuracy, per-keyword recall and the matrix as {true: {predicted: count}}."""
    total = int(cm.sum())
    recall = {k: (float(cm[i, i] / cm[i].sum()) if cm[i].sum() else None) for i, k in enumerate(KEYWORDS)}
    return {"accuracy": float(np.trace(cm) / max(total, 1)), "utterances": total, "chance": 1 / len(KEYWORDS),
            "recall": recall, "confusion": {k: dict(zip(KEYWORDS, map(int, row))) for k, row in zip(KEYWORDS, cm)}}


def default_encoder_dir() -> Path | None:
    from emotivetalk_jax.pipeline import default_checkpoint

    ckpt = default_checkpoint()
    return None if ckpt is None else ckpt / "audio"


def load_encoder(path: str | os.PathLike | None):
    """A native audio component folder (a bundle's audio/, `convert audio` output) or a Hugging
    Face WavLM / wav2vec2 folder."""
    from emotivetalk_jax import validate
    from emotivetalk_jax.convert import native
    from emotivetalk_jax.convert.audio import load_hf_audio_encoder

    path = path or default_encoder_dir()
    if path is None:
        raise EmotionError("no --encoder given and no demo checkpoint installed; pass --encoder DIR")
    validate.check_folder(path, "--encoder", error=EmotionError)
    if (Path(path) / "state").is_dir():
        return native.load_model(path, check=False)
    return load_hf_audio_encoder(path)


_SETS = ("train", "heldout", "validation")


def cached_sets(*sets: SpeechSet) -> dict[str, np.ndarray]:
    """The labels, speakers and sources of the train, held-out (and validation) sets, for a cache."""
    return {f"{k}_{f}": np.asarray(getattr(d, f)) for k, d in zip(_SETS, sets) for f in ("labels", "speakers", "source")}


def sets_from_cache(cache: Path) -> tuple[SpeechSet, ...]:
    """The sets of a feature cache (train, held-out and, when cached, validation), without waveforms."""
    with np.load(cache) as z:
        return tuple(SpeechSet([], z[f"{k}_labels"], z[f"{k}_speakers"], str(z[f"{k}_source"]))
                     for k in _SETS if f"{k}_labels" in z.files)


def _features(sets: dict[str, SpeechSet], fn: Callable, progress: Callable | None, cache: Path | None) -> dict:
    """{name: (N, F) features} of every set, read from `cache` when it holds them all, else
    extracted (and written there)."""
    from emotivetalk_jax.emotion.speech import extract_features

    if cache is not None and cache.is_file():
        with np.load(cache) as z:
            if all(k in z.files for k in sets):
                return {k: z[k] for k in sets}
    arrays = {k: extract_features(progress(d.waves) if progress else d.waves, fn) for k, d in sets.items()}
    if cache is not None:
        np.savez(cache, **arrays, **cached_sets(*sets.values()))
    return arrays


def train_head(train: SpeechSet, heldout: SpeechSet, cfg, *, encoder=None, steps: int = 500,
               learning_rate: float = 3e-3, weight_decay: float = 1e-2, seed: int = 0, eval_every: int = 100,
               progress: Callable | None = None, cache: Path | None = None,
               validation: SpeechSet | None = None) -> tuple:
    """(head, report): a head trained on `train`, scored on `heldout` (and `validation`, the set
    settings are chosen on) every `eval_every` steps. `cache`: an .npz of the extracted features
    (and `cached_sets`), reused when it exists (the caller names it by everything the features
    depend on)."""
    from emotivetalk_jax.emotion.speech import accuracy, feature_fn, train_speech_emotion_head

    sets = {"train": train, "heldout": heldout, **({"validation": validation} if validation is not None else {})}
    arrays = _features(sets, feature_fn(cfg, encoder), progress, cache)
    feats, held = arrays["train"], arrays["heldout"]
    history = []

    def on_eval(step: int, head) -> None:
        row = {"step": step, "train_accuracy": accuracy(head, feats, train.labels)}
        if validation is not None:
            row["validation_accuracy"] = accuracy(head, arrays["validation"], validation.labels)
        history.append({**row, "heldout_accuracy": accuracy(head, held, heldout.labels)})

    head = train_speech_emotion_head(feats, train.labels, cfg, steps=steps, learning_rate=learning_rate,
                                     weight_decay=weight_decay, seed=seed, eval_every=eval_every, on_eval=on_eval)
    report = {"heldout": confusion_report(confusion(head, held, heldout.labels)), "history": history,
              "train": {"utterances": len(train.labels), "voices": int(len(np.unique(train.speakers))),
                        "source": train.source},
              "heldout_data": {"utterances": len(heldout.labels), "voices": int(len(np.unique(heldout.speakers))),
                               "source": heldout.source,
                               "voices_also_in_training": int(len(np.intersect1d(train.speakers, heldout.speakers)))},
              "config": dataclasses.asdict(head.cfg), "steps": steps, "learning_rate": learning_rate,
              "weight_decay": weight_decay, "seed": seed, "bar": BAR}
    if validation is not None:
        report["validation"] = {**confusion_report(confusion(head, arrays["validation"], validation.labels)),
                                "source": validation.source, "voices": int(len(np.unique(validation.speakers))),
                                "voices_also_in_training": int(len(np.intersect1d(train.speakers,
                                                                                  validation.speakers)))}
    return head, report


# ----------------------------------------------------------------------------- command line


def add_speech_commands(sub) -> None:
    s = sub.add_parser("speech-head", help="the speech-emotion head (--emotion-audio, --emotion-from-speech)")
    ssub = s.add_subparsers(dest="speech_command", required=True)
    t = ssub.add_parser("train", help="train a head on labelled speech (held-out accuracy and confusion matrix "
                                      "in OUT/report.json)")
    t.add_argument("out")
    t.add_argument("--data", default="synthetic", metavar="synthetic|DIR",
                   help="synthetic speech (default) or a folder written by `emotivetalk prepare` with emotion labels")
    t.add_argument("--feature", choices=("wavlm", "prosody", "voice"), default="voice",
                   help="an audio encoder's pooled hidden layer (wavlm), prosody statistics, or those and "
                        "speaker-independent pitch / loudness / rhythm statistics (voice, the default)")
    t.add_argument("--encoder", metavar="DIR",
                   help="audio encoder for --feature wavlm (default: the demo bundle's audio/)")
    t.add_argument("--layer", type=int, default=-1, help="encoder hidden state (0 = input, -1 = last)")
    t.add_argument("--pooling", choices=("mean", "mean_std"), default="mean_std")
    t.add_argument("--hidden", type=int, default=128)
    t.add_argument("--clips", type=int, default=12000, help="synthetic training utterances")
    t.add_argument("--voice-seeds", type=int, default=30, help="synthetic domains the training voices come from")
    t.add_argument("--heldout-clips", type=int, default=512, help="synthetic held-out utterances (held-out voices)")
    t.add_argument("--data-seed", type=int, default=0,
                   help="the synthetic domain whose held-out identities score the head")
    t.add_argument("--val-seed", type=int, default=VAL_SEED,
                   help="the synthetic domain whose held-out identities are the validation set (choose settings "
                        "on its accuracy, not the held-out one's)")
    t.add_argument("--val-clips", type=int, default=512, help="synthetic validation utterances (0: none)")
    t.add_argument("--steps", type=int, default=400)
    t.add_argument("--lr", type=float, default=3e-3)
    t.add_argument("--weight-decay", type=float, default=0.1)
    t.add_argument("--eval-every", type=int, default=100)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--quiet", action="store_true", help="no progress bars")
    e = ssub.add_parser("eval", help="held-out accuracy and confusion matrix of a head (JSON)")
    e.add_argument("head", help="a speech_head/ folder (or a bundle holding one)")
    e.add_argument("--data", default="synthetic", metavar="synthetic|DIR")
    e.add_argument("--encoder", metavar="DIR", help="its audio encoder (default: the bundle's, else the demo's)")
    e.add_argument("--heldout-clips", type=int, default=512)
    e.add_argument("--data-seed", type=int, default=0)
    a = ssub.add_parser("add", help="put a head into a pipeline checkpoint (speech_head/, manifest rewritten)")
    a.add_argument("head")
    a.add_argument("bundle")
    a.add_argument("--replace", action="store_true", help="replace a head the checkpoint already has")


def _heldout(args) -> SpeechSet:
    if args.data == "synthetic":
        from emotivetalk_jax import validate

        validate.check_int(args.heldout_clips, "--heldout-clips", 8, 100_000)
        validate.check_seed(args.data_seed, "--data-seed")
        return synthetic_set("test", args.heldout_clips, data_seed=args.data_seed)
    return prepared_set(args.data, "test")


def _head_dir(path: str) -> Path:
    p = Path(path)
    return p / "speech_head" if (p / "speech_head").is_dir() else p


def run_speech_command(args) -> dict:
    from emotivetalk_jax import validate
    from emotivetalk_jax.emotion.speech import SpeechHeadConfig, load_speech_head, save_speech_head

    if getattr(args, "data", "synthetic") != "synthetic":
        validate.check_folder(args.data, "--data", error=EmotionError)
    if args.speech_command == "add":
        from emotivetalk_jax.bundle import add_speech_head

        validate.check_folder(args.head, "head", error=EmotionError)
        return {"bundle": str(add_speech_head(args.bundle, load_speech_head(_head_dir(args.head)),
                                              replace=args.replace))}
    if args.speech_command == "eval":
        from emotivetalk_jax.emotion.speech import extract_features, feature_fn

        validate.check_folder(args.head, "head", error=EmotionError)
        head = load_speech_head(_head_dir(args.head))
        encoder = None
        if head.cfg.feature == "wavlm":
            own = Path(args.head) / "audio"
            encoder = load_encoder(args.encoder or (own if own.is_dir() else None))
        held = _heldout(args)
        cm = confusion(head, extract_features(held.waves, feature_fn(head.cfg, encoder)), held.labels)
        return {**confusion_report(cm), "heldout_data": held.source, "bar": BAR}
    # train
    from tqdm import tqdm

    validate.check_output_folder(args.out, "output folder", error=EmotionError)
    validate.check_int(args.clips, "--clips", 8, 1_000_000)
    validate.check_int(args.voice_seeds, "--voice-seeds", 0, 100_000)
    validate.check_int(args.steps, "--steps", 1, 1_000_000)
    validate.check_int(args.eval_every, "--eval-every", 1, 1_000_000)
    validate.check_int(args.hidden, "--hidden", 1, 1_000_000)
    validate.check_seed(args.seed)
    encoder = load_encoder(args.encoder) if args.feature == "wavlm" else None
    bar = (lambda items: tqdm(items, desc="speech features", unit="utt")) if not args.quiet else None
    validate.check_int(args.val_clips, "--val-clips", 0, 100_000)
    validate.check_seed(args.val_seed, "--val-seed")
    synthetic = args.data == "synthetic"
    if synthetic and args.val_clips and args.val_seed == args.data_seed:
        raise EmotionError(f"--val-seed {args.val_seed} is --data-seed, whose held-out voices score the head; "
                           "validate on another domain's")
    key = json.dumps([args.data, args.feature, args.encoder, args.layer, args.pooling, args.clips, args.voice_seeds,
                      args.heldout_clips, args.data_seed] + ([args.val_seed, args.val_clips] if synthetic else []))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    cache = Path(args.out) / f".features-{zlib.crc32(key.encode()):08x}.npz"  # a rerun with new settings reuses them
    validation = None
    if cache.is_file():
        train, heldout, *rest = sets_from_cache(cache)
        validation = rest[0] if rest else None
    elif synthetic:
        train = synthetic_set("train", args.clips, data_seed=args.data_seed, voice_seeds=args.voice_seeds)
        heldout = _heldout(args)
        if args.val_clips:
            validation = synthetic_set("test", args.val_clips, data_seed=args.val_seed)
    else:
        train, heldout = prepared_set(args.data, "train"), _heldout(args)
    width = int(encoder.config["hidden_size"]) if encoder is not None else None
    from emotivetalk_jax.emotion.voice_features import VOICE_DIM

    in_dim = VOICE_DIM if args.feature == "voice" else 1  # the others' widths are read off the features
    cfg = SpeechHeadConfig(in_dim=in_dim, hidden=args.hidden, feature=args.feature, layer=args.layer,
                           pooling=args.pooling, encoder_width=width)
    head, report = train_head(train, heldout, cfg, encoder=encoder, steps=args.steps,
                              learning_rate=args.lr, weight_decay=args.weight_decay, seed=args.seed,
                              eval_every=args.eval_every, progress=bar, cache=cache, validation=validation)
    out = save_speech_head(head, args.out)  # a failure removes the folder (cli.py's outputs)
    (out / "report.json").write_text(json.dumps(report, indent=1) + "\n")
    h = report["heldout"]
    val = {"validation_accuracy": report["validation"]["accuracy"]} if "validation" in report else {}
    return {"head": str(out), **val, "heldout_accuracy": h["accuracy"], "chance": h["chance"],
            "passed": h["accuracy"] >= BAR,
            "recall": h["recall"], "confusion": h["confusion"], "train": report["train"],
            "heldout_data": report["heldout_data"]}
