"""One output rule for every command: a folder, locked while a run writes into it, with a
manifest of what lacoot wrote there.

- ``--out`` names a folder; a file there is refused (:func:`check_folder_arg`).
- A run holds an exclusive lock on its folder (``.lacoot.lock``, ``fcntl.flock``): a second run
  is refused naming the holder; a lock left by a dead process holds nothing and is taken over.
- ``.lacoot-manifest.json`` lists what lacoot commands wrote in the folder. ``--overwrite``
  clears those entries (and the reports derived from the folder's checkpoint in its
  sub-folders), never the user's other files.
- A command that fails before it commits (a refused command) leaves the folder as it found it:
  every entry it created is removed, and the folder itself when the command created it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ._io import atomic_write_text

__all__ = ["LOCK_NAME", "MANIFEST_NAME", "FolderBusyError", "OutputFolder", "check_folder_arg"]

LOCK_NAME = ".lacoot.lock"
MANIFEST_NAME = ".lacoot-manifest.json"
_OURS = (LOCK_NAME, MANIFEST_NAME)

try:  # POSIX: a lock the kernel releases when its process dies
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


class FolderBusyError(FileExistsError):
    """Another live lacoot process holds the output folder's lock."""


def check_folder_arg(path: str | os.PathLike, flag: str = "--out") -> Path:
    """``path`` as a folder argument: an existing file there is a ``ValueError`` naming
    ``flag``."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ValueError(f"{flag} {str(p)!r} is a file; expected a folder (lacoot writes its "
                         "results into a folder and never replaces another file)")  # fmt: skip
    return p


def read_manifest(folder: Path) -> dict[str, Any]:
    """The folder's manifest (empty when there is none or it cannot be read)."""
    try:
        data = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _holder(lock: Path) -> str:
    try:
        info = json.loads(lock.read_text())
        return (f"pid {info['pid']} on {info['host']}, `{info['command']}`, started "
                f"{info['started']}")  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError):
        return "a process that left no details"


