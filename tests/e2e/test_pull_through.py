"""``hareg serve`` with a ``pullThrough`` section: the configuration wired to a
real upstream (distribution 2.8 with htpasswd), pulled with skopeo; a password
file that cannot be read stops start-up naming the field."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from upstream_fixtures import distribution, push_image

from .hareg_process import Launcher
from .test_podman import configure

TRACEBACK = "Traceback (most recent call last)"
PASSWORD = "upstream-s3cret"

pytestmark = pytest.mark.skipif(
    not (shutil.which("docker-registry") and shutil.which("skopeo")),
    reason="docker-registry and skopeo are needed",
)


def _config(tmp_path: Path, remote: str, password_file: Path) -> list[str]:
    path = tmp_path / "hareg.yaml"
    path.write_text(
        "pullThrough:\n"
        "  - prefix: mirror\n"
        f"    remote: {remote}\n"
        "    username: puller\n"
        f"    passwordFile: {password_file}\n"
        "    ttl: 1m\n"
    )
    return ["--config", str(path)]


def test_serve_pulls_through_an_authenticated_upstream(hareg_launcher: Launcher, tmp_path: Path) -> None:
    with distribution(tmp_path / "upstream", ("puller", PASSWORD)) as upstream:
        image = asyncio.run(push_image(upstream.url, "lib/app", "v1", "e2e", upstream.auth, layer_size=5000))
        secret = tmp_path / "password"
        secret.write_text(PASSWORD + "\n")
        server = hareg_launcher(tmp_path / "data", extra_args=_config(tmp_path, upstream.url, secret))
        out = subprocess.run(
            [
                "skopeo",
                "--insecure-policy",
                "inspect",
                "--tls-verify=false",
                f"docker://{server.host_port}/mirror/lib/app:v1",
            ],
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["Digest"] == image.digest
        if all(shutil.which(tool) for tool in ("podman", "buildah", "unshare")):
            # podman pulls the image through the cache (its layers unpacked into its storage).
            (tmp_path / "podman").mkdir()
            podman = configure(tmp_path / "podman", server.host_port)
            podman.podman(
                "pull", "--tls-verify=false", *podman.policy, f"{server.host_port}/mirror/lib/app:v1"
            )
            assert podman.inspect(f"{server.host_port}/mirror/lib/app:v1")["Digest"] == image.digest
        assert PASSWORD not in server.stderr()


def test_an_unreadable_password_file_stops_start_up(hareg_launcher: Launcher, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-password"
    server = hareg_launcher(
        tmp_path / "data",
        extra_args=_config(tmp_path, "https://registry.example.com", missing),
        wait_ready=False,
    )
    assert server.wait_exit() == 1
    stderr = server.stderr()
    assert f"pullThrough[0].passwordFile: cannot read {missing}" in stderr, stderr
    assert TRACEBACK not in stderr
