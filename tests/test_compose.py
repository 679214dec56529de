"""docker-compose.yml, checked statically (no Docker engine runs here): valid
against the Compose Specification's schema, and the topology the product
promises: 3 etcd members forming one cluster, SeaweedFS, 3 replicas built
from ./Dockerfile sharing one httpSecret and every etcd member, haproxy
checking /readyz on all of them, only haproxy published (on 127.0.0.1), every
image pinned.  And the variant with authentication on
(docker-compose.auth.yml merged over it): every replica runs with
deploy/hareg-auth.yaml and the same htpasswd file and signing key, files
made as its comment says are accepted, and they stay out of git."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import bcrypt
import pytest
import yaml

from hareg.cluster.auth_files import read_auth_files
from hareg.cluster.haproxy import Backend, render_config
from hareg.config.reader import load_config
from hareg.registry.tokens import generate_key_pem
from hareg.server.auth import exposure_problem

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
COMPOSE_AUTH = ROOT / "docker-compose.auth.yml"
SCHEMA = ROOT.parent / "shared" / "schemas" / "compose-spec.json"
HAPROXY_CFG = ROOT / "deploy" / "haproxy.cfg"
HAREG_CONFIG = ROOT / "deploy" / "hareg.yaml"
HAREG_AUTH_CONFIG = ROOT / "deploy" / "hareg-auth.yaml"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return data


@pytest.fixture(scope="module")
def compose_auth() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(COMPOSE_AUTH.read_text())
    return data


def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return dict(compose["services"])


def etcd_members(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        n: s
        for n, s in services(compose).items()
        if str(s.get("image", "")).startswith("quay.io/coreos/etcd:")
    }


def replicas(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {n: s for n, s in services(compose).items() if "build" in s}


def flags(command: list[str] | str) -> dict[str, str]:
    """``--name=value`` / ``-name=value`` / ``--name value`` items of a command."""
    items = shlex.split(command) if isinstance(command, str) else list(command)
    out: dict[str, str] = {}
    for i, item in enumerate(items):
        if not item.startswith("-"):
            continue
        name, sep, value = item.lstrip("-").partition("=")
        if not sep and i + 1 < len(items) and not items[i + 1].startswith("-"):
            value = items[i + 1]
        out[name] = value
    return out


def interpolate(value: str, env: dict[str, str]) -> str:
    """Compose's ``${VAR}``, ``${VAR:-default}`` and ``${VAR:?error}``."""

    def one(m: re.Match[str]) -> str:
        name, op, arg = m.group(1), m.group(2), m.group(3)
        if name in env:
            return env[name]
        if op == ":-":
            return arg or ""
        if op == ":?":
            raise KeyError(f"{name} must be set: {arg}")
        return ""

    return re.sub(
        r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)((?:[^{}]|\{[^{}]*\}|\([^()]*\))*))?\}", one, value
    )


def mount_target(volume: str) -> str:
    return volume.split(":")[1]


def merge_service(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """What ``docker compose -f base -f override`` runs, for the keys the auth
    variant sets: volumes merged by their path in the container, secrets by
    source, environment by name, anything else replaced."""
    merged = dict(base)
    for key, value in override.items():
        if key == "volumes":
            mounts = {mount_target(v): v for v in base.get("volumes", [])}
            mounts.update({mount_target(v): v for v in value})
            merged["volumes"] = list(mounts.values())
        elif key == "secrets":
            named = {(s if isinstance(s, str) else s["source"]): s for s in base.get("secrets", [])}
            named.update({(s if isinstance(s, str) else s["source"]): s for s in value})
            merged["secrets"] = list(named.values())
        elif key == "environment":
            merged["environment"] = {**base.get("environment", {}), **value}
        else:
            merged[key] = value
    return merged


def secret_targets(svc: dict[str, Any]) -> dict[str, str]:
    """Each secret's source and where the container sees it (/run/secrets/NAME by default)."""
    out = {}
    for item in svc.get("secrets", []):
        source = item if isinstance(item, str) else item["source"]
        target = source if isinstance(item, str) else item.get("target", source)
        out[source] = target if target.startswith("/") else f"/run/secrets/{target}"
    return out


def check_schema(document: dict[str, Any]) -> None:
    import json

    import jsonschema

    if not SCHEMA.exists():
        pytest.skip(f"{SCHEMA} not present")
    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(document), key=lambda e: list(e.path))
    assert not errors, "\n".join(f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors)


def test_valid_against_the_compose_spec(compose: dict[str, Any]) -> None:
    check_schema(compose)


def test_auth_variant_valid_against_the_compose_spec(compose_auth: dict[str, Any]) -> None:
    check_schema(compose_auth)


