"""The app in a real browser (Python Playwright driving Debian's /usr/bin/chromium), against `python app.py` on
loopback: the Compare grid plays the chosen models on one clip, Results and Runs show the shipped experiments, and
the file route refuses what the app does not mean to serve."""
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():  # .ci/run installs it; CI must run these tests, a developer's machine may lack it
    if os.environ.get("CI") == "true":
        raise RuntimeError("/usr/bin/chromium is missing in CI: .ci/run installs Debian's chromium")
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)

from tests.app_server import ROOT, serving  # noqa: E402

WAIT = 120_000  # ms a page may take on a loaded 2-core machine (a bound on hangs, not a speed test)


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    cache = tmp_path_factory.mktemp("app-cache")
    with serving("--cache", str(cache), "--votes", str(cache / "votes.sqlite")) as (url, port):
        yield url, port, cache


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def page(app, browser):
    page = browser.new_page(viewport={"width": 1200, "height": 1400})
    page.goto(app[0])
    yield page
    page.close()


def test_compare_plays_every_chosen_model_on_the_same_clip(page, app):
    page.wait_for_selector("video", timeout=WAIT)
    videos = page.locator(".grid video")
    assert videos.count() == 4                                              # the real clip + 3 default picks
    labels = page.locator(".grid figcaption").all_inner_texts()
    assert labels[0] == "real continuation" and any("teacher, 8 steps" in t for t in labels)
    srcs = [videos.nth(i).get_attribute("src") for i in range(videos.count())]
    assert len(set(srcs)) == 4 and all(Path(s.split("file=", 1)[1]).parent == app[2] for s in srcs)
    page.wait_for_function("document.querySelector('.grid video').readyState >= 2", timeout=WAIT)  # it decodes
    assert page.get_by_label("caption").input_value()
    page.get_by_role("checkbox", name="toy/ccd @ 1").check()
    page.get_by_role("button", name="compare").click()
    page.wait_for_function("document.querySelectorAll('.grid video').length == 5", timeout=WAIT)


def test_compare_shows_a_study_sets_items_labelled_for_reviewers(page):
    page.get_by_text("pre-rendered: the study set's items").click()
    page.wait_for_function("[...document.querySelectorAll('.grid figcaption')].some(f => f.innerText == "
                           "'teacher, 8 steps')", timeout=WAIT)          # the first item, shown on opening
    labels = page.evaluate("[...document.querySelectorAll('.grid figcaption')].map(f => f.innerText)")
    assert {"ccd, 4 steps", "da, 4 steps", "swiftvideo, 4 steps"} <= set(labels)


def test_results_and_runs_tabs_show_the_shipped_experiments(page):
    page.get_by_role("tab", name="Results").click()
    page.wait_for_selector(".js-plotly-plot", timeout=WAIT)
    page.get_by_text("VBench-I2V dimensions, mean ± std over seeds").wait_for(timeout=WAIT)
    page.wait_for_function("document.body.innerText.includes('Results: mean ± std over seeds')", timeout=WAIT)
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function("document.body.innerText.includes('name: toy-')", timeout=WAIT)  # config.yaml's first line


@pytest.mark.parametrize("target", ["/etc/passwd", "http://127.0.0.1:{port}/", "{root}/pyproject.toml"])
def test_the_file_route_refuses_what_the_app_does_not_serve(app, target, request):
    url, port, _ = app
    target = target.format(port=port, root=request.config.rootpath)
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{url}/gradio_api/file={target}", timeout=10)
    assert e.value.code in (403, 404)


def test_binds_loopback_only(app):
    """The listening socket's local address, read from /proc/net/tcp (no traffic to any other address)."""
    _, port, _ = app
    listening = [line.split()[1] for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]
    assert listening == ["0100007F:%04X" % port]  # 127.0.0.1, not 0.0.0.0


# --- the blind study, as annotators see it ------------------------------------------------------------------------

# what would tell a method: its name, a label like teacher@8, its folder, the manifest (gradio's own scripts aside)
IDENTITIES = ("teacher", "ccd", "swiftvideo", "da@4", "experiments/toy", "study/manifest")


def _names(text: str) -> list[str]:
    """The identities `text` names as words: "ccd" inside a random hex id (a session hash, a file digest) is not one."""
    import re
    return [n for n in IDENTITIES if re.search(rf"(?<![0-9A-Za-z]){re.escape(n)}(?![0-9A-Za-z])", text)]


@pytest.fixture(scope="module")
def voting_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study-app")
    (tmp / "users.txt").write_text("ann1:pw-one\nann2:pw-two\n")
    with serving("--users", str(tmp / "users.txt"), "--votes", str(tmp / "votes.sqlite"),
                 "--cache", str(tmp / "cache")) as (url, port):
        yield url, port, tmp


def _body(response) -> str:
    """A text response's body ("" for media, or once the page is gone)."""
    kind = response.headers.get("content-type") or ""
    if not any(k in kind for k in ("text", "json", "javascript")):
        return ""
    try:
        return response.text()
    except Exception:  # noqa: BLE001  the body of a response the browser has already dropped
        return ""


def _visible_videos(page) -> list[str]:
    return page.evaluate("[...document.querySelectorAll('video')].filter(v => v.offsetParent !== null).map(v => v.src)")


