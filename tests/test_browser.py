"""The web pages in a real browser: headless Debian Chromium driven by Playwright, against waitress.

One person's whole visit, as the issue describes it: sign up, see the key, set
the Allowed Domain, compress two images on `/` and compare them, read the docs,
rotate the key, log out — with no console error (CSP violations included) on any
page. Uses the system Chromium (`apt-get install chromium`); Playwright never
downloads a browser. Skipped, with the reason, where Chromium is absent.
"""

import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
import time

import pytest
import requests

from helpers import free_port
from images import encode, photo

pytestmark = pytest.mark.browser

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN = os.path.dirname(sys.executable)
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
KEY = re.compile(r"^isk_[0-9a-f]{64}$")
QUALITY = re.compile(r"^(visually lossless|looks identical|high quality|medium quality|low quality|very low quality)"
                     r" · -?\d+$")
PHONE = {"width": 390, "height": 844}


@pytest.fixture(scope="module")
def server_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("browser-server")


@pytest.fixture(scope="module")
def server(server_dir):
    """waitress serving app:app on a free loopback port, with its own database and storage."""
    tmp = server_dir
    port = free_port()
    env = {**os.environ,
           "IMGSMALLER_DATABASE": str(tmp / "imgsmaller.sqlite3"),
           "IMGSMALLER_STORAGE_DIR": str(tmp / "storage"),
           "IMGSMALLER_SECRET_KEY": "browser-test",
           "IMGSMALLER_WORKERS": "2",
           "IMGSMALLER_SIGNUP_MAX_PER_ADDRESS_PER_HOUR": "50"}  # every test signs up from 127.0.0.1
    env.pop("IMGSMALLER_PUBLIC_URL", None)
    log_path = tmp / "server.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [os.path.join(BIN, "waitress-serve"), "--listen", f"127.0.0.1:{port}", "app:app"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            requests.get(url + "/login", timeout=1)
            break
        except requests.ConnectionError:
            if time.monotonic() > deadline or process.poll() is not None:
                process.kill()
                raise AssertionError("server did not start: " + log_path.read_text()) from None
            time.sleep(0.1)
    yield url
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) "
                    "to run browser tests")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


class ConsoleWatch:
    """Every console error and uncaught exception of a page, with the URL it happened on."""

    def __init__(self, page):
        self.errors = []
        page.on("console", lambda message: message.type == "error" and self.errors.append(
            f"{page.url}: {message.text}"))
        page.on("pageerror", lambda error: self.errors.append(f"{page.url}: uncaught {error}"))

    def assert_clean(self):
        assert self.errors == []

    def assert_clean_except_status(self, status):
        """Only the browser's own note that a resource answered `status` (an expected error page)."""
        assert all(f"status of {status}" in error for error in self.errors), self.errors


