"""The GALLERY_* settings: off by default, the port's range, the public address checked and normalised."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bot.config import Settings


def test_the_gallery_is_off_unless_a_port_is_set(monkeypatch):
    s = Settings(_env_file=None)
    assert (s.gallery_port, s.gallery_host, s.gallery_public_url) == (None, "127.0.0.1", None)
    monkeypatch.setenv("GALLERY_PORT", "8080")
    monkeypatch.setenv("GALLERY_PUBLIC_URL", "https://art.example.org/gallery/")
    s = Settings(_env_file=None)
    assert s.gallery_port == 8080 and s.gallery_public_url == "https://art.example.org/gallery"


@pytest.mark.parametrize(("field", "value", "says"), [
    ("gallery_port", 70000, "65535"),
    ("gallery_port", -1, "greater than or equal to 0"),
    ("gallery_public_url", "ftp://example.org", "GALLERY_PUBLIC_URL is 'ftp://example.org'"),
    ("gallery_public_url", "https://example.org/?a=1", "without ?query"),
    ("gallery_public_url", "example.org/gallery", "http:// or https://"),
    ("gallery_host", "", "at least 1 character"),
])
def test_bad_gallery_settings_are_refused_naming_them(field, value, says):
    with pytest.raises(ValidationError) as info:
        Settings(_env_file=None, **{field: value})
    assert says in str(info.value) and field in str(info.value)
