"""CIFAR from the binary archives: tiny archives in the official layout, served by a local HTTP
server, exercise the download, the checksum, the cache, the cleanup and the record parsing."""

from __future__ import annotations

import dataclasses
import hashlib
import http.server
import io
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from unifiedctx import data
from unifiedctx.data import DatasetUnavailable, cifar

CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
OFFLINE = "http://127.0.0.1:9/"  # the discard port: nothing listens, the connection is refused


def records(n: int, label_bytes: int, rng: np.random.Generator, num_labels=(10,)) -> np.ndarray:
    """``n`` random binary records: ``label_bytes`` label bytes then 3072 pixel bytes."""
    table = rng.integers(0, 256, size=(n, label_bytes + 3072), dtype=np.uint8)
    for i, k in enumerate(num_labels):
        table[:, i] = rng.integers(0, k, size=n)
    return table


def make_archive(folder: Path, name: str, seed: int = 0) -> tuple[Path, dict]:
    """A tiny archive of ``name`` in the official layout, at ``folder/<official file name>``.
    Returns its path and the tables written: ``{"train": (N, rec), "test": (M, rec)}``."""
    rng = np.random.default_rng(seed)
    spec = cifar.ARCHIVES[name]
    files: dict[str, bytes] = {}
    if name == "cifar10":
        batches = [records(2, 1, rng) for _ in spec.train_files]
        test = records(3, 1, rng)
        files.update({f: b.tobytes() for f, b in zip(spec.train_files, batches)})
        files["batches.meta.txt"] = ("\n".join(CIFAR10_NAMES) + "\n\n").encode()
    else:
        batches = [records(4, 2, rng, num_labels=(20, 100))]
        test = records(3, 2, rng, num_labels=(20, 100))
        files["train.bin"] = batches[0].tobytes()
        files["fine_label_names.txt"] = "".join(f"fine{i}\n" for i in range(100)).encode()
        files["coarse_label_names.txt"] = "".join(f"coarse{i}\n" for i in range(20)).encode()
    files[spec.test_file] = test.tobytes()
    files["readme.html"] = b"<html>not read</html>"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / spec.filename
    with tarfile.open(path, "w:gz") as tar:
        for member, payload in files.items():
            info = tarfile.TarInfo(f"{spec.folder}/{member}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return path, {"train": np.concatenate(batches), "test": test}


#: Records per file of the tiny archives of make_archive: (per training file, test file).
TINY_RECORDS = {"cifar10": (2, 3), "cifar100": (4, 3)}


def patch_md5(monkeypatch, name: str, md5: str) -> None:
    """Make the loader expect the tiny archive: its MD5 and its record counts."""
    train, test = TINY_RECORDS[name]
    monkeypatch.setitem(cifar.ARCHIVES, name, dataclasses.replace(
        cifar.ARCHIVES[name], md5=md5, train_file_records=train, test_records=test))


def md5_of(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


class Server:
    """A local HTTP server on 127.0.0.1 serving ``files`` (name -> bytes); ``cut`` names files
    whose response announces their full length but stops halfway. ``hits`` counts requests."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.cut: set[str] = set()
        self.hits = 0
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 (http.server's name)
                owner.hits += 1
                name = self.path.rsplit("/", 1)[-1]
                if name not in owner.files:
                    self.send_error(404)
                    return
                payload = owner.files[name]
                self.send_response(200)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload[: len(payload) // 2] if name in owner.cut else payload)
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/files/"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    srv = Server()
    yield srv
    srv.close()


def serve(server, monkeypatch, tmp_path, name="cifar10"):
    """Serve a tiny archive of ``name`` whose checksum is patched in; returns the written tables."""
    path, tables = make_archive(tmp_path / "upstream", name)
    server.files[path.name] = path.read_bytes()
    patch_md5(monkeypatch, name, md5_of(path))
    return tables


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


def test_official_checksums_are_the_published_ones():
    assert cifar.ARCHIVES["cifar10"].md5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert cifar.ARCHIVES["cifar100"].md5 == "03b5dce01913d631647c71ecec9e9cb8"
    assert cifar.archive_url(cifar.ARCHIVES["cifar10"], None) == \
        "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"


def test_cifar10_download_parses_the_records(server, monkeypatch, tmp_path):
    tables = serve(server, monkeypatch, tmp_path)
    root = tmp_path / "root"
    ds = data.load("cifar10", root=root, url=server.url, progress=False)
    assert server.hits == 1
    assert ds.classes == CIFAR10_NAMES
    assert ds.train_x.shape == (10, 3, 32, 32) and ds.test_x.shape == (3, 3, 32, 32)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    for split in ("train", "test"):
        table = tables[split]
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        assert y.tolist() == table[:, 0].tolist()
        # the record's pixel bytes are R (1024), then G, then B, each 32 rows of 32
        for i in range(len(table)):
            for c in range(3):
                expected = table[i, 1 + 1024 * c: 1 + 1024 * (c + 1)].reshape(32, 32)
                assert np.array_equal(x[i, c].numpy(), expected)
    # spot check one pixel by its byte offset: record 1, green, row 2, column 5
    assert ds.train_x[1, 1, 2, 5].item() == tables["train"][1, 1 + 1024 + 2 * 32 + 5]
    # mean/std measured on the training split, per channel, in [0, 1] units
    expected_mean = tables["train"][:, 1:].reshape(-1, 3, 1024).mean(axis=(0, 2)) / 255
    assert np.allclose(ds.mean, expected_mean)
    # only the final folder is left: no archive, no temporary file or folder
    assert leftovers(root) == ["cifar-10-batches-bin"]
    assert sorted(p.name for p in (root / "cifar-10-batches-bin").iterdir()) == sorted(
        cifar.ARCHIVES["cifar10"].files)


def test_second_call_uses_the_cache_without_network(server, monkeypatch, tmp_path):
    serve(server, monkeypatch, tmp_path)
    root = tmp_path / "root"
    first = data.load("cifar10", root=root, url=server.url, progress=False)
    again = data.load("cifar10", root=root, url=OFFLINE)
    offline = data.load("cifar10", root=root, download=False)
    assert server.hits == 1
    for ds in (again, offline):
        assert torch.equal(ds.train_x, first.train_x) and torch.equal(ds.test_y, first.test_y)


def test_archive_placed_by_hand_is_verified_and_used(monkeypatch, tmp_path):
    root = tmp_path / "root"
    path, tables = make_archive(root, "cifar10")
    patch_md5(monkeypatch, "cifar10", md5_of(path))
    ds = data.load("cifar10", root=root, download=False, url=OFFLINE)
    assert ds.train_y.tolist() == tables["train"][:, 0].tolist()
    assert leftovers(root) == ["cifar-10-batches-bin", "cifar-10-binary.tar.gz"]  # the user's file is kept


def test_only_our_own_temporaries_are_removed_from_the_data_root(server, monkeypatch, tmp_path):
    """A killed download leaves ``.<archive>.<8 random>.part`` and ``.<folder>.<8 random>.tmp/``: those
    go; a person's files that only look like them (another random part) stay, byte for byte."""
    serve(server, monkeypatch, tmp_path)
    root = tmp_path / "root"
    root.mkdir()
    ours = [root / ".cifar-10-binary.tar.gz.k1ll3d_x.part", root / ".cifar-10-batches-bin.ab12cd_9.tmp"]
    ours[0].write_bytes(b"half a download")
    ours[1].mkdir()
    (ours[1] / "data_batch_1.bin").write_bytes(b"half")
    theirs = {".cifar-10-binary.tar.gz.backup.part": b"mine",
              ".cifar-10-binary.tar.gz.K1LL3D_X.part": b"mine",
              ".cifar-10-batches-bin.old.tmp": None, ".cifar-10-batches-bin.ab12cd_9.tmp.keep": b"mine"}
    for name, content in theirs.items():
        if content is None:
            (root / name).mkdir()
            (root / name / "notes.txt").write_text("mine")
        else:
            (root / name).write_bytes(content)
    data.load("cifar10", root=root, url=server.url, progress=False)
    assert not any(p.exists() for p in ours)
    assert leftovers(root) == sorted(["cifar-10-batches-bin", *theirs])
    assert (root / ".cifar-10-batches-bin.old.tmp" / "notes.txt").read_text() == "mine"
    assert all((root / n).read_bytes() == c for n, c in theirs.items() if c is not None)


def test_archive_placed_by_hand_with_a_wrong_checksum_is_refused(tmp_path):
    root = tmp_path / "root"
    make_archive(root, "cifar10")  # the official MD5 stays: this tiny archive does not match it
    with pytest.raises(DatasetUnavailable, match="MD5") as err:
        data.load("cifar10", root=root, download=False)
    assert "c32a1d4ab5d03f1284b67883e8d87530" in str(err.value)
    assert leftovers(root) == ["cifar-10-binary.tar.gz"]


def test_truncated_download_is_an_error_and_leaves_nothing(server, monkeypatch, tmp_path):
    serve(server, monkeypatch, tmp_path)
    server.cut.add("cifar-10-binary.tar.gz")
    root = tmp_path / "root"
    with pytest.raises(DatasetUnavailable, match="cut short"):
        data.load("cifar10", root=root, url=server.url, progress=False)
    assert leftovers(root) == []


def test_checksum_mismatch_is_an_error_and_leaves_nothing(server, monkeypatch, tmp_path):
    serve(server, monkeypatch, tmp_path)
    patch_md5(monkeypatch, "cifar10", "0" * 32)
    root = tmp_path / "root"
    with pytest.raises(DatasetUnavailable, match="MD5") as err:
        data.load("cifar10", root=root, url=server.url, progress=False)
    assert "0" * 32 in str(err.value)
    assert leftovers(root) == []


def test_offline_error_names_the_file_the_url_and_the_destination(tmp_path):
    root = tmp_path / "root"
    with pytest.raises(DatasetUnavailable) as err:
        data.load("cifar10", root=root, url=OFFLINE, progress=False)
    message = str(err.value)
    assert "cifar-10-binary.tar.gz" in message
    assert OFFLINE + "cifar-10-binary.tar.gz" in message
    assert str(root / "cifar-10-binary.tar.gz") in message
    assert isinstance(err.value, RuntimeError)
    assert leftovers(root) == []


def test_no_download_allowed_and_nothing_cached_says_what_to_fetch(tmp_path):
    with pytest.raises(DatasetUnavailable, match="download=False") as err:
        data.load("cifar100", root=tmp_path, download=False)
    assert "https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz" in str(err.value)
    assert leftovers(tmp_path) == []


def test_archive_missing_a_member_is_not_moved_into_place(monkeypatch, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    path = root / "cifar-10-binary.tar.gz"
    with tarfile.open(path, "w:gz") as tar:  # right name, right checksum (patched), wrong contents
        info = tarfile.TarInfo("cifar-10-batches-bin/batches.meta.txt")
        info.size = 3
        tar.addfile(info, io.BytesIO(b"a\nb"))
    patch_md5(monkeypatch, "cifar10", md5_of(path))
    with pytest.raises(DatasetUnavailable, match="data_batch_1.bin"):
        data.load("cifar10", root=root, download=False)
    assert leftovers(root) == ["cifar-10-binary.tar.gz"]


def test_damaged_cache_folder_is_reported(server, monkeypatch, tmp_path):
    serve(server, monkeypatch, tmp_path)
    root = tmp_path / "root"
    data.load("cifar10", root=root, url=server.url, progress=False)
    (root / "cifar-10-batches-bin" / "test_batch.bin").unlink()
    with pytest.raises(DatasetUnavailable, match="test_batch.bin"):
        data.load("cifar10", root=root, download=False)


def test_cifar100_fine_and_coarse_labels(server, monkeypatch, tmp_path):
    tables = serve(server, monkeypatch, tmp_path, "cifar100")
    root = tmp_path / "root"
    fine = data.load("cifar100", root=root, url=server.url + "cifar-100-binary.tar.gz", progress=False)
    coarse = data.load("cifar100", root=root, label_type="coarse")
    assert fine.num_classes == 100 and fine.classes[7] == "fine7"
    assert coarse.num_classes == 20 and coarse.classes[7] == "coarse7"
    assert fine.train_y.tolist() == tables["train"][:, 1].tolist()
    assert coarse.train_y.tolist() == tables["train"][:, 0].tolist()
    assert fine.test_y.tolist() == tables["test"][:, 1].tolist()
    assert np.array_equal(fine.train_x.reshape(4, -1).numpy(), tables["train"][:, 2:])
    assert torch.equal(fine.train_x, coarse.train_x)
    assert leftovers(root) == ["cifar-100-binary"]


def test_bad_options_are_named(tmp_path):
    with pytest.raises(ValueError, match="label_type"):
        data.load("cifar100", root=tmp_path, label_type="medium")
    with pytest.raises(ValueError, match="label_type"):
        data.load("cifar10", root=tmp_path, label_type="coarse")
