"""Content credentials: a signed C2PA manifest in the mp4 (`c2pa-python`, the official bindings).

The manifest holds the `c2pa.actions.v2` assertion "created", digital source type trained
algorithmic media (the IPTC term), with the tool as software agent and the time, and our
`org.emotivetalk_jax.generation` assertion: the tool and version, the checkpoint's manifest
sha256, the time, the watermark's key name, and who signed (`signer`).

Who signs: the user's certificate chain and private key (PEM files) when given
(`--sign-cert` / `--sign-key`, or EMOTIVETALK_SIGN_CERT / EMOTIVETALK_SIGN_KEY); otherwise a
key this tool makes once, on first use, in the user's config folder (`config_dir()/c2pa/`:
a local CA and a signing certificate under it). That key is SELF-SIGNED: nothing vouches for
it, the manifest says so (`signer: "self-signed"`), and a C2PA validator reports its
certificate untrusted. It still proves the file is unchanged since it was signed, and carries
the generated-content assertion in the standard place.

Reading (`read_credential`) reports one of: "signed" (a valid signature by a certificate that
is not the tool's own), "self-signed" (valid, by the tool's key), "tampered" (a manifest whose
hashes or signature no longer match the file: frames or metadata edited after signing) or
"absent". No trust list is consulted (offline): `trusted` is always false here.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import re
import secrets
import shutil
from pathlib import Path

from emotivetalk_jax import validate

ASSERTION = "org.emotivetalk_jax.generation"
CERT_ENV, KEY_ENV = "EMOTIVETALK_SIGN_CERT", "EMOTIVETALK_SIGN_KEY"
SELF_SIGNED_ORG = "emotivetalk_jax self-signed (not a verified identity)"
# C2PA failure codes that mean the file or the manifest changed after signing: a hash or the
# signature no longer matches, or the manifest is broken or incomplete. The others (signingCredential.*,
# timeStamp.*: a certificate untrusted, expired or revoked) say who signed, not what changed.
_TAMPERING = re.compile(r"(\.mismatch$|^claimSignature\.|\.malformed$|^assertion\.missing$|^claim\.missing$|"
                        r"^manifest\.|^assertion\.(dataHash|bmffHash|boxesHash)\.)")


class CredentialError(validate.InputError):
    """A signing certificate or key that cannot be used; one-line message."""


@dataclasses.dataclass(frozen=True)
class Identity:
    """Who signs: a PEM certificate chain (signing certificate first) and its private key."""

    chain: bytes
    key: bytes
    alg: str  # es256 | es384 | es512 | ps256 | ed25519
    self_signed: bool
    source: str  # where it came from, for messages


def config_dir() -> Path:
    """EMOTIVETALK_CONFIG_DIR, else $XDG_CONFIG_HOME/emotivetalk_jax, else ~/.config/emotivetalk_jax."""
    if os.environ.get("EMOTIVETALK_CONFIG_DIR"):
        return Path(os.environ["EMOTIVETALK_CONFIG_DIR"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "emotivetalk_jax"


# ----------------------------------------------------------------------------- identities


def identity(cert: str | os.PathLike | None = None, key: str | os.PathLike | None = None) -> Identity:
    """The signing identity: `cert` and `key` (or the environment variables), else the tool's own
    self-signed key (made on first use). CredentialError for unusable files."""
    cert = cert or os.environ.get(CERT_ENV) or None
    key = key or os.environ.get(KEY_ENV) or None
    if (cert is None) != (key is None):
        given, missing = ("certificate", "key") if cert else ("key", "certificate")
        raise CredentialError(f"a signing {given} without its {missing}: pass both --sign-cert and --sign-key "
                              f"(or set both {CERT_ENV} and {KEY_ENV})")
    if cert is None:
        return local_identity()
    chain = validate.check_file(cert, "signing certificate", error=CredentialError).read_bytes()
    pem = validate.check_file(key, "signing key", error=CredentialError).read_bytes()
    return Identity(chain, pem, _check_pair(chain, pem, f"{cert} / {key}"), False, f"{cert}")


def _check_pair(chain: bytes, key_pem: bytes, where: str) -> str:
    """The C2PA algorithm of a matching PEM certificate + private key (CredentialError otherwise)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

    try:
        certs = x509.load_pem_x509_certificates(chain)
    except ValueError:
        raise CredentialError(f"{where}: the certificate file is not a PEM certificate chain") from None
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as e:
        why = "it is encrypted (pass an unencrypted PEM key)" if "password" in str(e).lower() else "not a PEM private key"
        raise CredentialError(f"{where}: the key file is {why}") from None
    pub = serialization.PublicFormat.SubjectPublicKeyInfo
    enc = serialization.Encoding.DER
    if certs[0].public_key().public_bytes(enc, pub) != key.public_key().public_bytes(enc, pub):
        raise CredentialError(f"{where}: the key does not belong to the first certificate of the chain")
    if isinstance(key, ec.EllipticCurvePrivateKey):
        alg = {"secp256r1": "es256", "secp384r1": "es384", "secp521r1": "es512"}.get(key.curve.name)
    elif isinstance(key, rsa.RSAPrivateKey):
        alg = "ps256"
    elif isinstance(key, ed25519.Ed25519PrivateKey):
        alg = "ed25519"
    else:
        alg = None
    if alg is None:
        raise CredentialError(f"{where}: C2PA signs with EC P-256/384/521, RSA (PSS) or Ed25519 keys; this is "
                              f"{type(key).__name__}")
    return alg