# Press play on every visible video not yet played, as an annotator would, until the submit button is enabled.
PLAY_UNTIL_SUBMIT = """() => {
    [...document.querySelectorAll('video')].filter(v => v.offsetParent !== null && v.paused && !v.ended)
        .forEach(v => { v.muted = true; v.play().catch(() => {}); });
    return [...document.querySelectorAll('button')].some(b => b.innerText.includes('submit votes') && !b.disabled);
}"""


def _vote(page, answer: str) -> None:
    submit = page.get_by_role("button", name="submit votes")
    assert submit.is_disabled()                                         # not before every video has played
    page.wait_for_function(PLAY_UNTIL_SUBMIT, timeout=WAIT, polling=500)
    for group in ("frame quality", "temporal consistency", "image alignment"):
        page.locator(".block", has=page.get_by_text(group, exact=True)).get_by_label(answer, exact=True).check()
    submit.click()
    page.get_by_text("votes stored").wait_for(timeout=WAIT)


def _attentive(annotator: str, mode: str, default: str, nth: int = 0) -> str:
    """The answer of an attentive annotator to the nth item of the shipped study served in `mode`: the real clip's
    slot ("1".."N", or "A"/"B") on an attention check, else `default`. The test knows the study; the page does not."""
    from workbench.study.build import REAL, load_study
    from workbench.study.votes import VoteStore
    study = load_study(ROOT / "experiments/toy/study")
    item = VoteStore.item_order(study, annotator)[nth]
    if not study.items[item].get("attention"):
        return default
    slots = [s["method"] for s in VoteStore.slot_order(study, annotator, item, mode)]
    return str(slots.index(REAL) + 1) if mode == "best_of_n" else "AB"[slots.index(REAL)]


def test_an_annotator_votes_blind_in_both_modes_and_is_never_served_an_item_twice(voting_app, browser):
    import sqlite3

    url, _, tmp = voting_app
    seen = []                                                           # every response body before the vote
    page = browser.new_page(viewport={"width": 1300, "height": 1600})
    page.on("response", lambda r: seen.append((r.url, _body(r))))
    page.goto(url)
    page.get_by_label("username").fill("ann1")
    page.get_by_label("password").fill("pw-one")
    page.get_by_role("button", name="Login").click()
    page.get_by_text("items left in this mode").wait_for(timeout=WAIT)
    assert [t.inner_text() for t in page.get_by_role("tab").all()] == ["Study"]  # nothing that names methods
    first = _visible_videos(page)
    assert len(first) == 4
    dom = page.content()
    leaked = [(n, u) for u, body in [*seen, ("page", dom)] if "/assets/" not in u for n in _names(u + " " + body)]
    assert not leaked, leaked[:3]                                   # before any vote is stored
    _vote(page, _attentive("ann1", "best_of_n", "1"))         # flagged annotators' votes are left out
    rows = sqlite3.connect(tmp / "votes.sqlite").execute("SELECT criterion, mode FROM votes").fetchall()
    assert sorted(rows) == sorted((c, "best_of_n") for c in ("frame_quality", "temporal_consistency",
                                                              "image_alignment"))
    page.reload()
    page.get_by_text("items left in this mode").wait_for(timeout=WAIT)
    second = _visible_videos(page)
    assert len(second) == 4 and not set(second) & set(first)       # the voted item is not served again
    _vote(page, _attentive("ann1", "best_of_n", "1", nth=1))     # one of ann1's first two items is regular
    page.reload()                                                       # the mode switch on a settled page
    page.get_by_text("items left in this mode").wait_for(timeout=WAIT)
    page.get_by_label("pairwise arena (A/B)").check()
    page.wait_for_function("[...document.querySelectorAll('video')].filter(v => v.offsetParent !== null)"
                           ".length == 2", timeout=WAIT)
    pairwise = _attentive("ann1", "pairwise", "tie")
    _vote(page, pairwise)
    page.close()
    modes = sqlite3.connect(tmp / "votes.sqlite").execute("SELECT mode, choice FROM votes").fetchall()
    assert sorted(m for m, _ in modes) == ["best_of_n"] * 6 + ["pairwise"] * 3
    assert {str(c) for m, c in modes if m == "pairwise"} == {pairwise}

    # a reviewer's app on the same database: the Results tab counts the votes just stored
    with serving("--votes", str(tmp / "votes.sqlite"), "--cache", str(tmp / "cache")) as (review, _):
        page = browser.new_page(viewport={"width": 1300, "height": 1600})
        page.goto(review)
        page.get_by_role("tab", name="Results").click()
        page.get_by_role("button", name="refresh study results").click()
        page.wait_for_function("/\\d+ votes counted; 0 left out/.test(document.body.innerText)", timeout=WAIT)
        page.close()


def test_an_annotator_app_serves_only_the_study_media(voting_app, request):
    url, _, tmp = voting_app
    root = request.config.rootpath
    for target in (tmp / "votes.sqlite", root / "experiments/toy/study/manifest.json",
                   root / "experiments/toy/teacher/config.yaml", "/etc/passwd"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{url}/gradio_api/file={target}", timeout=10)
        assert e.value.code in (401, 403, 404), target
