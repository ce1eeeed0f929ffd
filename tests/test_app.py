"""The app in a real browser (Python Playwright driving Debian's /usr/bin/chromium), against `python app.py` on
loopback: the Compare grid plays the chosen models on one clip, Results and Runs show the shipped experiments, and
the file route refuses what the app does not mean to serve. The annotators' app: blind votes under a neutral title,
the server's play gate, a second submit, videos of one byte size, the study's media only, limited logins."""
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


def test_a_clip_out_of_range_gives_one_message_and_no_error_badges(page):
    clip = page.get_by_label("test clip")
    clip.fill("999")
    page.get_by_role("button", name="compare").click()
    page.get_by_text("out of range; the test set has clips 0 to").wait_for(timeout=WAIT)
    assert page.locator(".grid video").count() == 0                     # the old grid is gone, not left below
    assert page.get_by_text("Error", exact=True).count() == 0           # no error badge over every output
    clip.fill("0")


def test_compare_shows_a_study_sets_items_labelled_for_reviewers(page):
    page.get_by_text("pre-rendered: the study set's items").click()
    page.wait_for_function("[...document.querySelectorAll('.grid figcaption')].some(f => f.innerText == "
                           "'teacher, 8 steps')", timeout=WAIT)          # the first item, shown on opening
    labels = page.evaluate("[...document.querySelectorAll('.grid figcaption')].map(f => f.innerText)")
    assert {"ccd, 4 steps", "da, 4 steps", "swiftvideo, 4 steps"} <= set(labels)


# a plot's line with at least one segment (a trace whose points are all separated by NaN draws none)
DRAWN = "[...document.querySelectorAll('.js-plotly-plot path.js-line')].some(p => /L/.test(p.getAttribute('d') || ''))"


def test_results_and_runs_tabs_show_the_shipped_experiments(page):
    page.get_by_role("tab", name="Results").click()
    page.wait_for_selector(".js-plotly-plot", timeout=WAIT)
    page.get_by_text("VBench-I2V dimensions, mean ± std over seeds").wait_for(timeout=WAIT)
    page.wait_for_function("document.body.innerText.includes('Results: mean ± std over seeds')", timeout=WAIT)
    for section in ("an evaluation: a metric against steps", "training curves of every run", "a shipped table"):
        page.get_by_role("button", name=section).wait_for(timeout=WAIT)  # foldable sections (accordions)
    page.get_by_role("button", name="a shipped table").click()          # folds: its table is hidden
    page.wait_for_function("!document.body.innerText.includes('Results: mean ± std over seeds')", timeout=WAIT)
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function("document.body.innerText.includes('name: toy-')", timeout=WAIT)  # config.yaml's first line


def test_the_runs_tab_draws_a_curve_logged_every_other_row_and_says_when_there_is_no_eval_table(page):
    """Its first run (baselines/cdm) logs `loss` on every other row and has no eval table."""
    page.get_by_role("tab", name="Runs").click()
    page.wait_for_function(DRAWN, timeout=WAIT)
    page.get_by_text("This run has no eval table").wait_for(timeout=WAIT)
    headers = page.evaluate("[...document.querySelectorAll('th')].filter(h => h.offsetParent !== null)"
                            ".map(h => h.innerText.trim())")
    assert not {"1", "2", "3"} <= set(headers)                           # no empty table headed 1, 2, 3


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
    """The identities `text` names as words, in any case ("SwiftVideo" too): "ccd" inside a random hex id (a session
    hash, a file digest) is not one."""
    import re
    return [n for n in IDENTITIES if re.search(rf"(?<![0-9A-Za-z]){re.escape(n)}(?![0-9A-Za-z])", text, re.I)]


def test_the_leak_check_ignores_case_and_hex_ids():
    assert _names("SwiftVideo workbench") == ["swiftvideo"] and _names("TEACHER@8") == ["teacher"]
    assert _names("/gradio_api/file=/tmp/gradio/0ccd9f/ab12ccd.mp4") == []


