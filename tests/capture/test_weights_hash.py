"""The weights hash is a content hash, cached under the files' paths, sizes and mtimes (a 70B model is read once)."""
from __future__ import annotations

import hashlib
import os

from capture.torch_loading import weights_hash


def _plain_hash(folder: str) -> str:
    h = hashlib.sha256()
    for name in ("config.json", "model.safetensors"):
        h.update(name.encode() + b"\0")
        with open(os.path.join(folder, name), "rb") as fh:
            h.update(fh.read())
    return h.hexdigest()


def test_hash_is_cached_and_follows_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"weights-1")
    digest, method = weights_hash(str(folder))
    assert digest == _plain_hash(str(folder)) and method == "sha256(weight files + config.json)"
    cached = list((tmp_path / "cache" / "tensorparity" / "weights-hash").iterdir())
    assert len(cached) == 1
    assert weights_hash(str(folder))[0] == digest  # served from the cache
    (folder / "model.safetensors").write_bytes(b"weights-2, longer")  # new weights: new size and mtime
    assert weights_hash(str(folder))[0] == _plain_hash(str(folder)) != digest
    assert weights_hash(str(tmp_path))[0] == ""  # no weight file
