"""Where dataset files are looked for, and verified downloads.

Lookup order for a dataset folder (first match wins):

1. an explicit ``data_dir`` argument (authoritative: if the files are not there, an error is
   raised, nothing else is tried);
2. the ``LACOOT_DATA`` environment variable: the folder itself and its dataset subfolders
   (for example ``$LACOOT_DATA/fashion-mnist``);
3. the Debian package folder ``/usr/share/datasets/<name>/`` (``apt-get install
   dataset-fashion-mnist`` installs Fashion-MNIST there);
4. the download cache ``$LACOOT_CACHE`` or ``$XDG_CACHE_HOME/lacoot/datasets/<name>``
   (default ``~/.cache/lacoot/datasets/<name>``);
5. for datasets with verified checksums only, a download into that cache.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path

from .base import DatasetNotFoundError

__all__ = [
    "ENV_VAR",
    "CACHE_ENV_VAR",
    "SYSTEM_DIR",
    "cache_dir",
    "find_root",
    "download_file",
    "sha256_file",
]

ENV_VAR = "LACOOT_DATA"
CACHE_ENV_VAR = "LACOOT_CACHE"
#: Parent of the Debian dataset packages' folders (module attribute so tests can redirect it).
SYSTEM_DIR = Path("/usr/share/datasets")

#: The function used to open URLs (module attribute so tests can replace it, never the network).
_urlopen = urllib.request.urlopen


def cache_dir(name: str) -> Path:
    """Download cache folder of dataset ``name`` (not created)."""
    base = os.environ.get(CACHE_ENV_VAR)
    if base:
        return Path(base).expanduser() / name
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "lacoot" / "datasets" / name


def _expand(base: Path, subdirs: Sequence[str]) -> list[Path]:
    out = [base]
    for s in subdirs:
        out.append(base / s)
    return out


def find_root(
    data_dir: str | os.PathLike | None,
    probe: Callable[[Path], bool],
    subdirs: Sequence[str],
    system_names: Sequence[str] = (),
    cache_name: str | None = None,
) -> tuple[Path | None, list[Path]]:
    """Find the first folder, in lookup order, for which ``probe(folder)`` is true.

    Parameters
    ----------
    data_dir : path or None
        Explicit folder. When given, only it and ``data_dir/<subdir>`` are tried.
    probe : callable
        ``probe(folder) -> bool``: does the folder hold the dataset files?
    subdirs : sequence of str
        Subfolder names tried below ``data_dir`` and ``$LACOOT_DATA``.
    system_names : sequence of str
        Folder names tried below :data:`SYSTEM_DIR` (Debian dataset packages).
    cache_name : str, optional
        Name of the download cache folder tried last (see :func:`cache_dir`).

    Returns
    -------
    root : Path or None
        The folder found, or ``None``.
    tried : list of Path
        Every folder tried, in order (for error messages).
    """
    tried: list[Path] = []
    if data_dir is not None:
        candidates = _expand(Path(data_dir).expanduser(), subdirs)
    else:
        candidates = []
        env = os.environ.get(ENV_VAR)
        if env:
            candidates += _expand(Path(env).expanduser(), subdirs)
        candidates += [SYSTEM_DIR / s for s in system_names]
        if cache_name is not None:
            candidates.append(cache_dir(cache_name))
    for c in candidates:
        tried.append(c)
        if c.is_dir() and probe(c):
            return c, tried
    return None, tried


def sha256_file(path: str | os.PathLike, block: int = 1 << 20) -> str:
    """Hex SHA-256 digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def download_file(
    urls: Sequence[str],
    dest: str | os.PathLike,
    sha256: str | None,
    *,
    timeout: float = 60.0,
    help_text: str = "",
) -> Path:
    """Download a file, verify its SHA-256 and move it into place atomically.

    The data is streamed into a temporary file in the destination folder, hashed on the fly,
    flushed to disk and only then renamed to ``dest`` with :func:`os.replace`, so ``dest`` is
    either absent or complete and verified. Mirrors are tried in order.

    Parameters
    ----------
    urls : sequence of str
        Mirror URLs of the same file.
    dest : path
        Final file path; its folder is created.
    sha256 : str or None
        Expected hex SHA-256 of the file. ``None`` (no verified checksum known) refuses to
        download and raises :class:`DatasetNotFoundError`.
    timeout : float
        Socket timeout in seconds.
    help_text : str
        Appended to error messages (how to install the data by hand).

    Returns
    -------
    Path
        ``dest``.
    """
    dest = Path(dest)
    if sha256 is None:
        raise DatasetNotFoundError(
            f"{dest.name}: no verified SHA-256 checksum is recorded in lacoot for this file, so "
            f"it will not be downloaded unverified. {help_text}".strip()
        )
    errors: list[str] = []
    for url in urls:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise DatasetNotFoundError(
                f"cannot create download folder {dest.parent}: {e}. {help_text}".strip()
            ) from e
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
        try:
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out:
                with _urlopen(url, timeout=timeout) as resp:
                    while chunk := resp.read(1 << 20):
                        h.update(chunk)
                        out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            digest = h.hexdigest()
            if digest != sha256.lower():
                errors.append(f"{url}: SHA-256 mismatch (got {digest}, expected {sha256})")
                continue
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
            os.replace(tmp, dest)
            return dest
        except Exception as e:  # network errors come in many types (URLError, OSError, ...)
            errors.append(f"{url}: {type(e).__name__}: {e}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    raise DatasetNotFoundError(
        f"could not download {dest.name} ({'; '.join(errors)}). {help_text}".strip()
    )