class OutputFolder:
    """An output folder held by this process: locked, its prior contents remembered.

    Use :meth:`open`; then :meth:`refuse_existing`, :meth:`clear_previous` once the command's
    checks have passed, :meth:`commit` once its results are worth keeping, and :meth:`close`.
    As a context manager, an exception before :meth:`commit` rolls the folder back.
    """

    def __init__(self, path: Path, command: str, created: bool, fd: int | None) -> None:
        self.path, self.command, self.created, self._fd = path, command, created, fd
        self.before = self._entries()
        self.committed = False
        self.sources: list[str] = []

    @classmethod
    def open(cls, path: str | os.PathLike, command: str, flag: str = "--out") -> OutputFolder:
        """Create the folder if needed and take its lock; :class:`FolderBusyError` when a live
        process holds it (the folder is then left as it was)."""
        p = check_folder_arg(path, flag)
        created = not p.exists()
        p.mkdir(parents=True, exist_ok=True)
        try:
            fd = _lock(p / LOCK_NAME, command)
        except BaseException:
            if created:
                with contextlib.suppress(OSError):
                    p.rmdir()
            raise
        return cls(p, command, created, fd)

    def _entries(self) -> set[str]:
        return {e.name for e in self.path.iterdir()} - set(_OURS)

    def previous(self, known: Iterable[str] = (), whole: bool = False) -> list[str]:
        """The ``known`` output names of this command found here and, for a command that
        claims the ``whole`` folder (train, run), every entry an earlier lacoot command wrote
        here (its manifest)."""
        listed = set(known)
        if whole:
            listed |= set(read_manifest(self.path).get("files", []))
        return sorted(n for n in listed if (self.path / n).exists())

    def refuse_existing(
        self, known: Iterable[str], overwrite: bool, hint: str = "", whole: bool = False
    ) -> None:
        """``FileExistsError`` when the folder holds results of an earlier command
        (:meth:`previous`) and ``overwrite`` is not given."""
        earlier = self.previous(known, whole)
        if earlier and not overwrite:
            shown = ", ".join(earlier[:6]) + (", ..." if len(earlier) > 6 else "")
            raise FileExistsError(
                f"output folder {str(self.path)!r} already holds results ({shown}); pass "
                f"--overwrite to replace them{hint} or choose another --out"
            )

    def clear_previous(self, known: Iterable[str] = (), whole: bool = False) -> list[str]:
        """Remove what earlier lacoot commands wrote here (see :meth:`previous`) and, for the
        ``whole`` folder, the sub-folders holding reports derived from a checkpoint of this
        folder; the user's other files stay. Returns the removed names."""
        gone = self.previous(known, whole)
        for name in gone:
            _remove(self.path / name)
        if whole:
            for child in [c for c in self.path.iterdir() if c.is_dir() and self._derived(c)]:
                _remove(child)
                gone.append(child.name)
            (self.path / MANIFEST_NAME).unlink(missing_ok=True)
        self.before = self._entries()
        return gone

    def _derived(self, child: Path) -> bool:
        """Whether ``child`` holds only what a lacoot command derived from this folder's
        files (its manifest's sources are here)."""
        manifest = read_manifest(child)
        here = self.path.resolve()
        sources = [Path(s).resolve() for s in manifest.get("sources", [])]
        listed = set(manifest.get("files", []))
        own = {e.name for e in child.iterdir()} - set(_OURS)
        return bool(sources) and all(here in s.parents for s in sources) and own <= listed

    def new_entries(self) -> list[str]:
        """Entries created since the folder was opened (or last cleared)."""
        return sorted(self._entries() - self.before)

    def commit(self, source: str | os.PathLike | None = None) -> None:
        """Keep what this command wrote (even if it fails later) and record it in the
        manifest; ``source`` is the file it was derived from (a checkpoint)."""
        if source is not None:
            self.sources.append(str(Path(source).resolve()))
        manifest = read_manifest(self.path)
        files = set(manifest.get("files", [])) | set(self.new_entries())
        files = {n for n in files if (self.path / n).exists()}
        sources = list(dict.fromkeys([*manifest.get("sources", []), *self.sources]))
        record = {"files": sorted(files), "sources": sources, "command": self.command,
                  "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}  # fmt: skip
        atomic_write_text(self.path / MANIFEST_NAME, json.dumps(record, indent=2))
        self.before, self.committed = self._entries(), True

    def rollback(self) -> None:
        """Remove every entry this command created and has not committed."""
        for name in self.new_entries():
            _remove(self.path / name)

    def close(self, failed: bool = False) -> None:
        """Commit (success) or roll back (failure), release the lock, and remove the folder
        when this command created it and it is left empty."""
        if self._fd is None:
            return
        try:
            if failed and not self.committed:
                self.rollback()
            elif not failed:
                self.commit()
        finally:
            _unlock(self.path / LOCK_NAME, self._fd)
            self._fd = None
            if self.created and not any(self.path.iterdir()):
                with contextlib.suppress(OSError):
                    self.path.rmdir()

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(self, kind: Any, exc: Any, tb: Any) -> None:
        self.close(failed=kind is not None)


def _lock(lock: Path, command: str) -> int | None:
    """Take the folder's lock; the file records who holds it."""
    info = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "command": command,
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %Z")})  # fmt: skip
    if fcntl is None:  # pragma: no cover - no advisory locks: a pid file
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            raise FolderBusyError(_busy(lock)) from None
        os.write(fd, info.encode())
        return fd
    while True:
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FolderBusyError(_busy(lock)) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:  # not a file its last holder unlinked meanwhile
            os.ftruncate(fd, 0)
            os.write(fd, info.encode())
            return fd
        os.close(fd)


def _busy(lock: Path) -> str:
    return (f"output folder {str(lock.parent)!r} is in use by another lacoot run "
            f"({_holder(lock)}); wait for it to finish or choose another --out")  # fmt: skip


def _unlock(lock: Path, fd: int) -> None:
    with contextlib.suppress(FileNotFoundError):
        lock.unlink()
    os.close(fd)


def command_line() -> str:
    """The command this process runs, as a user typed it."""
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])