def local_identity() -> Identity:
    """The tool's own key (config_dir()/c2pa/), made on first use: written to a temporary folder
    renamed into place, so concurrent first uses end with one key."""
    folder = config_dir() / "c2pa"
    try:
        if not (folder / "key.pem").is_file():
            _make_local_folder(folder)
        chain, key = (folder / "cert.pem").read_bytes(), (folder / "key.pem").read_bytes()
    except OSError as e:
        raise CredentialError(f"cannot keep the signing key in {folder} ({e.strerror or e}); set "
                              "EMOTIVETALK_CONFIG_DIR to a writable folder, or pass --sign-cert and --sign-key") from None
    return Identity(chain, key, _check_pair(chain, key, str(folder)), True, str(folder))


def _make_local_folder(folder: Path) -> None:
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".c2pa.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir(mode=0o700)
    try:
        chain, key = _make_local_keys()
        (tmp / "cert.pem").write_bytes(chain)
        fd = os.open(tmp / "key.pem", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key)
        (tmp / "README.txt").write_text(
            "A self-signed C2PA signing key made by emotivetalk_jax on first use. Videos signed with it\n"
            "say so in their manifest (signer: self-signed); nothing vouches for this key. To sign with\n"
            "your own certificate pass --sign-cert / --sign-key (or EMOTIVETALK_SIGN_CERT / _KEY).\n")
        try:
            os.rename(tmp, folder)
        except OSError:  # another process made it first: use theirs
            if not (folder / "key.pem").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _make_local_keys() -> tuple[bytes, bytes]:
    """(PEM chain [signing certificate, local CA], PEM private key): EC P-256, ten years."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn),
                          x509.NameAttribute(NameOID.ORGANIZATION_NAME, SELF_SIGNED_ORG)])

    def usage(**on):
        flags = ("digital_signature", "content_commitment", "key_encipherment", "data_encipherment",
                 "key_agreement", "key_cert_sign", "crl_sign", "encipher_only", "decipher_only")
        return x509.KeyUsage(**{f: on.get(f, False) for f in flags})

    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = name("emotivetalk_jax local CA")

    def base(subject, public):
        return (x509.CertificateBuilder().subject_name(subject).issuer_name(ca_name).public_key(public)
                .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=3650))
                .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False))

    ca = (base(ca_name, ca_key.public_key()).add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
          .add_extension(usage(key_cert_sign=True, crl_sign=True), True).sign(ca_key, hashes.SHA256()))
    leaf = (base(name("emotivetalk_jax self-signed signer"), key.public_key())
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(usage(digital_signature=True), True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.EMAIL_PROTECTION]), False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256()))
    pem = serialization.Encoding.PEM
    chain = leaf.public_bytes(pem) + ca.public_bytes(pem)
    return chain, key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


# ----------------------------------------------------------------------------- signing


def manifest(title: str, generation: dict, who: Identity) -> dict:
    """The C2PA manifest definition of one generated video (`generation`: our assertion's data)."""
    from emotivetalk_jax.provenance.label import TOOL, TRAINED_ALGORITHMIC_MEDIA

    version = generation.get("version")
    signer = ("self-signed: a key emotivetalk_jax made on this machine; nothing vouches for it" if who.self_signed
              else "the user's certificate")
    return {"claim_generator_info": [{"name": TOOL, "version": version}], "title": title, "format": "video/mp4",
            "assertions": [
                {"label": "c2pa.actions.v2", "data": {"actions": [{
                    "action": "c2pa.created", "digitalSourceType": TRAINED_ALGORITHMIC_MEDIA,
                    "softwareAgent": {"name": TOOL, "version": version}, "when": generation.get("created")}]}},
                {"label": ASSERTION, "data": {**generation, "signer": "self-signed" if who.self_signed else "user",
                                              "signer_note": signer}}]}


def sign_mp4(path: str | os.PathLike, generation: dict, who: Identity, title: str | None = None) -> Path:
    """Embed a signed manifest in the mp4 at `path` (signed to a temporary file, renamed over it);
    `title`: the video's name in the manifest (default: the file's)."""
    import c2pa

    path = Path(path)
    alg = getattr(c2pa.C2paSigningAlg, who.alg.upper())
    tmp = path.with_name(f".{path.stem}.c2pa.tmp.mp4")
    try:
        with c2pa.Signer.from_info(c2pa.C2paSignerInfo(alg, who.chain, who.key, None)) as signer, \
                c2pa.Builder(manifest(title or path.name, generation, who)) as builder:
            builder.sign_file(path, tmp, signer)
        tmp.replace(path)
    except c2pa.C2paError as e:
        raise CredentialError(f"signing {path.name} with {who.source} failed ({str(e).strip()[:160]})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return path


# ----------------------------------------------------------------------------- reading


def read_credential(path: str | os.PathLike) -> dict:
    """{"status": signed | self-signed | tampered | absent, ...} of the file's C2PA manifest."""
    import c2pa

    try:
        reader = c2pa.Reader.try_create(str(path))
    except c2pa.C2paError.NotSupported:
        return {"status": "absent"}
    except c2pa.C2paError as e:  # a manifest store that no longer parses
        return {"status": "tampered", "failures": [f"unreadable manifest: {str(e).strip()[:160]}"]}
    if reader is None:
        return {"status": "absent"}
    with reader:
        store = json.loads(reader.json())
    active = store.get("manifests", {}).get(store.get("active_manifest"), {})
    results = (store.get("validation_results") or {}).get("activeManifest") or {}
    failures = [f["code"] for f in results.get("failure", [])] or [s["code"] for s in store.get("validation_status", [])]
    tampering = [c for c in failures if _TAMPERING.search(c)]
    ours = next((a["data"] for a in active.get("assertions", []) if a.get("label") == ASSERTION), None)
    sources = [act.get("digitalSourceType") for a in active.get("assertions", [])
               if a.get("label", "").startswith("c2pa.actions") for act in a.get("data", {}).get("actions", [])]
    sig = active.get("signature_info", {})
    self_signed = (ours or {}).get("signer") == "self-signed" or sig.get("issuer") == SELF_SIGNED_ORG
    status = "tampered" if tampering else "self-signed" if self_signed else "signed"
    out = {"status": status, "generated": any(s and s.endswith("/trainedAlgorithmicMedia") for s in sources),
           "digital_source_types": [s for s in sources if s], "signer": {k: sig.get(k) for k in
                                                                         ("issuer", "common_name", "alg")},
           "trusted": False, "validation_state": store.get("validation_state")}
    if ours is not None:
        out["generation"] = {k: ours.get(k) for k in ("tool", "version", "checkpoint_sha256", "created", "watermark")}
    if tampering:
        out["failures"] = tampering
    credential = [c for c in failures if c not in tampering and c != "signingCredential.untrusted"]
    if credential:  # e.g. an expired or revoked certificate
        out["credential_problems"] = credential
    return out


__all__ = ["ASSERTION", "CERT_ENV", "KEY_ENV", "CredentialError", "Identity", "config_dir", "identity",
           "local_identity", "manifest", "read_credential", "sign_mp4"]
