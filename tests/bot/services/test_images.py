"""ImageStore: atomic files under the data folder with their sha256."""

from __future__ import annotations

import hashlib

import pytest

from bot.services.images import ImageStore


def test_save_writes_the_bytes_and_returns_a_relative_path_and_sha256(tmp_path):
    """The file lands under data/images with the given bytes; the path is relative to the data folder."""
    store = ImageStore(tmp_path)
    path, sha = store.save(1234, 2, b"png bytes")
    assert path == "images/1/1234_2.png"
    assert (tmp_path / path).read_bytes() == b"png bytes"
    assert sha == hashlib.sha256(b"png bytes").hexdigest()


def test_save_leaves_no_temporary_files(tmp_path):
    """Only the final file remains in the folder after saving (and overwriting)."""
    store = ImageStore(tmp_path)
    store.save(5, 0, b"one")
    store.save(5, 0, b"two")
    assert [p.name for p in (tmp_path / "images" / "0").iterdir()] == ["5_0.png"]
    assert store.read("images/0/5_0.png") == b"two"


def test_read_detects_a_changed_file(tmp_path):
    """Reading with the recorded sha256 fails if the file was altered."""
    store = ImageStore(tmp_path)
    path, sha = store.save(1, 0, b"original")
    (tmp_path / path).write_bytes(b"tampered")
    with pytest.raises(ValueError, match="does not match its recorded sha256"):
        store.read(path, sha)


def test_paths_outside_the_data_folder_are_refused(tmp_path):
    """A stored path that climbs out of the data folder is refused."""
    with pytest.raises(ValueError, match="outside the data folder"):
        ImageStore(tmp_path / "data").absolute("../secrets.txt")


def test_empty_image_is_refused(tmp_path):
    """Saving zero bytes raises ValueError naming the job and image."""
    with pytest.raises(ValueError, match="image 0 of job 3 has no bytes"):
        ImageStore(tmp_path).save(3, 0, b"")
