"""Where datasets are found and how they are downloaded (lacoot.data.sources): the lookup order,
offline errors, and verified, atomic downloads from a fake server (never the network)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import urllib.error

import pytest
from _data import make_idx_folder

from lacoot.data import DatasetNotFoundError, load_dataset, sources
from lacoot.data import idx as idx_mod


def test_lookup_order(isolated, monkeypatch):
    explicit, env, system = isolated / "explicit", isolated / "env", isolated / "system"
    make_idx_folder(explicit, n_train=3)
    make_idx_folder(env / "fashion-mnist", n_train=4)  # subfolder of LACOOT_DATA
    make_idx_folder(system / "fashion-mnist", n_train=5)  # Debian package folder
    monkeypatch.setenv("LACOOT_DATA", str(env))
    assert len(load_dataset("fashion-mnist", data_dir=explicit)) == 3
    assert len(load_dataset("fashion-mnist")) == 4
    monkeypatch.setenv("LACOOT_DATA", str(env / "fashion-mnist"))  # the folder itself
    assert len(load_dataset("fashion-mnist")) == 4
    monkeypatch.setenv("LACOOT_DATA", str(isolated / "nothing-here"))  # falls through
    ds = load_dataset("fashion-mnist")
    assert len(ds) == 5 and ds.root == system / "fashion-mnist"
    monkeypatch.delenv("LACOOT_DATA")
    assert len(load_dataset("fashion-mnist")) == 5
    # an explicit folder is authoritative: no fallback when it lacks the files
    with pytest.raises(DatasetNotFoundError, match="empty-dir.*--data-dir"):
        load_dataset("fashion-mnist", data_dir=isolated / "empty-dir")


def test_download_offline_error(isolated, monkeypatch):
    calls = []

    def offline(url, timeout=None):
        calls.append(url)
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(sources, "_urlopen", offline)
    with pytest.raises(DatasetNotFoundError) as info:
        load_dataset("fashion-mnist")
    msg = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "--data-dir" in msg and "LACOOT_DATA" in msg and "no network" in msg
    assert calls and all(u.startswith(("https://", "http://")) for u in calls)
    cache = isolated / "cache" / "fashion-mnist"
    assert not cache.exists() or list(cache.iterdir()) == []  # no partial file left
    with pytest.raises(DatasetNotFoundError, match="download=False"):
        load_dataset("fashion-mnist", download=False)


def test_mnist_download_refused_without_checksum(isolated, monkeypatch):
    monkeypatch.setattr(sources, "_urlopen", lambda *a, **k: pytest.fail("must not download"))
    with pytest.raises(DatasetNotFoundError, match="no verified SHA-256.*--data-dir"):
        load_dataset("mnist")


def test_verified_download_is_atomic(isolated, monkeypatch):
    """A fake server: good files land in the cache, a wrong checksum leaves nothing."""
    served = {}
    src = isolated / "served"
    make_idx_folder(src, n_train=7)
    for p in src.iterdir():
        served[p.name] = p.read_bytes()

    class Resp(io.BytesIO):
        pass

    def fake_open(url, timeout=None):
        return Resp(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(sources, "_urlopen", fake_open)
    spec = idx_mod.IDX_SPECS["fashion-mnist"]
    good = {k: hashlib.sha256(v).hexdigest() for k, v in served.items()}
    bad = dict(good, **{"train-labels-idx1-ubyte.gz": "0" * 64})
    monkeypatch.setitem(idx_mod.IDX_SPECS, "fashion-mnist", dataclasses.replace(spec, sha256=bad))
    with pytest.raises(DatasetNotFoundError, match="SHA-256 mismatch"):
        load_dataset("fashion-mnist")
    cache = isolated / "cache" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == ["train-images-idx3-ubyte.gz"]
    monkeypatch.setitem(idx_mod.IDX_SPECS, "fashion-mnist", dataclasses.replace(spec, sha256=good))
    ds = load_dataset("fashion-mnist")
    assert len(ds) == 7 and ds.root == cache
    assert (cache / "train-labels-idx1-ubyte.gz").read_bytes() == served[
        "train-labels-idx1-ubyte.gz"
    ]
    # the cache is now found without downloading
    monkeypatch.setattr(sources, "_urlopen", lambda *a, **k: pytest.fail("cached"))
    assert len(load_dataset("fashion-mnist")) == 7
