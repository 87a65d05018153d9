"""Integrity of checkpoint folders (pipeline bundles and converted components) and atomic writes.

Every folder written by `bundle.save_bundle` or `convert.native.save_model` carries a
`manifest.json`:

    {"format": "emotivetalk_jax", "manifest": 1,
     "files": {"ethd/state/_METADATA": {"size": 1234, "sha256": "..."}, ...},   # every other file
     "components": {"ethd": {"component": "ethd", "variant": "tiny",
                             "shapes": {"down_blocks.0.resnets.0.conv1.kernel": [3, 3, 32, 32], ...}}, ...}}

A component folder's own manifest has one component, named ".". `verify` checks, before
orbax reads anything: each component folder against the component its parent manifest
records (a part swapped in from a checkpoint of another variant is named), every listed
file's presence and size (always: cheap), and its sha256 when asked (`--verify`). Folders
without a manifest (written before manifests existed) load with a one-line notice.

`atomic_folder(out)` writes into a temporary sibling folder renamed into place at the end,
so an interrupted or failed write leaves nothing at `out` (and removes the folders it made).
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from emotivetalk_jax import validate

FORMAT = "emotivetalk_jax"
NAME = "manifest.json"
VERSION = 1
_CHUNK = 1 << 20


class IntegrityError(validate.InputError):
    """A checkpoint whose files do not match its manifest; the message names the file."""


# ----------------------------------------------------------------------------- writing


def model_shapes(model) -> dict[str, list[int]]:
    """{dotted parameter path: shape} of an NNX module's parameters (abstract ones too)."""
    from flax import nnx

    return {".".join(str(k) for k in path): [int(d) for d in v.value.shape]
            for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}


def component_entry(component: str, variant: str | None, shapes: dict[str, list[int]]) -> dict:
    return {"component": component, "variant": variant, "shapes": dict(sorted(shapes.items()))}


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()
                  and p.relative_to(folder).as_posix() != NAME)


def write_manifest(folder: str | os.PathLike, components: dict[str, dict]) -> Path:
    """Write `folder/manifest.json` over every file under `folder`. Hashes that a sub-folder's
    own manifest (written moments ago) records for a file of the same size are reused."""
    folder = Path(folder)
    known: dict[str, dict] = {}
    for sub in folder.glob(f"*/{NAME}"):
        try:
            for rel, e in json.loads(sub.read_text())["files"].items():
                known[f"{sub.parent.name}/{rel}"] = e
        except (OSError, ValueError, KeyError, AttributeError):
            continue
    files = {}
    for rel in _files(folder):
        size = (folder / rel).stat().st_size
        e = known.get(rel)
        files[rel] = {"size": size, "sha256": e["sha256"] if e and e.get("size") == size else sha256(folder / rel)}
    meta = {"format": FORMAT, "manifest": VERSION, "files": files, "components": components}
    tmp = folder / f".{NAME}.tmp"
    tmp.write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    os.replace(tmp, folder / NAME)
    return folder / NAME


# ----------------------------------------------------------------------------- checking


def read_manifest(folder: str | os.PathLike) -> dict | None:
    """The manifest of `folder`, or None where it has none (IntegrityError if it is damaged)."""
    path = Path(folder) / NAME
    if not path.is_file():
        return None
    try:
        meta = json.loads(path.read_text())
        ok = (isinstance(meta, dict) and meta.get("format") == FORMAT and isinstance(meta.get("files"), dict)
              and all(isinstance(e, dict) and isinstance(e.get("size"), int) and isinstance(e.get("sha256"), str)
                      for e in meta["files"].values()))
    except (OSError, ValueError):
        ok = False
    if not ok:
        raise IntegrityError(f"{path} is damaged (not a checkpoint manifest); copy the checkpoint again")
    return meta


def first_shape_difference(a: dict, b: dict) -> str:
    for k in sorted(set(a) | set(b)):
        if a.get(k) != b.get(k):
            return f"{k}: {a.get(k)} vs {b.get(k)}"
    return ""