def test_three_etcd_members_form_one_cluster(compose: dict[str, Any]) -> None:
    members = etcd_members(compose)
    assert len(members) == 3
    initial: set[str] = set()
    tokens: set[str] = set()
    peers: dict[str, str] = {}
    for name, svc in members.items():
        assert re.fullmatch(r"quay\.io/coreos/etcd:v3\.4\.\d+", svc["image"]), "etcd 3.4.x (not 3.5.0-3.5.2)"
        f = flags(svc["command"])
        assert f["name"] == name
        assert f["advertise-client-urls"] == f"http://{name}:2379"
        assert f["initial-cluster-state"] == "new"
        peers[f["name"]] = f["initial-advertise-peer-urls"]
        initial.add(f["initial-cluster"])
        tokens.add(f["initial-cluster-token"])
        assert any(":/etcd-data" in v or v.endswith(":" + f["data-dir"]) for v in svc["volumes"]), (
            "data on a volume"
        )
        assert "healthcheck" in svc
    assert len(initial) == 1 and len(tokens) == 1, "every member gets the same --initial-cluster and token"
    (cluster,) = initial
    assert dict(item.split("=", 1) for item in cluster.split(",")) == peers


def test_three_replicas_share_secret_and_every_etcd_member(compose: dict[str, Any]) -> None:
    reps = replicas(compose)
    assert len(reps) == 3
    members = etcd_members(compose)
    client_urls = {flags(s["command"])["advertise-client-urls"] for s in members.values()}
    secrets, names, envs = set(), set(), []
    for name, svc in reps.items():
        build = svc["build"]
        assert build in (".", "./") or (
            build["context"] in (".", "./") and build.get("dockerfile") == "Dockerfile"
        )
        env = svc["environment"]
        envs.append(env)
        secrets.add(env["HAREG_HTTP_SECRET"])
        assert set(env["HAREG_ETCD_ENDPOINTS"].split(",")) == client_urls, "all 3 members"
        f = flags(svc["command"])
        names.add(f["replica"])
        assert f["listen"].endswith(":5000")
        deps = svc["depends_on"]
        for member in members:
            assert deps[member]["condition"] == "service_healthy"
        assert deps["seaweedfs"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(svc["healthcheck"]["test"])
        assert "ports" not in svc, f"{name}: replicas are reached through haproxy only"
        # Listening on 0.0.0.0, a replica advertises http://<host name>:5000 to the others
        # (advertiseURL's default): the host name must be its service name, which resolves.
        assert svc["hostname"] == name
    assert len(secrets) == 1 and next(iter(secrets)), "one shared, non-empty HAREG_HTTP_SECRET"
    assert len(names) == 3
    assert all(e == envs[0] for e in envs), "identical configuration"


def test_replica_configuration_loads(compose: dict[str, Any]) -> None:
    svc = next(iter(replicas(compose).values()))
    shell = {"HAREG_HTTP_SECRET": "x" * 64}
    env = {k: interpolate(str(v), shell) for k, v in svc["environment"].items()}
    mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
    config_path = flags(svc["command"])["config"]
    assert (ROOT / mounts[config_path]).resolve() == HAREG_CONFIG
    config = load_config(HAREG_CONFIG, env)
    assert config.storage.kind == "s3"
    assert config.http_secret == "x" * 64
    assert len(config.etcd.endpoints) == 3
    assert config.disable_redirect, "the object store is not published: no redirects to it"
    weed = services(compose)["seaweedfs"]
    weed_env = {k: interpolate(str(v), shell) for k, v in weed["environment"].items()}
    assert (config.storage.s3.access_key, config.storage.s3.secret_key) == (
        weed_env["AWS_ACCESS_KEY_ID"],
        weed_env["AWS_SECRET_ACCESS_KEY"],
    )
    assert config.storage.s3.bucket == weed_env["S3_BUCKET"]
    endpoint = urlsplit(config.storage.s3.region_endpoint or "")
    assert endpoint.hostname == "seaweedfs" and str(endpoint.port) == flags(weed["command"])["s3.port"]
    with pytest.raises(KeyError, match="HAREG_HTTP_SECRET"):
        interpolate(str(svc["environment"]["HAREG_HTTP_SECRET"]), {})
    # Listening on 0.0.0.0 inside the network without users: allowed only because it says so.
    assert config.auth is not None and config.auth.disabled
    assert exposure_problem(config, [("listen", "0.0.0.0")]) is None


def test_haproxy_balances_every_replica_on_readyz(compose: dict[str, Any]) -> None:
    svc = services(compose)["haproxy"]
    assert re.fullmatch(r"haproxy:2\.6\.\d+", svc["image"])
    assert "./deploy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in svc["volumes"]
    text = HAPROXY_CFG.read_text()
    lines = [line.strip() for line in text.splitlines()]
    assert "option httpchk GET /readyz" in lines and "http-check expect status 200" in lines
    listen_ports = {n: flags(s["command"])["listen"].rsplit(":", 1)[1] for n, s in replicas(compose).items()}
    servers = {line.split()[1]: line.split()[2] for line in lines if line.startswith("server ")}
    expected_servers = {n: f"{n}:{p}" for n, p in listen_ports.items()}
    expected_servers |= {f"{n}-spare": address for n, address in expected_servers.items()}  # backups
    assert servers == expected_servers
    expected = render_config(
        "0.0.0.0:5000",
        [Backend(n, f"{n}:{p}") for n, p in sorted(listen_ports.items())],
        resolvers=("127.0.0.11:53",),
    )
    assert text == expected, "deploy/haproxy.cfg is rendered by hareg.cluster.haproxy.render_config"
    for name in replicas(compose):
        assert svc["depends_on"][name]["condition"] in ("service_started", "service_healthy")


def test_only_haproxy_is_published_on_loopback(compose: dict[str, Any]) -> None:
    published = {n: s["ports"] for n, s in services(compose).items() if "ports" in s}
    assert set(published) == {"haproxy"}
    for port in published["haproxy"]:
        assert str(port).startswith("127.0.0.1:"), port
        assert str(port).endswith(":5000")


def test_every_image_is_pinned_and_every_service_checked(compose: dict[str, Any]) -> None:
    for name, svc in services(compose).items():
        image = svc.get("image")
        if image is not None:
            repo, sep, tag = str(image).rpartition(":")
            assert sep and repo and "/" not in tag, f"{name}: {image} has no tag"
            assert tag != "latest" and re.search(r"\d", tag), f"{name}: {image} is not pinned to a version"
        assert "healthcheck" in svc, f"{name} has no healthcheck"


def test_dockerfile_installs_the_package_and_serves() -> None:
    text = DOCKERFILE.read_text()
    froms = re.findall(r"^FROM\s+(\S+)", text, re.MULTILINE)
    assert froms == ["python:3.11-slim"]
    assert re.search(r"pip install \.", text)
    for src in re.findall(r"^COPY\s+(.+?)\s+\S+$", text, re.MULTILINE):
        for path in src.split():
            assert (ROOT / path).exists(), f"COPY {path}: missing"
    assert 'ENTRYPOINT ["hareg"]' in text and '"serve"' in text
    assert "HEALTHCHECK" in text and "/readyz" in text


def test_auth_variant_gives_every_replica_the_same_config_users_and_key(
    compose: dict[str, Any], compose_auth: dict[str, Any]
) -> None:
    base = replicas(compose)
    overrides = dict(compose_auth["services"])
    assert set(overrides) == set(base), "every replica, and nothing else, is changed"
    merged = {name: merge_service(svc, overrides[name]) for name, svc in base.items()}
    first = next(iter(merged.values()))
    assert all(svc == {**first, "hostname": name, "command": svc["command"]} for name, svc in merged.items())
    assert all(svc["environment"] == base[name]["environment"] for name, svc in merged.items()), (
        "the shared httpSecret, etcd and S3 settings are kept"
    )
    mounts = {mount_target(v): v.split(":")[0] for v in first["volumes"]}
    config_path = flags(first["command"])["config"]
    assert (ROOT / mounts[config_path]).resolve() == HAREG_AUTH_CONFIG
    targets = secret_targets(first)
    assert set(targets) == {"htpasswd", "token-key"}
    files = {name: compose_auth["secrets"][name]["file"] for name in targets}
    for file in files.values():
        assert Path(file).parts[:3] == ("deploy", "auth", Path(file).name), file
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert "deploy/auth/" in ignored, "users and keys are never committed"

    config = load_config(HAREG_AUTH_CONFIG, {"HAREG_HTTP_SECRET": "x" * 64})
    auth = config.auth
    assert auth is not None and not auth.disabled
    assert auth.htpasswd_path == targets["htpasswd"]
    assert auth.token.signing_key_file == targets["token-key"]
    assert any(b.role == "cluster-admin" for b in auth.bindings)
    assert exposure_problem(config, [("listen", flags(first["command"])["listen"].rsplit(":", 1)[0])]) is None


def test_auth_files_made_as_documented_are_accepted(tmp_path: Path) -> None:
    """The htpasswd entry and the key, made the way docker-compose.auth.yml
    says, pass the checks a replica makes at start."""
    comment = COMPOSE_AUTH.read_text()
    assert "htpasswd -B -c deploy/auth/htpasswd" in comment
    keygen = "openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out deploy/auth/token-key.pem"
    assert keygen in comment
    key = tmp_path / "token-key.pem"
    if shutil.which("openssl"):
        subprocess.run([*keygen.split()[:-1], str(key)], check=True, timeout=60, capture_output=True)
    else:
        key.write_bytes(generate_key_pem())
    htpasswd = tmp_path / "htpasswd"
    # What `htpasswd -B` writes: the $2y$ prefix.
    hashed = bcrypt.hashpw(b"admin-pw", bcrypt.gensalt(5)).decode().replace("$2b$", "$2y$", 1)
    htpasswd.write_text(f"admin:{hashed}\n")
    config = load_config(HAREG_AUTH_CONFIG, {})
    assert config.auth is not None
    local = replace(
        config.auth,
        htpasswd_path=str(htpasswd),
        token=replace(config.auth.token, signing_key_file=str(key)),
    )
    assert set(read_auth_files(local, tmp_path)) == {"auth.htpasswd.path", "auth.token.signingKeyFile"}
