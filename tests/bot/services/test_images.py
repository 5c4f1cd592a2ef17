"""ImageStore: atomic files under the data folder with their sha256."""

from __future__ import annotations

import hashlib

import pytest

from bot.services.images import ImageDamaged, ImageStore, read_header


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


def png(size=(32, 32), color=(200, 30, 30)) -> bytes:
    import io

    from PIL import Image

    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, format="PNG")
    return out.getvalue()


def test_a_changed_file_raises_image_damaged(tmp_path):
    """The error names the file and says what is wrong; it is a ValueError for the callers that catch those."""
    store = ImageStore(tmp_path)
    path, sha = store.save(1, 0, b"original")
    (tmp_path / path).write_bytes(b"tampered")
    with pytest.raises(ImageDamaged) as caught:
        store.read(path, sha)
    assert isinstance(caught.value, ValueError) and caught.value.path == path
    assert store.read(path, hashlib.sha256(b"tampered").hexdigest()) == b"tampered"


def test_read_header_gives_the_stated_size_without_decoding(monkeypatch):
    from PIL import ImageFile

    loads = []
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: loads.append(self))
    assert read_header(png((48, 16))) == ("PNG", 48, 16)
    assert loads == []


def test_read_header_refuses_what_is_not_a_png_with_a_reason_that_quotes_nothing():
    for data in (b"", b"GIF89a" + b"\0" * 40, b"\x89PNG\r\n\x1a\n" + b"<@everyone>" * 10):
        with pytest.raises(ValueError) as caught:
            read_header(data)
        assert "not a PNG image" in str(caught.value) and "everyone" not in str(caught.value)


def test_read_header_refuses_a_size_beyond_pillows_limit(monkeypatch):
    from PIL import Image

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(ValueError, match="more pixels than the bot decodes"):
        read_header(png((32, 32)))


def test_the_grid_cache_is_keyed_by_the_job_and_the_image_hashes_and_checked_when_read(tmp_path):
    store = ImageStore(tmp_path)
    hashes = ["a" * 64, "b" * 64]
    assert store.read_grid(7, hashes) is None
    assert store.save_grid(7, hashes, b"grid png")
    assert store.read_grid(7, hashes) == b"grid png"
    path = store.grid_path(7, hashes)
    assert path.startswith("images/0/7_grid_") and path.endswith(".grid")
    assert store.grid_path(7, hashes[::-1]) != path and store.grid_path(8, hashes) != path
    assert store.read_grid(7, hashes[::-1]) is None
    # A damaged cache file is removed and composed again by the caller.
    raw = (tmp_path / path).read_bytes()
    (tmp_path / path).write_bytes(b"x" + raw[1:])
    assert store.read_grid(7, hashes) is None and not (tmp_path / path).exists()


def test_a_grid_that_cannot_be_cached_is_not_an_error(tmp_path):
    store = ImageStore(tmp_path)
    (tmp_path / "images").write_text("a file where the folder should be")
    assert store.save_grid(7, ["a" * 64], b"grid png") is False
