"""Provenance marks (`emotivetalk_jax.provenance`): the watermark's known answers and its null
distribution, the label's round trip through an mp4, C2PA credentials (self-signed, the user's,
tampered, absent), and `emotivetalk detect`'s JSON and exit codes. The end-to-end checks on
generated videos (attacks, 50 videos we did not make) are `benchmarks/provenance.py`."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import numpy as np
import pytest

from emotivetalk_jax import cli
from emotivetalk_jax.data.video import write_mp4
from emotivetalk_jax.provenance import credentials, label, watermark


def _clip(n: int = 100, size: int = 64, seed: int = 0) -> np.ndarray:
    """A face-like test clip: a smooth picture that drifts and brightens slowly, plus sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    t = np.arange(n)[:, None, None] / 25.0
    pic = 120 + 60 * np.sin(6 * (xx + 0.05 * np.sin(t))) * np.cos(5 * yy) + 10 * t
    frames = pic[..., None] + rng.normal(0, 1.5, (n, size, size, 3))
    return np.clip(np.round(frames), 0, 255).astype(np.uint8)


def test_watermark_keys_are_fixed():
    """The key's bits are SHA-256 of a fixed string: a detector of any later version must agree."""
    s = watermark.signs()
    assert s.shape == (watermark.PATTERNS, watermark.PERIOD // watermark.HOLD) and set(np.unique(s)) == {-1.0, 1.0}
    assert "".join("+" if v > 0 else "-" for v in s[0, :16]) == _FIRST_SIGNS
    p = watermark.patterns(64, 64)
    assert np.allclose(np.sqrt((p ** 2).mean((1, 2))), 1.0, atol=0.1)  # unit rms each
    frames = _clip(8)
    delta = watermark.embed(frames).astype(float) - frames
    assert 1.4 < np.sqrt((delta ** 2).mean()) < 1.8  # AMPLITUDE 1.6 rms, luma only
    np.testing.assert_array_equal(delta[..., 0], delta[..., 2])
    # a stream marks window by window: the same frames as marking the whole video at once
    np.testing.assert_array_equal(np.concatenate([watermark.embed(frames[:3]), watermark.embed(frames[3:], start=3)]),
                                  watermark.embed(frames))
    np.testing.assert_array_equal(watermark.frame_signs(0, 4)[0], s[0, [0, 0, 1, 1]])  # each sign held HOLD = 2 frames


_FIRST_SIGNS = "-+-+--+-+++-+-++"  # sha256(KEY + b"/signs" + counter 0), low bit of each byte


def test_watermark_found_after_trim_crop_and_scale():
    marked = watermark.embed(_clip())
    d = watermark.detect_frames(marked)
    assert d.detected and d.p_value < 1e-30 and d.offset == 0 and d.crop == (0.0, 0.0)
    trimmed = watermark.detect_frames(marked[37:87])  # 2 s from frame 37: the offset is found
    assert trimmed.detected and trimmed.offset == 37 and trimmed.p_value < 1e-6
    from PIL import Image

    crop = marked[:, 6:58, 6:58]  # ~10% off each side, then shown at 32 px
    small = np.stack([np.asarray(Image.fromarray(f).resize((32, 32), Image.BILINEAR)) for f in crop])
    d = watermark.detect_frames(small)
    assert d.detected and d.p_value < 1e-6 and all(abs(c - 6 / 64) <= 0.05 for c in d.crop)  # the nearest grid crops


def test_watermark_null_p_values():
    """Unmarked clips, a still image and the same clip marked with the wrong signs: no detection;
    Hoeffding's bound is conservative, so p-values of unmarked clips sit near 1."""
    ps = [watermark.detect_frames(_clip(60, 48, seed)).p_value for seed in range(6)]
    still = np.repeat(_clip(1)[:1], 50, 0)
    ps.append(watermark.detect_frames(still).p_value)
    assert min(ps) > 0.01, ps
    assert watermark.detect_frames(_clip(2)).detected is False  # too short to test: p = 1 at most
    assert watermark.detect_frames(_clip(1)).p_value == 1.0


def test_label_round_trip(tmp_path):
    tags = label.make_label("ab" * 32, "2026-08-02T00:00:00+00:00")
    tags["comment"] += "; with = and ; and # and \\ and\na newline"
    out = write_mp4(tmp_path / "a.mp4", _clip(4, 16), metadata=tags)
    meta = label.read_metadata(out)
    assert {k: meta.get(k) for k in tags} == tags
    assert label.read_label(out)["checkpoint_sha256"] == "ab" * 32
    assert label.read_label(write_mp4(tmp_path / "b.mp4", _clip(4, 16))) is None
    assert label.read_label(tmp_path / "missing.mp4") is None


def _user_identity(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate chain and key of the user's own (a CA they run), EC P-256."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Newsroom CA"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Newsroom")])
    who = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Newsroom video desk"),
                     x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example Newsroom")])
    ku = dict(content_commitment=False, key_encipherment=False, data_encipherment=False, key_agreement=False,
              encipher_only=False, decipher_only=False)

    def base(subject, public):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=30)))

    ca = (base(ca_name, ca_key.public_key()).add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
          .add_extension(x509.KeyUsage(digital_signature=False, key_cert_sign=True, crl_sign=True, **ku), True)
          .sign(ca_key, hashes.SHA256()))
    leaf = (base(who, key.public_key()).add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=False, crl_sign=False, **ku), True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    cert, priv = tmp_path / "me.pem", tmp_path / "me.key"
    cert.write_bytes(leaf.public_bytes(pem) + ca.public_bytes(pem))
    priv.write_bytes(key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert, priv


def test_credentials_self_signed_user_tampered_absent(tmp_path, monkeypatch):
    from emotivetalk_jax.provenance import generation_record, write_marked

    monkeypatch.setenv("EMOTIVETALK_CONFIG_DIR", str(tmp_path / "config"))
    frames = watermark.embed(_clip(30, 32))
    own = write_marked(tmp_path / "own.mp4", frames, 25, None, 16000, checkpoint_sha256="cd" * 32)
    assert (tmp_path / "config" / "c2pa" / "key.pem").stat().st_mode & 0o777 == 0o600  # made once, private
    c = credentials.read_credential(own)
    assert c["status"] == "self-signed" and c["generated"] and c["generation"]["checkpoint_sha256"] == "cd" * 32
    assert c["digital_source_types"] == [label.TRAINED_ALGORITHMIC_MEDIA]
    assert label.read_label(own)["checkpoint_sha256"] == "cd" * 32  # the label survives signing

    cert, key = _user_identity(tmp_path)
    who = credentials.identity(cert, key)
    assert not who.self_signed and who.alg == "es256"
    theirs = write_marked(tmp_path / "theirs.mp4", frames, 25, None, 16000, checkpoint_sha256=None, who=who)
    c = credentials.read_credential(theirs)
    assert c["status"] == "signed" and c["signer"]["issuer"] == "Example Newsroom"
    assert c["generation"]["checkpoint_sha256"] == "unknown"

    data = bytearray(own.read_bytes())  # frames edited after signing: video bytes changed in place
    mid = data.find(b"mdat") + 200
    data[mid:mid + 32] = bytes(b ^ 0xFF for b in data[mid:mid + 32])
    (tmp_path / "edited.mp4").write_bytes(bytes(data))
    c = credentials.read_credential(tmp_path / "edited.mp4")
    assert c["status"] == "tampered" and any("mismatch" in f for f in c["failures"])
    assert credentials.read_credential(write_mp4(tmp_path / "plain.mp4", frames))["status"] == "absent"
    assert generation_record("ef")["checkpoint_sha256"] == "ef"


def test_signing_files_checked(tmp_path, monkeypatch):
    cert, key = _user_identity(tmp_path)
    other_cert, _ = _user_identity(tmp_path / "..")
    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    monkeypatch.delenv(credentials.CERT_ENV, raising=False)
    monkeypatch.delenv(credentials.KEY_ENV, raising=False)
    for args, needle in [((cert, None), "without its key"), ((bad, key), "not a PEM certificate"),
                         ((cert, bad), "not a PEM private key"), ((other_cert, key), "does not belong"),
                         ((tmp_path / "nope.pem", key), "does not exist")]:
        with pytest.raises(credentials.CredentialError, match=needle) as e:
            credentials.identity(*args)
        assert "\n" not in str(e.value)
    monkeypatch.setenv(credentials.CERT_ENV, str(cert))
    monkeypatch.setenv(credentials.KEY_ENV, str(key))
    assert credentials.identity().source == str(cert)  # the environment's pair


def test_detect_cli_json_and_exit_codes(tmp_path, monkeypatch, capsys):
    from emotivetalk_jax.provenance import write_marked

    monkeypatch.setenv("EMOTIVETALK_CONFIG_DIR", str(tmp_path / "config"))
    marked = write_marked(tmp_path / "m.mp4", watermark.embed(_clip()), 25, None, 16000, checkpoint_sha256="12" * 32)
    plain = write_mp4(tmp_path / "p.mp4", _clip(seed=1))
    assert cli.main(["detect", str(marked)]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["marked"] and r["label"]["generator"].startswith("emotivetalk_jax ")
    assert r["credential"]["status"] == "self-signed" and r["watermark"]["detected"]
    assert r["watermark"]["p_value"] < 1e-6
    assert cli.main(["detect", str(marked), str(plain)]) == 1  # one is not marked
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["marked"] for x in lines] == [True, False]
    assert lines[1]["label"] is None and lines[1]["credential"]["status"] == "absent"
    assert lines[1]["watermark"]["p_value"] > 0.01
    notes = tmp_path / "notes.mp4"
    notes.write_text("not a video")
    for bad in ([str(tmp_path / "nope.mp4")], [str(marked), str(notes)], [str(tmp_path)]):
        assert cli.main(["detect", *bad]) == 2
        out, err = capsys.readouterr()
        assert out == "" and len(err.strip().splitlines()) == 1 and err.startswith("emotivetalk: error: ")
