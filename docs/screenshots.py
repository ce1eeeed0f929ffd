"""Regenerate the README's app screenshots: docs/app_compare.png, app_results.png, app_runs.png, app_study.png.

    python docs/screenshots.py [--out docs]

Starts `python app.py` on a free loopback port with a temporary cache and votes database (tests/app_server.py,
as the app tests do), drives it with Python Playwright in Debian's headless Chromium (/usr/bin/chromium;
`apt-get install chromium`), and screenshots the Compare (a generated grid), Results (the SwiftVideo pipeline's
evaluation) and Runs (the toy CCD run) tabs; then a second app with `--users` for the annotators' Study tab, after
logging in. It only drives the app in a browser; every file written is printed, and both apps are stopped even on
error.
"""
import argparse
import sys
import tempfile
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.app_server import serving  # noqa: E402  (the app tests' launcher)

CHROMIUM = "/usr/bin/chromium"
SLOW = 180_000  # ms: generating the Compare grid takes minutes on a small, busy CPU


def choose(page, label: str, option: str) -> None:
    """Pick `option` in the gradio dropdown labelled `label`."""
    page.get_by_label(label).click()
    page.get_by_role("option", name=option, exact=True).click()


def settle(page) -> None:
    """Wait until every visible video has a frame and every image has loaded, then let plots finish drawing."""
    page.wait_for_function("[...document.querySelectorAll('video')].filter(v => v.offsetParent !== null)"
                           ".every(v => v.readyState >= 2) && [...document.images].every(i => i.complete)",
                           timeout=SLOW)
    page.wait_for_timeout(1500)


def shoot(page, out: Path, name: str, full_page: bool = False) -> None:
    path = out / name
    page.screenshot(path=str(path), full_page=full_page)
    print(path, flush=True)


def main_app(browser, url: str, out: Path) -> None:
    page = browser.new_page(viewport={"width": 1200, "height": 1275})
    page.goto(url)
    # Compare: the default picks (teacher @ 8, ccd @ 4, swiftvideo @ 4) generated on clip 0 when the page loads
    page.wait_for_function("document.querySelectorAll('.grid video').length == 4", timeout=SLOW)
    page.locator("img[src*='strip-']").wait_for(timeout=SLOW)  # every frame of every video, in rows
    settle(page)
    shoot(page, out, "app_compare.png", full_page=True)

    page.get_by_role("tab", name="Results").click()
    choose(page, "evaluation (results.csv)", str(ROOT / "experiments/toy/swiftvideo/results.csv"))
    page.get_by_text("FVD against sampling steps").wait_for(timeout=SLOW)
    page.wait_for_function("document.body.innerText.includes('mean over seeds')", timeout=SLOW)
    page.get_by_text("training curves").first.wait_for(timeout=SLOW)
    settle(page)
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, out, "app_results.png")

    page.set_viewport_size({"width": 1200, "height": 1500})
    page.get_by_role("tab", name="Runs").click()
    choose(page, "run or model folder", str(ROOT / "experiments/toy/ccd"))
    page.wait_for_function("document.body.innerText.includes('name: ccd')", timeout=SLOW)  # config.yaml's first line
    settle(page)
    page.evaluate("window.scrollTo(0, 0)")
    shoot(page, out, "app_runs.png")
    page.close()


def study_app(browser, url: str, out: Path) -> None:
    page = browser.new_page(viewport={"width": 975, "height": 810})
    page.goto(url)
    page.get_by_label("username").fill("annotator")
    page.get_by_label("password").fill("screenshots")
    page.get_by_role("button", name="Login").click()
    page.get_by_text("items left in this mode").wait_for(timeout=SLOW)
    page.wait_for_function("[...document.querySelectorAll('video')].filter(v => v.offsetParent !== null)"
                           ".length == 4", timeout=SLOW)
    settle(page)
    shoot(page, out, "app_study.png")
    page.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(ROOT / "docs"), help="folder the PNGs are written to (default: docs)")
    out = Path(ap.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp, sync_playwright() as p:
        users = Path(tmp) / "users.txt"
        users.write_text("annotator:screenshots\n")
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        try:
            with serving("--cache", f"{tmp}/cache", "--votes", f"{tmp}/votes.sqlite") as (url, _):
                main_app(browser, url, out)
            with serving("--users", str(users), "--cache", f"{tmp}/study-cache",
                         "--votes", f"{tmp}/study-votes.sqlite") as (url, _):
                study_app(browser, url, out)
        finally:
            browser.close()


if __name__ == "__main__":
    main()
