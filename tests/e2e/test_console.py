"""The web console (hareg/http/console.py, console_assets/) in a real headless
Chromium against a real ``hareg serve`` with authentication, after pushes
with skopeo.

One registry and one browser for the module; the tests run in file order and
build on each other (pushes, then the pages, then a rollback, then other
roles).  Users: ``ada`` (admin on ``team/*``), ``vera`` (viewer on
``team/*``), ``root`` (cluster-admin); ``anonymous`` may pull ``public/*``.
Each page's screenshot is written under the module's directory
(tests/browser.py: ``Screenshots``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browser import (
    Screenshots,
    dump_dom,
    low_contrast,
    require_chromium,
    severe_logs,
    start_browser,
    text_of,
    wait_until,
)

from .auth_setup import password_of, serving_with_auth
from .hareg_process import HaregServer

pytestmark = pytest.mark.skipif(
    not (shutil.which("skopeo") and shutil.which("umoci")), reason="skopeo and umoci are needed"
)

TOOL_TIMEOUT = 120
MANIFEST_TYPES = "application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json"
BINDINGS = [
    {"subject": "ada", "role": "admin", "repositories": ["team/*"]},
    {"subject": "vera", "role": "viewer", "repositories": ["team/*"]},
    {"subject": "root", "role": "cluster-admin"},
    {"subject": "anonymous", "role": "viewer", "repositories": ["public/*"]},
]
MANY = 10_000  # tags of team/many
TAGS_PER_PUT = 10  # tags given to one manifest PUT (?tag=...)


def run(*cmd: str | Path) -> str:
    proc = subprocess.run(
        [str(c) for c in cmd], capture_output=True, text=True, timeout=TOOL_TIMEOUT, stdin=subprocess.DEVNULL
    )
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stderr}"
    return proc.stdout


def basic(user: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password_of(user)}".encode()).decode()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def request(
    url: str,
    user: str | None,
    *,
    method: str = "GET",
    data: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """``user``'s Basic credentials, or none (a bearer token in ``headers``)."""
    auth = {"Authorization": basic(user)} if user else {}
    req = urllib.request.Request(url, data=data, method=method, headers={**auth, **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def bearer(base: str, user: str, scope: str) -> dict[str, str]:
    """A token for ``scope`` (one bcrypt check, not one per request)."""
    status, _, body = request(f"{base}/auth/token?service=hareg&scope={scope}", user)
    assert status == 200, body
    return {"Authorization": f"Bearer {json.loads(body)['token']}"}


@dataclass
class Console:
    server: HaregServer
    driver: Any
    shots: Screenshots
    root: Path
    digests: dict[str, str]  # image name (one, two, three) -> manifest digest

    @property
    def url(self) -> str:
        return self.server.url

    def open(self, path: str) -> None:
        self.driver.get(self.url + path)

    def skopeo_push(self, image: str, ref: str, user: str = "ada") -> None:
        run(
            "skopeo", "--insecure-policy", "copy", "--dest-tls-verify=false",
            "--dest-creds", f"{user}:{password_of(user)}",
            f"oci:{self.root / 'layout'}:{image}", f"docker://{self.server.host_port}/{ref}",
        )  # fmt: skip

    def skopeo_digest(self, ref: str, user: str = "ada") -> str:
        raw = run(
            "skopeo", "--insecure-policy", "inspect", "--raw", "--tls-verify=false",
            "--creds", f"{user}:{password_of(user)}", f"docker://{self.server.host_port}/{ref}",
        )  # fmt: skip
        return sha256(raw.encode())

    def history(self, repo: str, tag: str) -> list[dict[str, Any]]:
        status, _, body = request(f"{self.url}/hareg/v1/repositories/{repo}/tags/{tag}/history", "ada")
        assert status == 200, body
        entries: list[dict[str, Any]] = json.loads(body)
        return entries

    def put_blob(self, repo: str, data: bytes, user: str = "ada") -> str:
        digest = sha256(data)
        status, headers, body = request(f"{self.url}/v2/{repo}/blobs/uploads/", user, method="POST", data=b"")
        assert status == 202, body
        location = headers["Location"]
        location = location if location.startswith("http") else self.url + location
        sep = "&" if "?" in location else "?"
        status, _, body = request(f"{location}{sep}digest={digest}", user, method="PUT", data=data)
        assert status == 201, body
        return digest

    def login(self, user: str) -> None:
        from selenium.webdriver.common.by import By
        from selenium.webdriver.common.keys import Keys

        d = self.driver
        # The form shows when a page needs a token the session cannot get (after
        # a reload the password is gone); otherwise log out first.
        wait_until(
            d, lambda d: d.find_elements(By.ID, "username") or d.find_elements(By.ID, "logout"), "a page"
        )
        if not d.find_elements(By.ID, "username"):
            d.find_element(By.ID, "logout").click()
        wait_until(d, lambda d: d.find_elements(By.ID, "username"), "the login form")
        name = d.find_element(By.ID, "username")
        name.clear()
        name.send_keys(user)
        # The keyboard alone: Enter in the password field submits the form.
        d.find_element(By.ID, "password").send_keys(password_of(user), Keys.ENTER)
        wait_until(d, lambda d: f"Logged in as {user}" in text_of(d, "#session"), f"{user} logged in")


@pytest.fixture(scope="module")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    require_chromium()
    root = tmp_path_factory.mktemp("console")
    layout = root / "layout"
    run("umoci", "init", "--layout", layout)
    run("umoci", "new", "--image", f"{layout}:one")
    (root / "hello.txt").write_text("hello from the console test\n")
    run("umoci", "insert", "--image", f"{layout}:one", root / "hello.txt", "/hello.txt")
    for image, label in (("two", "2"), ("three", "3")):
        run("umoci", "config", "--image", f"{layout}:one", "--tag", image, "--config.label", f"build={label}")
    users = ("ada", "vera", "root")
    with serving_with_auth(root, users, BINDINGS) as server:
        driver = start_browser(root / "profile")
        try:
            yield Console(server, driver, Screenshots(root / "screenshots"), root, {})
        finally:
            driver.quit()


def test_pushed_repositories_are_listed(console: Console) -> None:
    from selenium.webdriver.common.by import By

    for image in ("one", "two", "three"):  # three pushes to one tag: three history entries
        console.skopeo_push(image, "team/app:v1")
        console.digests[image] = console.skopeo_digest("team/app:v1")
    console.skopeo_push("one", "team/app:stable")
    console.skopeo_push("one", "team/tools:latest")
    console.skopeo_push("one", "public/app:v1", user="root")
    d = console.driver
    # Before logging in, the console shows what anonymous may see.
    console.open("/console/")
    wait_until(d, lambda d: "public/app" in text_of(d, "#repositories"), "public/app for anonymous")
    assert "team/app" not in text_of(d, "#repositories")
    d.find_element(By.LINK_TEXT, "Log in").click()
    wait_until(d, lambda d: d.find_elements(By.ID, "username"), "the login form")
    console.shots.take(d, "login")
    console.login("ada")
    rows = wait_until(
        d, lambda d: "team/tools" in text_of(d, "#repositories") and text_of(d, "#repositories"), "ada's list"
    )
    assert "team/app" in rows and "public/app" not in rows  # ada's bindings: team/* only
    # Search: a prefix.
    field = d.find_element(By.ID, "repo-filter")
    field.send_keys("team/t")
    field.submit()
    wait_until(
        d,
        lambda d: (
            "team/app" not in text_of(d, "#repositories") and "team/tools" in text_of(d, "#repositories")
        ),
        "the filtered list",
    )
    # Within the page (a reload would forget the password: docs/console.md).
    d.find_element(By.CSS_SELECTOR, "nav a[data-nav='repositories']").click()
    wait_until(d, lambda d: "team/app" in text_of(d, "#repositories"), "the list again")
    console.shots.take(d, "repositories")


def test_the_repository_page_lists_tags_with_digests(console: Console) -> None:
    from selenium.webdriver.common.by import By

    d = console.driver
    d.find_element(By.LINK_TEXT, "team/app").click()
    wait_until(
        d,
        lambda d: (
            "sha256:" in text_of(d, "tr[data-tag='v1']") and "Z" in text_of(d, "tr[data-tag='v1'] time")
        ),
        "v1's details",
    )
    v1 = text_of(d, "tr[data-tag='v1']")
    assert console.digests["three"][:19] in v1
    assert "application/vnd.oci.image.manifest.v1+json" in v1
    assert "stable" in text_of(d, "#tags")
    console.shots.take(d, "repository")


def test_the_tag_page_shows_every_history_entry(console: Console) -> None:
    from selenium.webdriver.common.by import By

    d = console.driver
    d.find_element(By.LINK_TEXT, "v1").click()
    entries = console.history("team/app", "v1")
    assert len(entries) == 3
    wait_until(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == 3, "three entries")
    table = text_of(d, "#history")
    for entry in entries:
        assert entry["new"] in table and entry["time"] in table
    assert console.digests["three"] in text_of(d, "#current-digest")
    pull = d.find_element(By.CSS_SELECTOR, "input[aria-label='Pull command by digest']").get_attribute(
        "value"
    )
    assert pull == f"podman pull {console.server.host_port}/team/app@{console.digests['three']}"
    # A deep link survives a reload (the token is kept for the session).
    d.refresh()
    wait_until(
        d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == 3, "the reloaded page"
    )
    console.shots.take(d, "tag")


def tab_to(d: Any, css: str, most: int = 100) -> bool:
    """Press Tab until the element matching ``css`` has the focus."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    for _ in range(most):
        ActionChains(d).send_keys(Keys.TAB).perform()
        if d.execute_script("return document.activeElement.matches(arguments[0])", css):
            return True
    return False


def test_a_rollback_asks_first_then_moves_the_tag(console: Console) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    d = console.driver
    first = console.digests["one"]
    button = f"button.rollback[data-digest='{first}']"
    # With the keyboard alone: Tab to the button, Enter opens the dialog,
    # Escape cancels it and the focus returns to the button; nothing moves.
    assert tab_to(d, button), "Tab never reached the rollback button"
    ActionChains(d).send_keys(Keys.ENTER).perform()
    wait_until(d, lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is not None, "the dialog")
    assert d.execute_script("return document.getElementById('confirm').contains(document.activeElement)")
    assert first in text_of(d, "#confirm-text")
    console.shots.take(d, "rollback-confirm")
    ActionChains(d).send_keys(Keys.ESCAPE).perform()
    wait_until(d, lambda d: "cancelled" in text_of(d, "#rollback-status"), "the cancellation")
    assert d.execute_script("return document.activeElement.matches(arguments[0])", button)
    assert console.skopeo_digest("team/app:v1") == console.digests["three"]
    # Confirmed: the tag moves, as skopeo sees it, and the history records it.
    d.find_element(By.CSS_SELECTOR, button).click()
    wait_until(d, lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is not None, "the dialog")
    d.find_element(By.ID, "confirm-ok").click()
    wait_until(d, lambda d: f"now points to {first}" in text_of(d, "#rollback-status"), "the rollback")
    assert console.skopeo_digest("team/app:v1") == first
    entries = console.history("team/app", "v1")
    assert (entries[-1]["action"], entries[-1]["new"]) == ("rollback", first)
    wait_until(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == 4, "four entries")
    assert first in text_of(d, "#current-digest")


def test_the_manifest_page_shows_layers_config_annotations_and_referrers(console: Console) -> None:
    from selenium.webdriver.common.by import By

    # A signature-like artifact that refers to the image, pushed through the API.
    subject = console.digests["one"]
    status, _, raw = request(
        f"{console.url}/v2/team/app/manifests/{subject}", "ada", headers={"Accept": MANIFEST_TYPES}
    )
    assert status == 200
    empty = console.put_blob("team/app", b"{}")
    payload = b"a signature, for the console test"
    artifact = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "artifactType": "application/vnd.example.signature",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": empty, "size": 2},
        "layers": [
            {
                "mediaType": "application/octet-stream",
                "digest": console.put_blob("team/app", payload),
                "size": len(payload),
            }
        ],
        "subject": {
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": subject,
            "size": len(raw),
        },
        "annotations": {"org.example.signed-by": "the console test"},
    }
    body = json.dumps(artifact).encode()
    status, _, answer = request(
        f"{console.url}/v2/team/app/manifests/{sha256(body)}",
        "ada",
        method="PUT",
        data=body,
        headers={"Content-Type": "application/vnd.oci.image.manifest.v1+json"},
    )
    assert status == 201, answer
    d = console.driver
    d.find_element(By.CSS_SELECTOR, "#current-digest").click()
    wait_until(d, lambda d: "application/vnd.example.signature" in text_of(d, "#referrers"), "the referrer")
    layers = json.loads(raw)["layers"]
    wait_until(
        d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#layers tbody tr")) == len(layers), "the layers"
    )
    for layer in layers:
        assert layer["digest"] in text_of(d, "#layers")
    wait_until(d, lambda d: "Platform" in text_of(d, "#config-details"), "the config's details")
    console.shots.take(d, "manifest")
    assert low_contrast(d) == []
    # The artifact's own page: its annotations and its subject.
    d.find_element(By.CSS_SELECTOR, "#referrers a").click()
    wait_until(d, lambda d: "org.example.signed-by" in text_of(d, "#annotations"), "the annotations")
    assert subject in text_of(d, "main")


def test_an_index_shows_its_platforms(console: Console) -> None:
    from selenium.webdriver.common.by import By

    children = []
    for image, arch in (("one", "amd64"), ("two", "arm64")):
        digest = console.digests[image]
        status, _, raw = request(
            f"{console.url}/v2/team/app/manifests/{digest}", "ada", headers={"Accept": MANIFEST_TYPES}
        )
        assert status == 200
        children.append(
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": digest,
                "size": len(raw),
                "platform": {"os": "linux", "architecture": arch},
            }
        )
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": children,
    }
    status, _, answer = request(
        f"{console.url}/v2/team/app/manifests/multi",
        "ada",
        method="PUT",
        data=json.dumps(index).encode(),
        headers={"Content-Type": "application/vnd.oci.image.index.v1+json"},
    )
    assert status == 201, answer
    d = console.driver
    d.find_element(By.CSS_SELECTOR, ".crumbs a[href='/console/repositories/team/app']").click()
    row = "tr[data-tag='multi']"
    wait_until(d, lambda d: "linux/amd64, linux/arm64" in text_of(d, row), "the index's platforms")
    assert "2 manifests" in text_of(d, row)
    d.find_element(By.CSS_SELECTOR, f"{row} a.digest").click()
    wait_until(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#children tbody tr")) == 2, "the children")
    assert "linux/arm64" in text_of(d, "#children")
    console.shots.take(d, "index")


def test_ten_thousand_tags_page_fast(console: Console) -> None:
    from selenium.webdriver.common.by import By

    # 10,000 tags on 1,000 manifests (10 tags a PUT), pushed through the API.
    status, _, raw = request(
        f"{console.url}/v2/team/app/manifests/stable", "ada", headers={"Accept": MANIFEST_TYPES}
    )
    assert status == 200
    console.skopeo_push("one", "team/many:zseed")
    doc = json.loads(raw)
    auth = bearer(console.url, "ada", "repository:team/many:pull,push")

    def put(start: int) -> None:
        body = json.dumps({**doc, "annotations": {"n": str(start)}}).encode()
        tags = "&".join(f"tag=t{n:05d}" for n in range(start, start + TAGS_PER_PUT))
        status, _, answer = request(
            f"{console.url}/v2/team/many/manifests/{sha256(body)}?{tags}",
            None,
            method="PUT",
            data=body,
            headers={**auth, "Content-Type": "application/vnd.oci.image.manifest.v1+json"},
        )
        assert status == 201, answer

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(put, range(0, MANY, TAGS_PER_PUT)))
    d = console.driver
    console.open("/console/repositories/team/many")
    console.login("ada")  # a reload, and a repository the session has no token for yet
    wait_until(d, lambda d: "sha256:" in text_of(d, "tr[data-tag='t00049']"), "the first page")
    began = time.monotonic()
    d.refresh()  # the page alone, timed, now that the token is kept
    wait_until(d, lambda d: "sha256:" in text_of(d, "tr[data-tag='t00049']"), "the first page's details")
    first_page = time.monotonic() - began
    assert len(d.find_elements(By.CSS_SELECTOR, "#tags tbody tr")) == 50
    d.find_element(By.ID, "next-page").click()
    wait_until(d, lambda d: d.find_elements(By.CSS_SELECTOR, "tr[data-tag='t00050']"), "the second page")
    # A prefix jumps into the middle: one listing request, not 9,000 tags read.
    field = d.find_element(By.ID, "tag-filter")
    field.send_keys("t0999")
    field.submit()
    wait_until(d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#tags tbody tr")) == 10, "t09990..t09999")
    assert "t09999" in text_of(d, "#tags") and not d.find_elements(By.ID, "next-page")
    listings = d.execute_script(
        "return performance.getEntriesByType('resource').map(e => e.name).filter(n => n.includes('/tags/list'))"
    )
    assert listings and all("n=50" in url for url in listings), listings
    console.shots.take(d, "many-tags")
    # Generous for a busy machine; the page's cost does not grow with the tags.
    assert first_page < 30, f"the first page of {MANY} tags took {first_page:.1f}s"


def test_a_viewer_sees_no_rollback_and_no_cluster_page(console: Console) -> None:
    from selenium.webdriver.common.by import By

    d = console.driver
    console.login("vera")
    wait_until(d, lambda d: "team/app" in text_of(d, "#repositories"), "vera's list")
    d.find_element(By.LINK_TEXT, "team/app").click()
    wait_until(d, lambda d: d.find_elements(By.LINK_TEXT, "v1"), "vera's tags")
    d.find_element(By.LINK_TEXT, "v1").click()
    wait_until(
        d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == 4, "vera's tag page"
    )
    assert not d.find_elements(By.CSS_SELECTOR, "button.rollback")
    assert "admin role" in text_of(d, "#no-rollback")
    assert not d.find_element(By.ID, "nav-cluster").is_displayed()
    console.shots.take(d, "viewer-tag")


def test_readable_on_a_phone_and_labelled(console: Console) -> None:
    from selenium.webdriver.common.by import By

    d = console.driver
    d.set_window_size(390, 844)
    try:
        console.open("/console/repositories/team/app/tags/v1")
        wait_until(
            d, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#history tbody tr")) == 4, "the tag page"
        )
        # Nothing wider than the screen but the tables, which scroll in their own box.
        assert d.execute_script("return document.documentElement.scrollWidth <= window.innerWidth + 1")
        unlabelled = d.execute_script(
            "return [...document.querySelectorAll('input, button')]"
            ".filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.innerText.trim())"
            ".map(e => e.outerHTML)"
        )
        assert unlabelled == []
        assert low_contrast(d) == []
        console.shots.take(d, "phone-tag")
    finally:
        d.set_window_size(1280, 900)
    script_errors = [e for e in severe_logs(d) if "Failed to load resource" not in e["message"]]
    assert script_errors == []


def test_the_cluster_page_for_a_cluster_admin(console: Console) -> None:
    from selenium.webdriver.common.by import By

    d = console.driver
    console.login("root")
    d.find_element(By.ID, "nav-cluster").click()
    wait_until(d, lambda d: "Available" in text_of(d, "#conditions"), "the conditions")
    wait_until(d, lambda d: "up" in text_of(d, "#replicas"), "this replica, up")
    assert "healthy" in text_of(d, "#etcd")
    assert "read" in text_of(d, "#queues") and "write" in text_of(d, "#queues")
    console.shots.take(d, "cluster-single")
    assert low_contrast(d) == []
    d.find_element(By.ID, "read-only-toggle").click()
    wait_until(d, lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is not None, "the dialog")
    d.find_element(By.ID, "confirm-ok").click()
    wait_until(d, lambda d: "read-only" in text_of(d, "#read-only-state"), "read-only")
    status, _, body = request(f"{console.url}/hareg/v1/read-only", "root")
    assert status == 200 and json.loads(body)["readOnly"] is True
    d.find_element(By.ID, "read-only-toggle").click()
    wait_until(d, lambda d: d.find_element(By.ID, "confirm").get_attribute("open") is not None, "the dialog")
    d.find_element(By.ID, "confirm-ok").click()
    wait_until(d, lambda d: "writable" in text_of(d, "#read-only-state"), "writable again")
    assert json.loads(request(f"{console.url}/hareg/v1/read-only", "root")[2])["readOnly"] is False


def test_dump_dom_of_a_tag_page_shows_the_digests(console: Console) -> None:
    # Anonymous may pull public/*: the page fetches its token and renders.
    entries = request(f"{console.url}/hareg/v1/repositories/public/app/tags/v1/history", "root")[2]
    digests = {e["new"] for e in json.loads(entries)}
    dom = dump_dom(f"{console.url}/console/repositories/public/app/tags/v1", console.root / "dump-profile")
    for digest in digests:
        assert digest in dom, dom[-3000:]
