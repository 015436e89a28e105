"""The exception type that reaches users (a single clear line, no traceback), the
warning type shown as one ``note:`` line, and the one-line text of an exception."""

from __future__ import annotations

import errno


class LabelfixError(Exception):
    """Bad input or a refused operation. ``str(err)`` is the whole message shown to the
    user, written as ``"<file>: <record>: <what is wrong>"`` where those parts apply."""


class LabelfixWarning(UserWarning):
    """Something the user should know that does not stop the command (a documented skip
    with a count); the command line prints it as one ``note: ...`` line on stderr."""


#: what to do about the operating-system errors a command can meet while writing
_ADVICE = {
    errno.ENOSPC: "the disk is full; free some space or write to another disk",
    errno.EDQUOT: "the disk quota is exceeded; free some space or write elsewhere",
    errno.EROFS: "the file system is read-only; write to a writable folder",
    errno.EACCES: "permission denied; check the folder's permissions or write elsewhere",
    errno.EPERM: "operation not permitted; check the permissions or write elsewhere",
    errno.EFBIG: "the file is too large for this file system or the process's file-size limit",
    errno.ENOENT: "no such file or folder",
    errno.EISDIR: "is a folder, expected a file",
    errno.ENOTDIR: "a part of the path is not a folder",
    errno.EMFILE: "too many open files; raise the limit (ulimit -n)",
    errno.ENAMETOOLONG: "the file name is too long",
    errno.EIO: "input/output error on the device; check the disk",
}


def describe_os_error(err: OSError) -> str:
    """One line for an OSError: ``"<file>: <system message> (<what to do>)"``."""
    name = err.filename if err.filename is not None else ""
    if err.filename2 is not None:
        name = f"{name} -> {err.filename2}"
    text = err.strerror or str(err) or type(err).__name__
    advice = _ADVICE.get(err.errno or -1)
    if advice and advice.lower() != text.lower():
        text = f"{text} ({advice})"
    return f"{name}: {text}" if name else text


def first_line(err: BaseException) -> str:
    """The first non-empty line of ``str(err)``, else the exception's type name (an
    ``EOFError()`` from an empty file has no message): the part of a library's error
    quoted in a one-line LabelfixError."""
    for line in str(err).splitlines():
        if line.strip():
            return line.strip()
    return type(err).__name__
