"""Fetch a checksum-verified archive and unpack chosen members of it atomically.

Nothing half-written is ever left in place: a download goes to a temporary file next to its
destination and only an archive whose MD5 matches is kept; an archive is unpacked into a
temporary folder that is renamed to its final name in one step.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from tqdm.auto import tqdm

from .base import DatasetUnavailable

CHUNK = 1 << 20
TIMEOUT_S = 30


def md5sum(path: str | Path) -> str:
    """Hex MD5 digest of the file at ``path``, read in 1 MiB chunks."""
    digest = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def how_to_fetch(url: str, dest: Path, md5: str | None) -> str:
    """The sentence that tells a person how to put ``url`` at ``dest`` by hand."""
    check = f" (its MD5 must be {md5})" if md5 else ""
    return (f"Fetch {dest.name} from {url} yourself (e.g. `curl -L -o {dest} {url}`) and put it at "
            f"{dest}{check}; the next call will verify and use it.")


def download(url: str, dest: Path, md5: str | None, progress: bool = True, min_bytes: int = 0) -> Path:
    """Download ``url`` to ``dest``, verifying its MD5 against ``md5``.

    ``md5=None`` is for files whose checksum nobody has published: then only the size is checked
    (at least ``min_bytes``, and the server's Content-Length when it sends one).

    The bytes go to a temporary file in ``dest``'s folder, which becomes ``dest`` (one
    ``os.replace``) only when it is complete and its checksum matches. Any failure (unreachable
    server, a download cut short, a wrong checksum) removes the temporary file and raises
    :class:`DatasetUnavailable` naming the file, the URL and ``dest``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".part", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
                    length = response.headers.get("Content-Length")
                    expected = int(length) if length and length.isdigit() else None
                    received = 0
                    with tqdm(total=expected, unit="B", unit_scale=True, desc=dest.name,
                              disable=not progress) as bar:
                        for block in iter(lambda: response.read(CHUNK), b""):
                            out.write(block)
                            received += len(block)
                            bar.update(len(block))
            except (urllib.error.URLError, OSError, ValueError) as error:
                reason = getattr(error, "reason", error)
                raise DatasetUnavailable(f"Could not download {dest.name} from {url}: {reason}. "
                                         + how_to_fetch(url, dest, md5)) from error
        if expected is not None and received != expected:
            raise DatasetUnavailable(f"The download of {dest.name} from {url} was cut short "
                                     f"({received} of {expected} bytes). " + how_to_fetch(url, dest, md5))
        if received < min_bytes:
            raise DatasetUnavailable(f"The download of {dest.name} from {url} has only {received} bytes "
                                     f"(at least {min_bytes} expected: an error page, not the file). "
                                     + how_to_fetch(url, dest, md5))
        got = md5sum(tmp) if md5 else None
        if got != md5:
            raise DatasetUnavailable(f"The download of {dest.name} from {url} has MD5 {got}, expected "
                                     f"{md5}; it was deleted. " + how_to_fetch(url, dest, md5))
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def extract_members(archive: Path, members: list[str], dest: Path) -> Path:
    """Unpack the regular files ``members`` (paths inside the tar archive, all under one top
    folder named ``dest.name``) into the folder ``dest``, atomically.

    Only the listed members are read (no other path of the archive is ever written, so a
    hostile archive cannot escape ``dest``). They go to a temporary folder next to ``dest``
    that is renamed to ``dest`` once all are written. A damaged archive or a missing member
    raises :class:`DatasetUnavailable` and leaves nothing behind.
    """
    dest = Path(dest)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", suffix=".tmp", dir=dest.parent))
    try:
        staged = work / dest.name
        staged.mkdir()
        try:
            with tarfile.open(archive, "r:*") as tar:
                for name in members:
                    if Path(name).parts[0] != dest.name or ".." in Path(name).parts:
                        raise ValueError(f"member {name!r} is not inside {dest.name}/")
                    try:
                        info = tar.getmember(name)
                    except KeyError:
                        raise DatasetUnavailable(f"{archive} has no member {name!r}; it is not the "
                                                 "expected archive. Delete it and fetch it again.") from None
                    source = tar.extractfile(info) if info.isfile() else None
                    if source is None:
                        raise DatasetUnavailable(f"{name!r} in {archive} is not a regular file")
                    target = staged.joinpath(*Path(name).parts[1:])
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with source, open(target, "wb") as out:
                        shutil.copyfileobj(source, out, CHUNK)
        except (tarfile.TarError, EOFError, OSError) as error:
            raise DatasetUnavailable(f"Could not unpack {archive}: {error}. "
                                     "Delete it and fetch it again.") from error
        try:
            os.rename(staged, dest)
        except OSError:
            if not dest.is_dir():  # another process may have finished first; that is fine
                raise
        return dest
    finally:
        shutil.rmtree(work, ignore_errors=True)
