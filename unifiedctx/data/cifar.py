"""CIFAR-10 and CIFAR-100 from the official *binary* archives (no pickle is ever loaded).

Record layout (https://www.cs.toronto.edu/~kriz/cifar.html): CIFAR-10 records are 1 label byte
and 3072 pixel bytes; CIFAR-100 records are a coarse label byte, a fine label byte and 3072
pixel bytes. The pixels are the 1024 red, then 1024 green, then 1024 blue values of a 32x32
image in row-major order, i.e. exactly a ``(3, 32, 32)`` array.

The first call downloads the archive (with a progress bar), verifies its MD5, unpacks the
needed files into ``root/cifar-10-batches-bin`` or ``root/cifar-100-binary`` (atomically) and
deletes the archive; later calls read the folder and touch no network. An archive put in
``root`` by hand is verified and used (and kept).
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..files import FileLock, is_temporary_of
from ..validation import check_bool, check_choice, check_path
from .base import DatasetUnavailable, ImageData, channel_stats
from .download import download as fetch
from .download import extract_members, how_to_fetch, md5sum

#: Where the archives are served; override with ``load("cifar10", url=...)`` (a folder URL,
#: or the full URL of the archive).
BASE_URL = "https://www.cs.toronto.edu/~kriz/"

PIXELS = 3 * 32 * 32


@dataclass(frozen=True)
class Archive:
    """One official archive: its file name, MD5, top folder and the files we read from it."""

    filename: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_bytes: int
    train_file_records: int = 10000
    test_records: int = 10000

    @property
    def files(self) -> tuple[str, ...]:
        """Every file of the top folder the loader reads (records and class-name lists)."""
        if self.label_bytes == 2:
            return (*self.train_files, self.test_file, "fine_label_names.txt", "coarse_label_names.txt")
        return (*self.train_files, self.test_file, "batches.meta.txt")


# MD5s from the table of the dataset's official page, https://www.cs.toronto.edu/~kriz/cifar.html
# ("CIFAR-10 binary version (suitable for C programs) ... c32a1d4ab5d03f1284b67883e8d87530",
# "CIFAR-100 binary version ... 03b5dce01913d631647c71ecec9e9cb8"). torchvision cannot confirm
# them: it downloads the *python* (pickle) archives, whose MD5s differ.
ARCHIVES = {
    "cifar10": Archive("cifar-10-binary.tar.gz", "c32a1d4ab5d03f1284b67883e8d87530", "cifar-10-batches-bin",
                       tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin", 1),
    "cifar100": Archive("cifar-100-binary.tar.gz", "03b5dce01913d631647c71ecec9e9cb8", "cifar-100-binary",
                        ("train.bin",), "test.bin", 2, train_file_records=50000),
}


def archive_url(spec: Archive, url: str | None) -> str:
    """The URL of ``spec``'s archive: ``url`` itself if it ends with the archive's name, else
    ``url`` (default :data:`BASE_URL`) taken as the folder that holds it."""
    base = BASE_URL if url is None else url
    if base.endswith(spec.filename):
        return base
    return base.rstrip("/") + "/" + spec.filename


def prepare(spec: Archive, root: Path, download: bool, url: str | None, progress: bool = True) -> Path:
    """Make sure ``root/spec.folder`` holds the files ``spec`` needs and return that folder:
    use the cache, else an archive placed in ``root`` by hand, else download (if allowed)."""
    folder = root / spec.folder
    source = archive_url(spec, url)
    archive = root / spec.filename
    if archive.is_dir():
        raise DatasetUnavailable(f"{archive} is a folder, but that path is where the archive file "
                                 f"{spec.filename} is expected (a gzipped tar of {spec.folder}/): move "
                                 "or delete that folder. " + how_to_fetch(source, archive, spec.md5))
    if folder.exists() and not folder.is_dir():
        raise DatasetUnavailable(f"{folder} is a file, but that path is where the unpacked folder "
                                 f"{spec.folder}/ is expected: move or delete that file and call again.")
    if folder.is_dir():
        missing = [name for name in spec.files if not (folder / name).is_file()]
        if missing:
            raise DatasetUnavailable(f"{folder} lacks {', '.join(missing)}: delete that folder and call "
                                     f"again to unpack it anew. " + how_to_fetch(source, archive, spec.md5))
        return folder
    if not archive.is_file() and not download:
        raise DatasetUnavailable(f"{spec.folder} is not in {root} and download=False. "
                                 + how_to_fetch(source, archive, spec.md5))
    root.mkdir(parents=True, exist_ok=True)
    with FileLock(root / f".{spec.folder}.lock", f"the download of {spec.folder}").acquire(wait=True):
        remove_stale_temporaries(root, spec)  # we hold the lock: whoever left them is gone
        if folder.is_dir():  # another process unpacked it while we waited
            return prepare(spec, root, download, url, progress)
        return _fetch_and_unpack(spec, root, download, source, archive, progress)


def remove_stale_temporaries(root: Path, spec: Archive) -> None:
    """Delete what a killed download or unpack of ``spec`` left in ``root``: the partial download
    ``.<archive>.<8 random characters>.part`` and the staging folder ``.<folder>.<8 random
    characters>.tmp``, named exactly as :mod:`tempfile` names them (:func:`unifiedctx.files.
    is_temporary_of`); a person's ``.<archive>.backup.part`` or ``.<folder>.old.tmp`` stays."""
    for path in root.iterdir():
        if path.is_file() and is_temporary_of(path.name, [spec.filename], ".part"):
            path.unlink(missing_ok=True)
        elif path.is_dir() and is_temporary_of(path.name, [spec.folder], ".tmp"):
            shutil.rmtree(path, ignore_errors=True)