def check_component(folder: Path, name: str, want: dict) -> None:
    """The component in `folder/name` must be the one the parent manifest records."""
    sub = read_manifest(folder / name)
    if sub is None:
        return  # its files are checked against the parent's list
    got = (sub.get("components") or {}).get(".", {})
    where = folder / name
    if got.get("component") != want.get("component"):
        raise IntegrityError(f"{where} holds component {got.get('component')!r}, the manifest of {folder} records "
                             f"{want.get('component')!r}: a part from another checkpoint; "
                             f"put back the original {name}/")
    if got.get("variant") != want.get("variant"):
        raise IntegrityError(f"{where} is from a {got.get('variant')!r} checkpoint, {folder} is "
                             f"{want.get('variant')!r}: a part from another checkpoint; put back the original {name}/")
    if "shapes" in want and got.get("shapes") != want["shapes"]:
        raise IntegrityError(f"{where} has other parameter shapes than {folder}'s manifest records "
                             f"({first_shape_difference(got.get('shapes', {}), want['shapes'])}): a part from another "
                             f"checkpoint; put back the original {name}/")


def verify(folder: str | os.PathLike, *, hashes: bool = False) -> dict | None:
    """Check `folder` against its manifest (see the module docstring); returns the manifest, or
    None where the folder has none. IntegrityError names the first bad file."""
    folder = Path(folder)
    meta = read_manifest(folder)
    if meta is None:
        return None
    for name, want in (meta.get("components") or {}).items():
        if name != ".":
            check_component(folder, name, want)
    files = meta["files"]
    missing = [rel for rel in files if not (folder / rel).is_file()]
    if missing:
        part = missing[0].split("/")[0]
        listed = {rel for rel in files if rel.startswith(part + "/")}
        if "/" in missing[0] and set(_files(folder / part)) - {rel[len(part) + 1:] for rel in listed}:
            raise IntegrityError(f"{folder / part} holds other files than the manifest lists ({missing[0]} is "
                                 f"missing): a part from another checkpoint; put back the original {part}/")
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise IntegrityError(f"{folder / missing[0]} is missing{more}; the checkpoint is incomplete: copy it again")
    for rel, e in files.items():
        size = (folder / rel).stat().st_size
        if size != e["size"]:
            how = "truncated" if size < e["size"] else "damaged"
            raise IntegrityError(f"{folder / rel} has {size} bytes, its manifest says {e['size']} ({how}); "
                                 "copy the checkpoint again")
    if hashes:
        for rel, e in files.items():
            if sha256(folder / rel) != e["sha256"]:
                raise IntegrityError(f"{folder / rel} does not match its sha256 in the manifest (damaged); "
                                     "copy the checkpoint again")
    return meta


def notice_unverified(folder: str | os.PathLike, what: str = "checkpoint") -> None:
    validate.warn(f"{what} {folder} has no {NAME} (written before integrity manifests); loading it unchecked")


# ----------------------------------------------------------------------------- atomic folders


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def temp_prefix(out: Path) -> str:
    return f".{out.name}.tmp-"


def remove_stale(out: str | os.PathLike) -> None:
    """Remove temporary siblings of `out` left by killed writers (their process is gone)."""
    out = Path(out).absolute()
    if not out.parent.is_dir():
        return
    for p in out.parent.glob(temp_prefix(out) + "*"):
        pid = p.name[len(temp_prefix(out)):].split("-")[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def remove_created(paths: list[Path]) -> None:
    """Remove folders this process created (outermost first in `paths`), innermost first, only
    while empty: never anything a user put there."""
    for p in reversed(paths):
        try:
            p.rmdir()
        except OSError:
            break


@contextmanager
def atomic_folder(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary folder beside `out`, renamed to `out` when the block ends normally.
    `out` must be absent or an empty folder. On any exception (interrupts included) the
    temporary folder and the parent folders this call made are removed."""
    out = Path(out).absolute()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"{out} exists and is not an empty folder; choose a new output folder")
    made = validate.missing_ancestors(out.parent)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(out)
    tmp = out.parent / f"{temp_prefix(out)}{os.getpid()}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir()  # not mkdtemp: the checkpoint keeps the user's usual permissions
        yield tmp
        if out.is_dir():
            out.rmdir()  # empty (checked above)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        remove_created(made)
        raise


__all__ = ["IntegrityError", "atomic_folder", "component_entry", "model_shapes", "notice_unverified",
           "read_manifest", "remove_created", "remove_stale", "sha256", "verify", "write_manifest"]
