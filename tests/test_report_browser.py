"""Every report renders in a real browser: headless Chromium, driven through its DevTools protocol over a pipe.

A report passes when every image has loaded (``complete`` with a non-zero ``naturalWidth``), the console shows no
error, and the browser requests nothing but the page itself (no network, no other file).

Needs the Debian package ``chromium`` (or any Chromium/Chrome on the PATH). Without one the tests are skipped,
except on CI (environment variable ``CI`` set), where they fail.
"""

import fcntl
import json
import os
import select
import shutil
import subprocess

import pytest

# the reports rendered are those of breast_crop, mapped for a few steps, as sample SAMPLE
SAMPLE = "breast"
MAPPING_STEPS = 3
BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# A headless browser as root in a container: no sandbox, no GPU, and nothing started in the background.
BROWSER_FLAGS = (
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--remote-debugging-pipe",
)
TIMEOUT_SECONDS = 60
IMAGES_SCRIPT = (
    "JSON.stringify(Array.from(document.images).map("
    "image => ({src: image.src.slice(0, 22), complete: image.complete, width: image.naturalWidth})))"
)


class DevToolsPipe:
    """A Chromium started with ``--remote-debugging-pipe``: commands go in on its fd 3, replies come out of fd 4,
    each a JSON message ended by a NUL byte."""

    def __init__(self, executable: str, profile_dir):
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def on_fds_3_and_4():
            # runs in the child before exec: only system calls, no Python-level locks
            # first out of the way of 3 and 4, which the pipes' own fds might be
            commands = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            replies = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(commands, 3)
            os.dup2(replies, 4)

        self.process = subprocess.Popen(
            [executable, *BROWSER_FLAGS, f"--user-data-dir={profile_dir}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, pass_fds=(3, 4),
            preexec_fn=on_fds_3_and_4,  # noqa: PLW1509  (the test starts no thread)
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def _receive(self) -> dict:
        while b"\0" not in self._buffer:
            ready, _, _ = select.select([self._from_browser], [], [], TIMEOUT_SECONDS)
            if not ready:
                raise TimeoutError(f"no message from the browser in {TIMEOUT_SECONDS} s")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise ConnectionError("the browser closed its DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(self, method: str, session: str | None = None, **params) -> dict:
        """Send a command and return its result; events that arrive meanwhile are kept in ``events``."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._receive()
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, method: str, session: str) -> dict:
        """The first event ``method`` of ``session`` (kept ones first)."""
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                return event
        while True:
            event = self._receive()
            self.events.append(event)
            if event.get("method") == method and event.get("sessionId") == session:
                return event

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (ConnectionError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._to_browser)
        os.close(self._from_browser)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = next(filter(None, map(shutil.which, BROWSERS)), None)
    if executable is None:
        message = "no Chromium on the PATH: apt-get install chromium"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    pipe = DevToolsPipe(executable, tmp_path_factory.mktemp("chromium-profile"))
    yield pipe
    pipe.close()


@pytest.fixture(scope="module")
def reports(make_reference_folder, make_sample_folder, invoke, tmp_path_factory):
    """The three reports, in the layout of `tissuemap run`."""
    results = tmp_path_factory.mktemp("results")
    make_reference_folder(results / "reference")
    make_sample_folder(results / "reference", results / SAMPLE, SAMPLE, MAPPING_STEPS)
    invoke("report", "sample", "--sample", SAMPLE, "--input-dir", results / SAMPLE, "--outdir", results / SAMPLE)
    invoke("report", "reference", "--input-dir", results / "reference", "--outdir", results / "reference")
    invoke("report", "summary", "--input-dir", results, "--outdir", results)
    return {
        "sample": results / SAMPLE / f"{SAMPLE}.report.html",
        "reference": results / "reference" / "reference.report.html",
        "summary": results / "summary.html",
    }


def render(browser: DevToolsPipe, path) -> dict:
    """Open ``path`` in a new tab; return its images, console errors and every URL it requested."""
    target = browser.send("Target.createTarget", url="about:blank")["targetId"]
    session = browser.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    for domain in ("Runtime", "Log", "Page", "Network"):
        browser.send(f"{domain}.enable", session)
    first_event = len(browser.events)
    url = path.resolve().as_uri()
    browser.send("Page.navigate", session, url=url)
    browser.wait_for("Page.loadEventFired", session)
    result = browser.send("Runtime.evaluate", session, expression=IMAGES_SCRIPT, returnByValue=True)
    events = [event for event in browser.events[first_event:] if event.get("sessionId") == session]
    browser.send("Target.closeTarget", targetId=target)
    errors = [event["params"] for event in events if event["method"] == "Runtime.exceptionThrown"
              or (event["method"] == "Runtime.consoleAPICalled" and event["params"]["type"] in ("error", "assert"))
              or (event["method"] == "Log.entryAdded" and event["params"]["entry"]["level"] == "error")]
    requests = [event["params"]["request"]["url"] for event in events if event["method"] == "Network.requestWillBeSent"]
    return {"url": url, "images": json.loads(result["result"]["value"]), "errors": errors, "requests": requests}


@pytest.mark.parametrize("report", ["sample", "reference", "summary"])
def test_report_renders_offline_with_every_image(browser, reports, report):
    page = render(browser, reports[report])
    assert page["images"], "the report shows no image"
    broken = [image for image in page["images"] if not image["complete"] or image["width"] == 0]
    assert not broken, f"images that did not load: {broken}"
    assert all(image["src"].startswith("data:image/") for image in page["images"])
    assert not page["errors"], f"console errors: {page['errors']}"
    assert [url for url in page["requests"] if not url.startswith("data:")] == [page["url"]]


def test_render_sees_broken_images_console_errors_and_requests(browser, tmp_path):
    # the check itself: a page with a corrupt inline image, a missing file and a script error must fail it
    page_path = tmp_path / "broken.html"
    page_path.write_text('<!DOCTYPE html><html><head><link rel="icon" href="data:,"></head><body>'
                         '<img src="data:image/png;base64,AAAA"><img src="missing.png">'
                         '<script>console.error("boom")</script></body></html>')
    page = render(browser, page_path)
    assert [image["width"] for image in page["images"]] == [0, 0]
    assert page["errors"]
    assert (tmp_path / "missing.png").as_uri() in page["requests"]
