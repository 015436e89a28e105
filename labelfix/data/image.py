"""Image decoding shared by training, statistics, ``info --verify``, review and
``labelfix predict`` (no torch import: ``predict`` must run without it).

One decoder, :func:`load_rgb`, so the model sees the same pixels at serving time as in
training. Files are what they claim: only regular files are opened (a FIFO or a device
named like an image would block or stream forever), and with ``root`` a path whose real
location (symlinks resolved) is outside the image folder is refused. Both raise
:class:`UnsafeImage`, an ``OSError``, so callers that skip and count undecodable
images (``DECODE_ERRORS``) skip and count these too.
"""

from __future__ import annotations

import errno
import os
import stat
import unicodedata
import warnings

import numpy as np
from PIL import Image, ImageOps

#: the background transparent pixels are composited onto (training and predict alike)
BACKGROUND = (0, 0, 0)


class UnsafeImage(OSError):
    """An image path that is not a regular file, or leads outside the image folder
    (``strerror`` says which, ``filename`` names the path)."""

    def __init__(self, filename: str, reason: str):
        super().__init__(None, reason, filename)

    def __str__(self) -> str:
        return f"{self.filename}: {self.strerror}"


DECODE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)

# PIL warns (two raw lines on stderr) above Image.MAX_IMAGE_PIXELS (89 megapixels) and
# refuses above twice that (DecompressionBombError, one of DECODE_ERRORS: a reported or
# counted bad image). Every image here is the user's own data and is resized after
# decoding, so between the two limits it is decoded without the warning (docs/user_guide.md).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


#: set to 1 to follow symbolic links that leave the image folder (git-annex or DVC
#: symlink caches keep the real files elsewhere); FIFOs and devices stay refused
FOLLOW_SYMLINKS_ENV = "LABELFIX_FOLLOW_SYMLINKS"


