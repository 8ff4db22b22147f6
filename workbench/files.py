"""Writing files safely: the one place where the workbench creates files.

Every file the package writes (checkpoints, cached results, permutation specs, figures,
tables) goes through :func:`atomic_write`, which keeps three promises:

* **atomic**: the content is written to a temporary file beside the target and then moved
  into place, so that a reader, a crash or a full disk never leaves half a file under the
  target's name (the temporary file is removed when writing fails);
* **exclusive when not overwriting**: with ``overwrite=False`` the finished temporary file
  is published with ``os.link``, which fails when the target exists. Of two processes
  saving to one path, exactly one succeeds and the other gets ``FileExistsError``; nothing
  is replaced behind anyone's back (``os.replace`` would let both "succeed");
* **the user's permissions**: the temporary file is private (``0o600``, like
  ``tempfile.mkstemp``'s) while it is written, and gets mode ``0o666`` filtered by the
  umask just before it is published, as ``open()`` would have created it (chmod after
  writing, so that a umask that makes files read-only does not stop the write itself).
  A file that is replaced (``overwrite=True``) keeps its mode.

:func:`check_writable_dir` answers, before the work starts, whether a folder can take
files: a run that would fail only when it saves its result fails in its first second.

:func:`cache_dir` is the one place that decides where caches go (results, downloaded
datasets): ``$WORKBENCH_CACHE_DIR`` if set, else the platform's user cache folder, never
the source checkout: there, every checkout run through one environment wrote into the
checkout that the environment imports, and a read-only install could not cache at all.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import platformdirs
import torch
from safetensors.torch import save_file

__all__ = [
    "CACHE_SECTIONS",
    "atomic_write",
    "cache_dir",
    "check_writable_dir",
    "refuse_existing",
    "write_safetensors",
    "write_text",
]

_FIX = "choose a folder you can write to"
CACHE_SECTIONS = ("results", "datasets")
"""What the workbench caches, each in its own folder under :func:`cache_dir`."""
_SECTION_OVERRIDES = {"datasets": "WORKBENCH_DATA_DIR"}
_DENIED = (errno.EACCES, errno.EPERM, errno.EROFS)
# os.link fails with these on filesystems without hard links (FAT, exFAT, some shares)
_NO_LINKS = (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK)


def cache_dir(section: str | None = None) -> Path:
    """Where the workbench caches ``section`` (one of :data:`CACHE_SECTIONS`), or the folder
    that holds them all (``section=None``). The one place that decides where caches go.

    The folder is ``$WORKBENCH_CACHE_DIR`` if set, else the platform's user cache folder,
    ``platformdirs.user_cache_dir("merge-workbench")`` (``~/.cache/merge-workbench`` on
    Linux, ``~/Library/Caches/merge-workbench`` on macOS); a section is the subfolder of its
    name, and ``$WORKBENCH_DATA_DIR`` overrides where datasets go. Nothing is created here.
    """
    if section is not None and section not in CACHE_SECTIONS:
        raise ValueError(f"Unknown cache section {section!r}; expected one of {CACHE_SECTIONS}.")
    override = os.environ.get(_SECTION_OVERRIDES.get(section, ""), "") if section else ""
    if override:
        return Path(override)
    env = os.environ.get("WORKBENCH_CACHE_DIR")
    root = Path(env) if env else platformdirs.user_cache_path("merge-workbench", appauthor=False)
    return root if section is None else root / section


def _refuse_blocker(path: Path, what: str, fix: str) -> None:
    """``NotADirectoryError`` if the nearest existing entry of ``path`` and its parents is
    not a folder (a regular file or a broken link standing where a folder should be)."""
    for candidate in (path, *path.parents):
        if candidate.is_symlink() or candidate.exists():
            if candidate.is_dir():
                return
            raise NotADirectoryError(
                f"Cannot write to the {what} {path}: {candidate} exists and is not a folder; "
                f"remove or rename it, or {fix}."
            )


def _unwritable(path: Path, what: str, fix: str, exc: OSError) -> OSError:
    """The clear error for a folder that refused a file: ``PermissionError`` for denied or
    read-only folders, the original kind of ``OSError`` (a full disk, ...) otherwise."""
    reason = exc.strerror or type(exc).__name__
    message = f"Cannot write to the {what} {path} ({reason}); {fix}."
    if exc.errno in _DENIED:
        return PermissionError(message)
    return OSError(exc.errno, message)


def _prepare_dir(path: Path, what: str, fix: str) -> None:
    """Create the folder ``path`` (and its parents) or raise a clear error."""
    _refuse_blocker(path, what, fix)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _unwritable(path, what, fix, exc) from None


def _create_temp(directory: Path, name: str, what: str, fix: str) -> Path:
    """A new empty file ``.<name>.<random>.tmp`` in ``directory``, private (``0o600``)
    until it is published with its final mode."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    while True:
        candidate = directory / f".{name}.{secrets.token_hex(6)}.tmp"
        try:
            os.close(os.open(candidate, flags, 0o600))
            return candidate
        except FileExistsError:
            continue  # another writer drew the same name: draw again
        except OSError as exc:
            raise _unwritable(directory, what, fix, exc) from None


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it; elsewhere set
    and restored at once (``os.umask`` is the only portable way to read it)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _sync(path: Path) -> None:
    """Flush a written file to disk before it is published under its real name."""
    descriptor = os.open(path, os.O_RDWR if os.name == "nt" else os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def check_writable_dir(path: str | Path, what: str = "output folder", fix: str = _FIX) -> Path:
    """Prove that files can be written in the folder ``path`` (or, while it does not exist,
    created under its nearest existing parent) by creating and deleting a temporary file
    there; nothing else is created, so a command that fails later leaves no empty folder.
    ``os.access`` would not do: it ignores read-only mounts and ACLs, and root passes it.

    Raises ``NotADirectoryError`` when a file stands where the folder (or one above it)
    should be, ``PermissionError`` when the folder is read-only or not ours; the message
    names the folder as ``what`` and ends with ``fix``. Returns the path.
    """
    path = Path(path)
    _refuse_blocker(path, what, fix)
    existing = next(p for p in (path, *path.parents) if p.is_dir())
    _create_temp(existing, "write-probe", what, fix).unlink()
    return path


def refuse_existing(path: str | Path) -> None:
    """``FileExistsError`` if ``path`` exists (a file, a folder or a link): the check that
    a write without ``overwrite=True`` makes before any work."""
    path = Path(path)
    if path.exists() or path.is_symlink():
        raise FileExistsError(f"{path} exists; pass overwrite=True to replace it.")


def _taken(path: Path) -> FileExistsError:
    return FileExistsError(
        f"{path} exists: another writer created it while this one was writing, and nothing "
        "was replaced. Pass overwrite=True to replace it, or choose another path."
    )


def _publish_new(tmp: Path, path: Path) -> None:
    """Put ``tmp`` at ``path`` only if nothing is there, atomically (a hard link)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise _taken(path) from None
    except OSError as exc:
        if exc.errno not in _NO_LINKS:
            raise
        # No hard links on this filesystem: claim the name with an exclusive create, then
        # move the content in (still exclusive; a reader may see an empty file briefly).
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            raise _taken(path) from None
        try:
            os.replace(tmp, path)
        except BaseException:
            path.unlink(missing_ok=True)  # our empty claim, never someone else's file
            raise


def atomic_write(
    path: str | Path,
    write: Callable[[Path], object],
    *,
    overwrite: bool,
    what: str = "folder",
    fix: str = _FIX,
) -> Path:
    """Write a file through ``write(temporary_path)`` and publish it at ``path``.

    ``write`` fills the given (existing, empty) temporary file beside ``path``; it is then
    flushed to disk and renamed to ``path`` (``overwrite=True``, keeping the mode of a file
    it replaces) or linked there only if ``path`` does not exist (``overwrite=False``;
    ``FileExistsError`` otherwise, checked before ``write`` runs and again when
    publishing). Folders are created; ``what`` and ``fix`` word the error when the folder
    cannot take the file. Returns ``path``.
    """
    path = Path(path)
    if not overwrite:
        refuse_existing(path)
    _prepare_dir(path.parent, what, fix)
    tmp = _create_temp(path.parent, path.name, what, fix)
    try:
        write(tmp)
        _sync(tmp)
        replaced = overwrite and path.is_file()
        os.chmod(tmp, stat.S_IMODE(path.stat().st_mode) if replaced else 0o666 & ~_umask())
        if overwrite:
            os.replace(tmp, path)
        else:
            _publish_new(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)  # after a link, or when ``write`` failed
    return path


def write_text(path: str | Path, text: str, *, overwrite: bool = False) -> Path:
    """Write ``text`` (UTF-8) to ``path`` with :func:`atomic_write`."""
    return atomic_write(
        path, lambda tmp: tmp.write_text(text, encoding="utf-8"), overwrite=overwrite
    )


def write_safetensors(
    path: str | Path,
    state: dict[str, torch.Tensor],
    metadata: dict[str, str],
    *,
    overwrite: bool = True,
    what: str = "folder",
    fix: str = _FIX,
) -> Path:
    """Write tensors and string ``metadata`` as a safetensors file with :func:`atomic_write`
    (``overwrite=False``: exclusive, ``FileExistsError`` if ``path`` exists)."""
    return atomic_write(
        path,
        lambda tmp: save_file(state, str(tmp), metadata=metadata),
        overwrite=overwrite,
        what=what,
        fix=fix,
    )
