"""Models that ship inside PyPI packages, found offline.

Some models are split over several packages (PyPI's size limit): the parts are
concatenated in order into the data folder once, checked against a SHA-256, and
reused from there. Nothing here downloads anything.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


class ModelNotInstalled(RuntimeError):
    """A packaged model's package is not installed; the message says what to install."""


def package_dir(module: str, install_hint: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotInstalled(f"Python package for module '{module}' is not installed: pip install {install_hint}")
    return Path(next(iter(spec.submodule_search_locations)))


def sha256_of(path: Path, chunk: int = 8 * 1024 * 1024) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def assemble(parts: list[Path], dest: Path, sha256: str) -> Path:
    """Concatenate `parts` into `dest` (atomically) unless a verified copy is there."""
    marker = dest.with_name(dest.name + ".sha256")
    if dest.exists() and marker.exists() and marker.read_text().strip() == sha256:
        return dest
    missing = [p for p in parts if not p.exists()]
    if missing:
        raise ModelNotInstalled(f"model parts missing: {', '.join(map(str, missing))}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    log.info("assembling %s from %d parts", dest.name, len(parts))
    digest = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".")
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as f:
                    while block := f.read(8 * 1024 * 1024):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != sha256:
            raise ModelNotInstalled(
                f"checksum mismatch assembling {dest.name}: got {digest.hexdigest()}, expected {sha256}; "
                "reinstall the model packages")
        os.replace(tmp_name, dest)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    marker.write_text(sha256 + "\n")
    return dest


def copy_tree_once(src: Path, dest: Path) -> Path:
    if not dest.exists():
        shutil.copytree(src, dest)
    return dest