def _fetch_and_unpack(spec: Archive, root: Path, download: bool, source: str, archive: Path,
                      progress: bool) -> Path:
    folder = root / spec.folder
    members = [f"{spec.folder}/{name}" for name in spec.files]
    if archive.is_file():
        got = md5sum(archive)
        if got != spec.md5:
            hint = how_to_fetch(source, archive, spec.md5)
            raise DatasetUnavailable(f"{archive} has MD5 {got}, not {spec.md5}: it is damaged or not the "
                                     f"official archive. Delete it. {hint}")
        return extract_members(archive, members, folder)
    fetch(source, archive, spec.md5, progress=progress)
    try:
        extract_members(archive, members, folder)
    finally:
        archive.unlink(missing_ok=True)
    return folder


def read_names(path: Path) -> list[str]:
    """Class names, one a line (blank lines and surrounding spaces dropped)."""
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def read_records(paths: list[Path], label_bytes: int, label_index: int,
                 records: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Parse binary record files into uint8 images ``(N, 3, 32, 32)`` and int64 labels ``(N,)``,
    taking the label from byte ``label_index`` of each record's ``label_bytes`` label bytes.
    With ``records``, every file must hold exactly that many records (a file cut short is an
    error naming it, never a smaller dataset)."""
    record = label_bytes + PIXELS
    rows = []
    for path in paths:
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % record:
            raise DatasetUnavailable(f"{path} holds {raw.size} bytes, not a whole number of {record}-byte "
                                     "records: delete its folder and call again to unpack it anew.")
        if records is not None and raw.size != records * record:
            raise DatasetUnavailable(f"{path} holds {raw.size // record} records, expected {records} "
                                     f"({records * record} bytes): it is damaged or cut short; delete its "
                                     "folder and call again to unpack it anew.")
        rows.append(raw.reshape(-1, record))
    table = np.concatenate(rows)
    labels = torch.from_numpy(table[:, label_index].astype(np.int64))
    images = torch.from_numpy(np.ascontiguousarray(table[:, label_bytes:]).reshape(-1, 3, 32, 32))
    return images, labels


def load_cifar(name: str, root: Path, download: bool = True, url: str | None = None,
               label_type: str = "fine", progress: bool = True) -> ImageData:
    """Load ``"cifar10"`` or ``"cifar100"`` (with ``label_type`` ``"fine"``, 100 classes, or
    ``"coarse"``, 20 superclasses) as :class:`ImageData`: uint8 images ``(50000, 3, 32, 32)``
    and ``(10000, 3, 32, 32)``, channels in R, G, B order."""
    spec = ARCHIVES[check_choice("name", name, ARCHIVES)]
    check_choice("label_type", label_type, ("fine", "coarse"))
    if name == "cifar10" and label_type != "fine":
        raise ValueError("label_type='coarse' exists only for cifar100")
    if url is not None and not isinstance(url, str):
        raise TypeError(f"url must be a string (a folder URL or the archive's URL), got "
                        f"{type(url).__name__} {url!r}")
    check_bool("progress", progress)
    root = check_path("root", root, kind="folder", must_exist=False)
    folder = prepare(spec, root, check_bool("download", download), url, progress)
    if spec.label_bytes == 1:
        classes, label_index = read_names(folder / "batches.meta.txt"), 0
    else:
        label_index = 1 if label_type == "fine" else 0
        classes = read_names(folder / f"{label_type}_label_names.txt")
    train_x, train_y = read_records([folder / f for f in spec.train_files], spec.label_bytes, label_index,
                                    spec.train_file_records)
    test_x, test_y = read_records([folder / spec.test_file], spec.label_bytes, label_index, spec.test_records)
    top = int(max(train_y.max(), test_y.max()))
    if top >= len(classes):
        raise DatasetUnavailable(f"{folder} has label {top} but only {len(classes)} class names: delete "
                                 "the folder and call again to unpack it anew.")
    mean, std = channel_stats(train_x)
    return ImageData(name, train_x, train_y, test_x, test_y, classes, mean, std)