def on_disk_name(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """``path`` as the file system spells it: where no file has that name and it is not
    ASCII, the first of its forms in Unicode's other normal forms (NFC / NFD, only the part
    below ``root`` changed) that exists. A label file typed in NFC names files that macOS
    wrote in NFD (and the other way round), which a Linux file system tells apart.
    ``path`` itself when nothing else exists."""
    name = os.fspath(path)
    if name.isascii() or os.path.lexists(name):
        return name
    head, tail = "", name
    if root is not None:
        top = os.fspath(root).rstrip(os.sep) + os.sep
        if name.startswith(top):
            head, tail = top, name[len(top):]
    for form in ("NFC", "NFD"):
        other = head + unicodedata.normalize(form, tail)
        if other != name and os.path.lexists(other):
            return other
    return name


def open_image_file(path: str | os.PathLike, root: str | os.PathLike | None = None):
    """Open ``path`` for reading as a binary file object, refusing what is not an image
    file: with ``root``, a real path (symlinks resolved) outside ``root``'s real path;
    anything that is not a regular file (FIFO, socket, device, folder). The check is made
    on the opened descriptor (``O_NONBLOCK``, so opening a FIFO cannot hang), not only on
    the name. A missing name is looked up once more as :func:`on_disk_name` spells it.
    Raises :class:`UnsafeImage` or ``FileNotFoundError`` (both ``OSError``)."""
    name = os.fspath(path)
    try:
        return _open_checked(name, root)
    except FileNotFoundError:
        other = on_disk_name(name, root)
        if other == name:
            raise
        return _open_checked(other, root)


def _open_checked(name: str, root: str | os.PathLike | None):
    target = os.path.realpath(name)
    if root is not None and os.environ.get(FOLLOW_SYMLINKS_ENV, "") != "1":
        top = os.path.realpath(os.fspath(root))
        if not _inside(target, top):
            raise UnsafeImage(name, f"leads outside the image folder {top} (to {target}); not read "
                                    f"({FOLLOW_SYMLINKS_ENV}=1 follows such links)")
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    try:
        fd = os.open(target, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise UnsafeImage(name, "a symbolic link loop; not read") from None
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            kind = ("a FIFO" if stat.S_ISFIFO(st.st_mode) else "a device" if stat.S_ISCHR(st.st_mode)
                    or stat.S_ISBLK(st.st_mode) else "a socket" if stat.S_ISSOCK(st.st_mode)
                    else "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file")
            raise UnsafeImage(name, f"{kind}, not an image file; not read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def image_problem(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str | None:
    """Why ``path`` cannot be read as an image file (missing, not a regular file, outside
    ``root``), or None when it can be opened. Does not decode."""
    try:
        with open_image_file(path, root):
            return None
    except FileNotFoundError:
        return "missing"
    except OSError as err:
        return err.strerror or str(err)


def header_size(path: str | os.PathLike, root: str | os.PathLike | None = None) -> tuple[int, int] | None:
    """``(width, height)`` from the image file's header (no decode, no EXIF rotation), None
    when it cannot be opened or read (as :func:`open_image_file` refuses, or not an image)."""
    try:
        with open_image_file(path, root) as fh, Image.open(fh) as im:
            return im.size
    except DECODE_ERRORS:
        return None


def _full_scale(arr: np.ndarray, floating: bool) -> float:
    """The white of a 32-bit integer or float grayscale image: the smallest of 1 (float
    only: the usual [0, 1] range, up to 1.001), 255 and 65535 that holds its largest
    finite value, else that value itself (a float image in [0, 1] was scaled by 255,
    nearly black; a 32-bit one above 65535 was clipped white)."""
    finite = arr[np.isfinite(arr)]   # an inf or NaN pixel does not set the scale (it is clipped)
    top = float(finite.max(initial=0.0))
    if floating and top <= 1.0 + 1e-3:   # [0, 1] and a resampling overshoot above it
        return 1.0
    for scale in (255.0, 65535.0):
        if top <= scale:
            return scale
    return top


def _to_rgb(im: Image.Image) -> Image.Image:
    """The mode conversions of :func:`load_rgb` on a loaded image."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        arr = np.asarray(im, dtype=np.float64)
        hi = 65535.0 if im.mode.startswith("I;16") else _full_scale(arr, floating=im.mode == "F")
        im = Image.fromarray(np.clip(arr / hi * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
    elif im.mode == "P":
        # palette images with a transparent index (info["transparency"]) or an RGBA
        # palette become RGBA and are composited below; the others plain RGB
        im = im.convert("RGBA") if ("transparency" in im.info or im.palette and im.palette.mode == "RGBA") \
            else im.convert("RGB")
    elif im.mode in ("L", "RGB") and "transparency" in im.info:
        im = im.convert("RGBA")   # a tRNS colour key marks one colour transparent
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, BACKGROUND + (255,))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def load_rgb(path: str | os.PathLike, root: str | os.PathLike | None = None) -> Image.Image:
    """Decode an image fully as 8-bit RGB: EXIF orientation applied; grayscale converted;
    16-bit / 32-bit / float scaled to 8 bits (full scale 65535 for 16-bit; for 32-bit and
    float the smallest of 1 (float), 255, 65535 holding the largest value, else that
    value); transparency
    (RGBA, LA, palette with a transparent index, tRNS colour keys) composited onto
    :data:`BACKGROUND` (black). Raises one of ``DECODE_ERRORS`` on a missing, truncated,
    corrupt, non-regular or (with ``root``) out-of-folder file."""
    with open_image_file(path, root) as fh:
        try:
            im = Image.open(fh)
        except Image.UnidentifiedImageError:   # PIL names the file handle, not the file
            raise Image.UnidentifiedImageError("not an image file PIL can read (unknown format, or empty)") from None
        with im:
            im.load()  # force the full decode so that truncated files fail here
            im = ImageOps.exif_transpose(im)
            return _to_rgb(im)