@pytest.fixture(scope="module")
def voting_app(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("study-app")
    (tmp / "users.txt").write_text("ann1:pw-one\nann2:pw-two\nann3:pw-three\nann4:pw-four\nann5:pw-five\n")
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


# Press play on every visible video not yet played, as an annotator would; true once every one has played to its end.
PLAY_TO_THE_END = """() => {
    const shown = [...document.querySelectorAll('video')].filter(v => v.offsetParent !== null);
    shown.filter(v => v.paused && !v.ended).forEach(v => { v.muted = true; v.play().catch(() => {}); });
    return shown.length > 0 && shown.every(v => v.ended);
}"""


def _vote(page, answer: str, told: str = "votes stored") -> None:
    page.wait_for_function(PLAY_TO_THE_END, timeout=WAIT, polling=500)
    for group in ("frame quality", "temporal consistency", "image alignment"):
        page.locator(".block", has=page.get_by_text(group, exact=True)).get_by_label(answer, exact=True).check()
    page.get_by_role("button", name="submit votes").click()
    page.get_by_text(told).wait_for(timeout=WAIT)


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
    assert page.title() == "Video study" and page.locator("h1").first.inner_text() == "Video study"  # neutral
    first = _visible_videos(page)
    assert len(first) == 4
    dom = page.content()
    leaked = [(n, u) for u, body in [*seen, ("page", dom)] if "/assets/" not in u for n in _names(u + " " + body)]
    assert not leaked, leaked[:3]                                   # before any vote is stored
    _vote(page, _attentive("ann1", "best_of_n", "1"))         # flagged annotators' votes are left out
    rows = sqlite3.connect(tmp / "votes.sqlite").execute("SELECT criterion, mode FROM votes").fetchall()
    assert sorted(rows) == sorted((c, "best_of_n") for c in ("frame_quality", "temporal_consistency",
                                                              "image_alignment"))
    page.reload(timeout=WAIT)                                           # not the default 30 s on a loaded machine
    page.get_by_text("items left in this mode").wait_for(timeout=WAIT)
    second = _visible_videos(page)
    assert len(second) == 4 and not set(second) & set(first)       # the voted item is not served again
    _vote(page, _attentive("ann1", "best_of_n", "1", nth=1))     # one of ann1's first two items is regular
    page.reload(timeout=WAIT)                                           # the mode switch on a settled page
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
        page.wait_for_function("document.body.innerText.includes('no item has judgements from two annotators "
                               "yet')", timeout=WAIT)
        agreement = page.locator(".block", has=page.get_by_text("inter-annotator agreement", exact=True)).first
        assert "criterion" in agreement.inner_text()                     # its header named, not blank
        page.close()


def _login(url: str, user: str, password: str) -> str:
    """The Cookie header of an annotator logged in through gradio's /login (HTTPError 400 when refused)."""
    import urllib.parse
    form = urllib.parse.urlencode({"username": user, "password": password}).encode()
    response = urllib.request.urlopen(urllib.request.Request(f"{url}/login", data=form), timeout=60)
    return "; ".join(c.split(";", 1)[0] for c in response.headers.get_all("Set-Cookie"))


def _get(url: str, cookie: str, method: str = "GET", data: bytes | None = None):
    return urllib.request.urlopen(urllib.request.Request(url, data=data, method=method, headers={"Cookie": cookie}),
                                  timeout=30)


def test_an_annotator_app_serves_only_the_study_media(voting_app, request):
    import tempfile
    url, _, tmp = voting_app
    root = request.config.rootpath
    cookie = _login(url, "ann1", "pw-one")
    study = root / "experiments/toy/study"
    video = next((study / "videos").glob("*.mp4"))
    stray = Path(tempfile.gettempdir()) / "gradio" / f"test-app-{os.getpid()}"  # a reviewer app's files live here
    stray.mkdir(parents=True, exist_ok=True)
    (stray / "strip-0123.png").write_bytes(b"\x89PNG labelled strip")
    (stray / video.name).write_bytes(b"not the study's video")              # a study name, other bytes
    for target in (tmp / "votes.sqlite", study / "manifest.json", root / "experiments/toy/teacher/config.yaml",
                   "/etc/passwd", stray / "strip-0123.png", stray / video.name):
        for headers in ("", cookie):                                      # logged in or not
            with pytest.raises(urllib.error.HTTPError) as e:
                _get(f"{url}/gradio_api/file={target}", headers)
            assert e.value.code in (401, 403, 404), target
    assert _get(f"{url}/gradio_api/file={video.resolve()}", cookie).status == 200   # the study's own media
    for route in ("upload", "process_recording"):                                   # no uploads of any size
        with pytest.raises(urllib.error.HTTPError) as e:
            _get(f"{url}/gradio_api/{route}", cookie, "POST", b"x" * 1000)
        assert e.value.code == 403


def test_every_video_of_the_study_has_one_byte_size(voting_app):
    """Attention checks' noisy copies encode far larger than real clips: padded, no size tells them apart."""
    from workbench.study.build import load_study
    url, _, _ = voting_app
    study = load_study(ROOT / "experiments/toy/study")
    cookie = _login(url, "ann4", "pw-four")
    sizes = {}
    for item in study.items.values():
        for v in item["videos"]:
            r = _get(f"{url}/gradio_api/file={study.video_path(v['video']).resolve()}", cookie)
            sizes[v["video"], bool(item["attention"])] = int(r.headers["Content-Length"])
            r.read()
    assert len(set(sizes.values())) == 1 and {a for _, a in sizes} == {True, False}, sizes


def test_the_server_decides_whether_a_vote_counts(voting_app):
    """A vote from a client that never fetched the videos stores nothing, however long it waits; once this
    annotator's client has fetched every shown video and their length has passed since serving, it counts."""
    import sqlite3
    import time

    from gradio_client import Client
    url, _, tmp = voting_app
    client = Client(url, auth=("ann2", "pw-two"), verbose=False, download_files=False)
    served = client.predict("best of N (the paper's protocol)", api_name="/next_item")
    shown = [v["value"]["url"] for v in served[3:7] if v.get("visible") and v.get("value")]
    assert len(shown) == 4
    time.sleep(1.5)                                                      # longer than the videos (1 s)
    answer = _attentive("ann2", "best_of_n", "1")
    with pytest.raises(Exception, match="were not loaded"):
        client.predict(answer, answer, answer, api_name="/vote")
    cookie = "; ".join(f"{k}={v}" for k, v in client.cookies.items())
    for u in shown:
        _get(u, cookie).read()                                           # as the annotator's browser would
    deadline = time.monotonic() + 30
    while True:                                                          # the videos' length since serving: 1 s
        try:
            client.predict(answer, answer, answer, api_name="/vote")
            break
        except Exception as e:  # noqa: BLE001  only "play the videos to the end: 0.4 s left", for at most 30 s
            assert "s left" in str(e) and time.monotonic() < deadline, e
            time.sleep(0.2)
    rows = sqlite3.connect(tmp / "votes.sqlite").execute("SELECT COUNT(*) FROM votes WHERE annotator = 'ann2'")
    assert rows.fetchone()[0] == 3                                       # one item, three criteria


def test_a_second_submit_of_a_voted_item_says_the_first_answer_stands(voting_app, browser):
    """Two tabs of one annotator show the same item; the vote in the second tab stores nothing and says so."""
    import sqlite3
    url, _, tmp = voting_app
    context = browser.new_context(viewport={"width": 1300, "height": 1600})
    first = context.new_page()
    first.goto(url)
    first.get_by_label("username").fill("ann3")
    first.get_by_label("password").fill("pw-three")
    first.get_by_role("button", name="Login").click()
    first.get_by_text("items left in this mode").wait_for(timeout=WAIT)
    second = context.new_page()                                          # the same login (cookie)
    second.goto(url)
    second.get_by_text("items left in this mode").wait_for(timeout=WAIT)
    assert _visible_videos(second) == _visible_videos(first)             # the same item, same order
    answer = _attentive("ann3", "best_of_n", "1")
    _vote(first, answer)
    other = "2" if answer == "1" else "1"
    _vote(second, other, told="the first answer stands")
    context.close()
    stored = sqlite3.connect(tmp / "votes.sqlite").execute("SELECT DISTINCT choice FROM votes WHERE annotator = "
                                                           "'ann3'").fetchall()
    assert stored == [(str(int(answer) - 1),)]                           # the first answer, slot 0-based


def test_logins_are_limited_per_name(voting_app):
    from workbench.study.votes import MAX_FAILED_PER_NAME
    url = voting_app[0]
    for _ in range(MAX_FAILED_PER_NAME):
        with pytest.raises(urllib.error.HTTPError) as e:
            _login(url, "ann5", "a guess")
        assert e.value.code == 400
    with pytest.raises(urllib.error.HTTPError):                          # the right password, after the limit
        _login(url, "ann5", "pw-five")
    assert _login(url, "ann1", "pw-one")                                 # another name still logs in