@pytest.fixture
def page(browser, server, tmp_path):
    context = browser.new_context(base_url=server, accept_downloads=True, viewport={"width": 1200, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    page.console = ConsoleWatch(page)
    yield page
    context.close()


def images_on_disk(tmp_path):
    """Two photo-like files to pick: a PNG and a JPEG, big enough to show a real saving."""
    png = tmp_path / "harbour.png"
    png.write_bytes(encode(photo(480, 320, seed=1), "png"))
    jpeg = tmp_path / "meadow.jpg"
    jpeg.write_bytes(encode(photo(360, 480, seed=2), "jpeg", quality=95))
    return [png, jpeg]


def api_info(server, key):
    return requests.get(server + "/api/v1/info", headers={"X-API-Key": key}, timeout=10)


def test_anonymous_visitor_sees_how_to_start_on_every_page(page, server):
    page.goto("/")
    assert page.get_by_test_id("login-first").is_visible()
    assert page.locator("#dropzone").count() == 0
    page.get_by_role("link", name="Create an account").click()
    page.wait_for_url("**/signup")
    page.goto("/docs")
    assert page.get_by_test_id("base-url").inner_text() == server
    assert f"{server}/api/v1/info" in page.locator("#ex-info").inner_text()
    page.goto("/login")
    page.goto("/dashboard")
    page.wait_for_url("**/login?next=/dashboard")
    page.console.assert_clean()


def test_a_person_signs_up_compresses_two_images_rotates_the_key_and_logs_out(page, server, tmp_path):
    # Sign up: the full key is shown once, and it works against the API.
    page.goto("/signup")
    page.get_by_label("Email").fill("ada@example.org")
    page.get_by_label("Password").fill("correct horse battery")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/welcome")
    key = page.get_by_test_id("new-key").inner_text().strip()
    assert KEY.match(key)
    assert api_info(server, key).status_code == 200
    page.reload()  # post/redirect/get: the key is shown once, and a reload signs up nobody
    page.wait_for_url("**/dashboard")

    # Dashboard: only the prefix; set the Allowed Domain, validated and normalised.
    assert page.get_by_test_id("key-prefix").inner_text() == key[:12] + "…"
    assert key not in page.content()
    page.get_by_test_id("domain-input").fill("  Images.Example.COM. ")
    page.get_by_test_id("save-domain").click()
    page.wait_for_url("**/dashboard")
    assert page.get_by_test_id("current-domain").inner_text() == "images.example.com"

    # Compressor: two images at once, to WebP under 40KB; both show the comparison.
    page.get_by_role("link", name="Compress", exact=True).click()
    page.wait_for_url(server + "/")
    assert page.get_by_test_id("quota-remaining").inner_text() == "100"
    page.get_by_test_id("output").select_option("webp")
    page.locator("label:has([data-testid=target-size-mode])").click()
    page.get_by_test_id("target-number").fill("40")
    page.get_by_test_id("file-input").set_input_files(images_on_disk(tmp_path))
    done = page.locator("[data-testid=result].done .compare:not([hidden])")
    done.nth(1).wait_for(state="visible", timeout=90_000)
    assert page.locator("[data-testid=result].failed").count() == 0
    assert page.get_by_test_id("quota-remaining").inner_text() == "98"  # the lowest count, whichever answered last
    for card in page.locator("[data-testid=result]").all():
        for image in (card.locator(".compare-after"), card.locator(".compare-before-img")):
            assert image.evaluate("img => img.complete && img.naturalWidth > 0")
        assert re.match(r"^[−+]\d+%$", card.get_by_test_id("saving").inner_text())
        assert "WEBP" in card.locator(".sizes").inner_text()
        assert card.get_by_test_id("settings").inner_text() == "Asked: at most 40 KB · WebP"
        assert QUALITY.match(card.get_by_test_id("quality").inner_text())
    names = sorted(page.locator(".result-name").all_inner_texts())
    assert names == ["harbour.png", "meadow.jpg"]

    # The slider moves the split between original and compressed.
    card = page.locator("[data-testid=result]").first
    card.locator(".compare-range").fill("20")
    assert card.locator(".compare-before").evaluate("e => e.style.clipPath") == "inset(0px 80% 0px 0px)"

    # Each result downloads, and all of them as one zip.
    with page.expect_download() as download_info:
        card.locator(".result-download").click()
    assert download_info.value.suggested_filename.endswith(".webp")
    assert os.path.getsize(download_info.value.path()) <= 40 * 1024
    assert page.get_by_test_id("results-summary").inner_text().startswith("2 images")
    with page.expect_download() as zip_info:
        page.get_by_test_id("download-all").click()
    assert zip_info.value.suggested_filename == "imgsmaller-results.zip"

    # The docs carry this server's URL and the key's prefix, ready to paste.
    page.get_by_role("link", name="API docs").first.click()
    page.wait_for_url("**/docs")
    assert page.get_by_test_id("docs-key-prefix").inner_text() == key[:12]
    assert f"{server}/api/v1/compress" in page.locator("#ex-multipart").inner_text()
    assert "https://images.example.com/" in page.locator("#ex-url").inner_text()

    # The Dashboard lists both jobs with their downloads and today's usage.
    page.goto("/dashboard")
    assert page.locator("[data-testid=jobs] tbody tr").count() == 2
    assert page.locator("[data-testid=jobs] a", has_text="Download").count() == 2
    assert page.get_by_test_id("usage-today").inner_text().startswith("2 of 100")
    assert page.locator("[data-testid=usage-chart] rect").count() == 30

    # Rotate the key, after confirming: the new one is shown once, the old one fails at once.
    page.get_by_test_id("rotate-key").click()
    page.get_by_test_id("rotate-key-confirm").click()
    new_key = page.get_by_test_id("new-key").inner_text().strip()
    assert KEY.match(new_key) and new_key != key
    assert page.get_by_test_id("key-prefix").inner_text() == new_key[:12] + "…"
    assert api_info(server, key).status_code == 401
    assert api_info(server, new_key).status_code == 200
    # Reloading shows the page again, without the key, and rotates nothing.
    page.reload()
    assert page.get_by_test_id("new-key").count() == 0 and new_key not in page.content()
    assert page.get_by_test_id("key-prefix").inner_text() == new_key[:12] + "…"
    assert api_info(server, new_key).status_code == 200

    # Log out: the Dashboard is closed again.
    page.get_by_test_id("logout").click()
    page.wait_for_url(server + "/")
    assert page.get_by_test_id("login-first").is_visible()
    page.goto("/dashboard")
    page.wait_for_url("**/login?next=/dashboard")
    page.console.assert_clean()


def sign_up_in_browser(page, email):
    page.goto("/signup")
    page.get_by_label("Email").fill(email)
    page.get_by_label("Password").fill("long enough password")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/welcome")


def assert_fits(page, path):
    widths = page.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
    assert widths[1] == PHONE["width"]
    assert widths[0] <= widths[1], f"{path} scrolls sideways at {widths[1]} px: {widths[0]} px wide"


def test_every_page_fits_a_phone_screen_logged_out_and_in(browser, server, tmp_path):
    # Not is_mobile: a mobile layout viewport widens to fit the content and would hide the overflow.
    context = browser.new_context(base_url=server, viewport=PHONE)
    page = context.new_page()
    page.console = ConsoleWatch(page)
    for path in ["/", "/docs", "/login", "/signup", "/no-such-page"]:
        page.goto(path)
        assert_fits(page, path)
    sign_up_in_browser(page, "phone@example.org")
    assert_fits(page, "/welcome")
    page.goto("/")
    page.get_by_test_id("file-input").set_input_files(images_on_disk(tmp_path))
    page.locator("[data-testid=result].done .compare:not([hidden])").nth(1).wait_for(timeout=90_000)
    assert_fits(page, "/ with two results")
    page.get_by_test_id("zoom-open").first.click()
    assert_fits(page, "/ with the 1:1 view open")
    page.goto("/dashboard")
    assert_fits(page, "/dashboard")
    # The Allowed Domain input gets the card's width; the jobs table scrolls inside its own box, with a hint.
    card_width = page.locator("section[aria-labelledby=domain-title]").bounding_box()["width"]
    assert page.get_by_test_id("domain-input").bounding_box()["width"] > card_width * 0.75
    scroller = page.locator(".table-scroll")
    assert scroller.evaluate("e => e.scrollWidth > e.clientWidth")
    assert page.locator(".scroll-hint").is_visible()
    # The chart's day labels are text of a legible size, not shrunk with the drawing.
    for label in page.locator(".chart-labels span").all():
        assert float(label.evaluate("e => getComputedStyle(e).fontSize")[:-2]) >= 12
    for path in ["/docs", "/no-such-page"]:
        page.goto(path)
        assert_fits(page, path + " (logged in)")
    page.console.assert_clean_except_status(404)
    context.close()


def test_an_unknown_page_is_an_html_page_in_the_sites_style(page, server):
    response = page.goto("/no-such-page")
    assert response.status == 404
    assert page.get_by_test_id("error-page").is_visible()
    assert page.get_by_role("heading", name="Page not found").is_visible()
    page.get_by_role("link", name="Back to ImgSmaller").click()
    page.wait_for_url(server + "/")
    api = requests.get(server + "/no-such-page", timeout=10)  # what curl and scripts get: the contract's JSON
    assert api.status_code == 404 and api.headers["Content-Type"] == "application/json"
    assert list(api.json()) == ["message"]
    page.console.assert_clean_except_status(404)


def test_the_compressor_shows_warnings_an_expired_download_and_clears(page, server, server_dir, tmp_path):
    sign_up_in_browser(page, "cards@example.org")
    page.goto("/")
    # A newer server's warnings are shown in the card, word for word.
    warning = "PNG is lossless: this photo is 4.6× larger as PNG than as its JPEG upload; WebP or AVIF keep it small."

    def add_warning(route):
        response = route.fetch()
        body = response.json()
        if body.get("status") == "done":
            body["warnings"] = [warning]
        route.fulfill(response=response, json=body)

    page.route("**/result/*", add_warning)
    page.get_by_test_id("file-input").set_input_files(images_on_disk(tmp_path)[:1])
    card = page.locator("[data-testid=result].done")
    card.locator(".compare:not([hidden])").wait_for(timeout=90_000)
    assert card.get_by_test_id("warnings").inner_text() == warning
    assert card.get_by_test_id("settings").inner_text() == "Asked: Auto (looks the same) · Same as input"
    # 1:1: both pictures at the original's own pixel size, one at a time.
    card.get_by_test_id("zoom-open").click()
    zoom = card.get_by_test_id("zoom")
    assert zoom.is_visible() and card.locator(".compare").is_hidden()
    assert zoom.locator(".zoom-result").evaluate("img => img.getBoundingClientRect().width") == 480
    zoom.get_by_role("button", name="Original").click()
    assert zoom.locator(".zoom-original").is_visible() and zoom.locator(".zoom-result").is_hidden()
    zoom.get_by_role("button", name="Close").click()
    assert card.locator(".compare").is_visible()
    # The result expires: Download says so in the card, and the page stays.
    image_id = card.get_by_test_id("download").get_attribute("href").split("/download/")[1].split("?")[0]
    with sqlite3.connect(server_dir / "imgsmaller.sqlite3") as db:
        db.execute("UPDATE jobs SET expires_at = '2000-01-01T00:00:00Z' WHERE id = ?", (int(image_id),))
    card.get_by_test_id("download").click()
    error = card.locator(".result-error")
    error.wait_for()
    assert error.inner_text() == "This result has expired and was deleted."
    assert page.url == server + "/" and page.locator("[data-testid=result]").count() == 1
    # Clear empties the results.
    page.get_by_test_id("clear-results").click()
    assert page.locator("[data-testid=result]").count() == 0
    assert page.locator("#results-bar").is_hidden()
    page.console.assert_clean_except_status(410)


def test_the_quota_shows_the_lowest_count_when_parallel_uploads_answer_out_of_order(page, server, tmp_path):
    """Two uploads at once: the one answered "98 left" arrives before the one answered "99 left"."""
    sign_up_in_browser(page, "race@example.org")
    page.goto("/")
    held = []

    def answer_in_reverse_order(route):
        # Playwright cannot pass a picked file's bytes on (route.fetch), so the two 202s are the server's
        # shape with made-up keys; what matters here is only the order they arrive in.
        held.append(route)
        if len(held) == 2:
            for remaining, waiting in ((98, held[1]), (99, held[0])):
                waiting.fulfill(status=202, json={"queued": True, "progress_key": f"race{remaining}",
                                                  "result_url": f"/result/race{remaining}", "image_id": remaining,
                                                  "remaining_today": remaining})

    page.route("**/app/compress", answer_in_reverse_order)
    page.get_by_test_id("file-input").set_input_files(images_on_disk(tmp_path))
    page.locator("[data-testid=result].failed").nth(1).wait_for()  # the made-up keys are unknown: 404
    assert len(held) == 2
    assert page.get_by_test_id("quota-remaining").inner_text() == "98"
    page.console.assert_clean_except_status(404)


def test_a_returning_person_logs_in_and_lands_where_they_were_going(page, server):
    requests_session = requests.Session()
    signup = requests_session.get(server + "/signup", timeout=10)
    token = re.search(r'name="csrf_token" value="([^"]+)"', signup.text).group(1)
    requests_session.post(server + "/signup", data={"email": "grace@example.org", "password": "hopper1906",
                                                    "csrf_token": token}, timeout=10)
    page.goto("/docs")
    page.goto("/dashboard")
    page.wait_for_url("**/login?next=/dashboard")
    page.get_by_label("Email").fill("grace@example.org")
    page.get_by_label("Password").fill("hopper1906")
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url("**/dashboard")
    assert page.get_by_test_id("user-email").inner_text() == "grace@example.org"
    page.console.assert_clean()


def test_dropped_files_are_compressed_and_a_bad_one_says_why(page, server, tmp_path):
    page.goto("/signup")
    page.get_by_label("Email").fill("linus@example.org")
    page.get_by_label("Password").fill("penguins rule")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/welcome")
    page.goto("/")
    good = encode(photo(200, 150, seed=3), "png")
    # Drop one image and one text file, the way a person drags them from a file manager.
    page.evaluate(
        """([good]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(good)], "drop.png", {type: "image/png"}));
            transfer.items.add(new File(["just some notes"], "notes.txt", {type: "text/plain"}));
            const zone = document.getElementById("dropzone");
            zone.dispatchEvent(new DragEvent("dragover", {dataTransfer: transfer, bubbles: true, cancelable: true}));
            zone.dispatchEvent(new DragEvent("drop", {dataTransfer: transfer, bubbles: true, cancelable: true}));
        }""",
        [list(good)],
    )
    page.locator("[data-testid=result].done .compare:not([hidden])").wait_for(timeout=60_000)
    failed = page.locator("[data-testid=result].failed")
    failed.wait_for()
    assert failed.locator(".result-name").inner_text() == "notes.txt"
    assert "supported image" in failed.locator(".result-error").inner_text()
    assert page.get_by_test_id("quota-remaining").inner_text() == "99"  # the refused file cost nothing
    # A screenshot pasted from the clipboard goes the same way.
    page.evaluate(
        """([good]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(good)], "image.png", {type: "image/png"}));
            document.dispatchEvent(new ClipboardEvent("paste",
                {clipboardData: transfer, bubbles: true, cancelable: true}));
        }""",
        [list(good)],
    )
    page.locator("[data-testid=result].done .compare:not([hidden])").nth(1).wait_for(timeout=60_000)
    assert page.locator(".result-name").first.inner_text() == "image.png"
    # The browser reports the 415 answer itself as a failed resource; nothing else may appear.
    assert all("status of 415" in error for error in page.console.errors), page.console.errors


@pytest.mark.skipif(not (shutil.which("bash") and shutil.which("curl") and shutil.which("jq")),
                    reason="the docs' examples need bash, curl and jq")
def test_the_curl_examples_on_the_docs_page_work_when_pasted_into_a_shell(page, server, tmp_path):
    page.goto("/signup")
    page.get_by_label("Email").fill("shell@example.org")
    page.get_by_label("Password").fill("bourne again")
    page.get_by_role("button", name="Sign up").click()
    page.wait_for_url("**/welcome")
    key = page.get_by_test_id("new-key").inner_text().strip()
    (tmp_path / "photo.jpg").write_bytes(encode(photo(640, 480, seed=4), "jpeg", quality=95))
    (tmp_path / "logo.png").write_bytes(encode(photo(120, 90, alpha=True, seed=5), "png"))
    page.goto("/docs")

    def run(example, replace=()):
        script = page.locator(f"#ex-{example}").inner_text()
        for old, new in replace:
            script = script.replace(old, new)
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
                                text=True, timeout=120, env={**os.environ, "IMGSMALLER_API_KEY": key})
        assert result.returncode == 0, (script, result.stderr)
        return result.stdout

    assert '"remaining_today":' in run("info")
    queued = json.loads(run("multipart"))
    assert queued["queued"] is True
    assert json.loads(run("base64"))["queued"] is True
    run("quick")
    assert 0 < os.path.getsize(tmp_path / "photo-small.webp") <= 200 * 1024
    deadline = time.monotonic() + 60
    while (result := json.loads(run("result", [("PROGRESS_KEY", queued["progress_key"])])))["status"] == "processing":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    assert result["status"] == "done"
    run("download", [("12345", str(result["image_id"]))])
    assert (tmp_path / f"photo-{result['image_id']}.webp").stat().st_size == result["bytes"]
    page.console.assert_clean()
