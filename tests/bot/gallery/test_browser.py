"""The gallery in a real browser: Debian's Chromium, driven by Selenium through chromedriver (headless), loads the
gallery of a seeded database served by uvicorn on 127.0.0.1, searches a word, opens a job page and sees its image;
hidden, deleted and private-channel jobs never appear.

Chromium and chromium-driver are installed by the Makefile (`make test` / `make install`) when missing. Without them
this test FAILS, saying so: it is never skipped.

With GALLERY_SCREENSHOT=path (e.g. docs/gallery.png) it also saves a screenshot of the gallery page there.
"""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import pytest

from bot.gallery.server import GalleryServer
from tests.bot.gallery.seed import seed_more

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
#: Seconds the browser waits for a page or an image.
WAIT = 20


def browser_or_fail():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not (os.path.exists(p) and os.access(p, os.X_OK))]
    if missing:
        pytest.fail(f"the browser test needs Debian's chromium and chromium-driver ({', '.join(missing)} missing): "
                    "`make test` installs them (apt-get install -y chromium chromium-driver)", pytrace=False)
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        pytest.fail("the browser test needs selenium: pip install -e '.[dev]'", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--window-size=1280,900", "--hide-scrollbars", "--force-device-scale-factor=1"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)


def images_loaded(driver, selector: str) -> list[tuple[str, int]]:
    """(src, naturalWidth) of the images `selector` finds, once every one has finished loading."""
    from selenium.webdriver.support.ui import WebDriverWait

    def state(d):
        found = d.find_elements("css selector", selector)
        values = [(img.get_attribute("src"), img.get_property("complete"), img.get_property("naturalWidth"))
                  for img in found]
        return values if values and all(complete for _, complete, _ in values) else False

    return [(src, width) for src, _, width in WebDriverWait(driver, WAIT).until(state)]


def card_ids(driver) -> list[int]:
    return [int(e.get_attribute("data-job")) for e in driver.find_elements("css selector", "li.card")]


def drive(url: str, shown: list[int], never: dict[str, int], never_words: dict[str, str], yellow: int,
          screenshot: str | None) -> None:
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver = browser_or_fail()
    try:
        driver.set_page_load_timeout(WAIT)
        driver.get(url + "/")
        assert card_ids(driver) == shown
        # Every thumbnail on the page arrived and decoded (scrolled into view first: they load lazily).
        driver.execute_script("window.scrollTo(0, document.body.scrollHeight)")
        thumbs = images_loaded(driver, "li.card img")
        assert len(thumbs) == len(shown) and all(width > 0 for _, width in thumbs), thumbs
        driver.execute_script("window.scrollTo(0, 0)")
        page = driver.page_source
        for reason, word in never_words.items():
            assert word not in page, reason
        if screenshot:
            Path(screenshot).parent.mkdir(parents=True, exist_ok=True)
            assert driver.save_screenshot(screenshot)

        # Search a word, as a visitor types it.
        box = driver.find_element("css selector", "input[name=q]")
        box.send_keys("Triangle")
        box.send_keys(Keys.ENTER)
        WebDriverWait(driver, WAIT).until(ec.url_contains("q=Triangle"))
        found = card_ids(driver)
        assert yellow in found and all(j in shown for j in found)
        assert "sunset" in driver.page_source

        # Open the job page from the result and see its image.
        driver.find_element("css selector", f'li.card[data-job="{yellow}"] a.pic').click()
        WebDriverWait(driver, WAIT).until(ec.url_contains(f"/job/{yellow}"))
        full = images_loaded(driver, "img.full")
        assert full and all(width == 320 for _, width in full), full
        link = driver.find_element("id", "discord-link").get_attribute("href")
        assert link.startswith("https://discord.com/channels/") and link.endswith(f"/{900_000 + yellow}")
        assert "a yellow triangle at sunset" in driver.find_element("css selector", "dl.params").text

        # A word of each job that must never show finds nothing; their pages are not there.
        for reason, word in never_words.items():
            driver.get(f"{url}/?q={word}")
            assert card_ids(driver) == [], reason
            assert driver.find_element("id", "no-results").text == "No posted image matches."
            driver.get(f"{url}/job/{never[reason]}")
            assert "Not in the gallery" in driver.title, reason
            assert word not in driver.page_source
    finally:
        driver.quit()


async def test_the_gallery_in_chromium(app, seeded, services):
    if shutil.which("chromium") is None and not os.path.exists(CHROMIUM):
        browser_or_fail()
    more = await seed_more(services)
    shown = sorted(seeded.shown + more, reverse=True)
    server = GalleryServer(app, "127.0.0.1", 0)
    await server.start()
    try:
        # The browser runs in a worker thread; this loop keeps serving it meanwhile.
        await asyncio.to_thread(drive, server.url, shown, seeded.never, seeded.never_words,
                                seeded.by_name["yellow"], os.environ.get("GALLERY_SCREENSHOT"))
    finally:
        await server.stop()
