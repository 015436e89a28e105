"""Safe resolution of image file names found inside label files."""

from __future__ import annotations

from pathlib import Path, PurePosixPath, PureWindowsPath

from labelfix.errors import LabelfixError


def _plain(name: str) -> bool:
    """True when ``name`` is non-blank, has no NUL, backslash or colon (so no drive), and
    every ``/`` component is a real name (not empty, ``.`` or ``..``): then it is its own
    normalised relative POSIX form."""
    return (
        bool(name.strip()) and "\x00" not in name and "\\" not in name and ":" not in name
        and all(p not in ("", ".", "..") for p in name.split("/"))
    )


def check_file_name(file_name: object, where: str) -> str:
    """Return ``file_name`` as a clean relative POSIX path or raise LabelfixError.

    Rejects empty names, absolute paths (POSIX or Windows style), NUL bytes and any
    ``..`` component, so that no label file can make labelfix read outside the image
    root. ``where`` names the file and record for the message.
    """
    if isinstance(file_name, str) and _plain(file_name):
        return file_name  # fast path: already a clean relative POSIX path (the common case)
    if not isinstance(file_name, str) or not file_name.strip():
        raise LabelfixError(f"{where}: file_name must be a non-empty string, got {file_name!r}")
    if "\x00" in file_name:
        raise LabelfixError(f"{where}: file_name contains a NUL byte")
    posix = PurePosixPath(file_name.replace("\\", "/"))
    if posix.is_absolute() or PureWindowsPath(file_name).is_absolute() or PureWindowsPath(file_name).drive:
        raise LabelfixError(f"{where}: file_name {file_name!r} is an absolute path; it must be relative to the image root")
    if any(part == ".." for part in posix.parts):
        raise LabelfixError(f"{where}: file_name {file_name!r} escapes the image root ('..')")
    return str(posix)


def default_image_root(label_file: Path, images: str | Path | None) -> Path:
    """``--images DIR`` when given, otherwise the folder that holds the label file."""
    return Path(images).resolve() if images is not None else Path(label_file).resolve().parent
