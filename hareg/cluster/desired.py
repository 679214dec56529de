"""What the operator wants: the desired state read from the user's
configuration file, and the configuration every replica is started with.

The user's file (``--config``) is the operator's spec: ``managementState``
and ``replicas`` drive the supervisor; everything else goes to the replicas,
the ``auth`` section too, with the files it names copied into ``DIR/auth``
(auth_files.py) so that every replica reads the same users and keys, and
the ``pullThrough`` section, with its password and CA files copied into
``DIR/pull-through`` (mirror_files.py).
The cluster owns three fields of the replicas' configuration and overrides
them: ``storage`` (its own SeaweedFS, or the shared directory), the etcd
endpoints (every member) and ``httpSecret`` (the file's, or one generated once
for the cluster and kept in layout.json, so every replica signs uploads with
the same one).  ``HAREG_...`` environment variables of the supervisor apply
to the file as in ``hareg serve``; the replicas then run with the generated
file alone.

Replica count: ``--replicas`` when given; else the file's (or
``HAREG_REPLICAS``) ``replicas`` when it sets one; else 3.  On SIGHUP the
file's ``replicas`` is applied when it changed since the last read.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from hareg.cluster.auth_files import read_auth_files, stage_auth_files
from hareg.cluster.mirror_files import stage_mirror_files
from hareg.cluster.spec import DEFAULT_REPLICAS, ClusterLayout
from hareg.config.fields import env_var_name
from hareg.config.model import Config, ConfigError
from hareg.config.reader import load_config
from hareg.config.render import config_to_dict

__all__ = ["DesiredState", "load_desired", "render_replica_config", "write_replica_config"]


@dataclass(frozen=True)
class DesiredState:
    config: Config
    management_state: str
    replicas: int
    # The file's own ``replicas`` (None when it sets none): a change of it on
    # SIGHUP is a request to scale.
    file_replicas: int | None


def _sets_replicas(path: Path | None, env: Mapping[str, str]) -> bool:
    if env.get(env_var_name("replicas"), "").strip():
        return True
    if path is None:
        return False
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError):
        return False  # load_config reports it
    return isinstance(raw, dict) and raw.get("replicas") is not None


def load_desired(
    path: Path | None,
    env: Mapping[str, str] | None = None,
    *,
    replicas: int | None = None,
    previous: DesiredState | None = None,
) -> DesiredState:
    """Read the desired state.  ``replicas`` (``--replicas``) wins at startup;
    with ``previous`` (a SIGHUP) the file's count is applied only if it
    changed.  Raises ConfigError."""
    env = os.environ if env is None else env
    if replicas is not None and replicas < 1:
        raise ConfigError([f"--replicas: {replicas} is not allowed; expected an integer >= 1"])
    config = load_config(path, env)
    file_replicas = config.replicas if _sets_replicas(path, env) else None
    if previous is not None:
        count = previous.replicas
        if file_replicas is not None and file_replicas != previous.file_replicas:
            count = file_replicas
    elif replicas is not None:
        count = replicas
    elif file_replicas is not None:
        count = file_replicas
    else:
        count = DEFAULT_REPLICAS
    return DesiredState(
        config=config, management_state=config.management_state, replicas=count, file_replicas=file_replicas
    )


HAPROXY_PEER = "127.0.0.1"  # where the replicas see haproxy's connections from


def render_replica_config(config: Config, layout: ClusterLayout) -> dict[str, Any]:
    """The replicas' configuration: ``config`` with the cluster's storage,
    etcd endpoints and shared httpSecret; secrets in clear (the file is 0600)."""
    data = config_to_dict(config)
    data["managementState"] = "Managed"  # a replica that runs is managed; the supervisor decides
    del data["replicas"]  # the supervisor's business: scaling must not restart the replicas
    data["httpSecret"] = config.http_secret or layout.http_secret
    data["proxy"] = {"http": config.proxy.http, "https": config.proxy.https, "noProxy": config.proxy.no_proxy}
    store = layout.storage
    if store.kind == "seaweedfs":
        data["storage"] = {
            "s3": {
                "bucket": store.bucket,
                "region": "us-east-1",
                "regionEndpoint": store.s3_url,
                "accessKey": store.access_key,
                "secretKey": store.secret_key,
                "virtualHostedStyle": False,
                "encrypt": False,
                "keyPrefix": "",
            }
        }
    else:
        data["storage"] = {"filesystem": {"rootDirectory": str(layout.paths.blobs_dir)}}
    data["etcd"]["endpoints"] = layout.etcd_endpoints
    data["etcd"]["tls"] = {"caFile": None, "certFile": None, "keyFile": None}  # the members speak plain HTTP
    data["routes"] = []  # every replica shares 127.0.0.1: a route's own listener would clash
    data["advertiseURL"] = None  # one URL for all would send each replica's peers to one of them
    if data.get("auth") is not None and not data["auth"].get("trustedProxies"):
        # haproxy (on loopback) forwards each client's address.
        data["auth"]["trustedProxies"] = [f"{HAPROXY_PEER}/32"]
    return data


def write_replica_config(config: Config, layout: ClusterLayout, base: Path) -> bool:
    """Copy the files the auth section and the pullThrough entries name into
    DIR/auth and DIR/pull-through (relative paths from ``base``), write the
    replicas' configuration file naming the copies (mode 0600, atomically)
    and check that it loads.  True when the file or a copy changed.  Raises
    ConfigError (nothing is copied when one file is refused)."""
    read_auth_files(config.auth, base)  # refused before a copy of either kind is written
    mirrors = stage_mirror_files(config.pull_through, layout.paths.mirror_dir, base)
    staged = stage_auth_files(config.auth, layout.paths.auth_dir, base)
    config = replace(config, auth=staged.auth, pull_through=mirrors.pull_through)
    path = layout.paths.replica_config
    text = (
        "# Generated by `hareg cluster up` from the cluster's configuration: every replica runs with it.\n"
        "# Edit the file given with --config instead, then send the supervisor SIGHUP.\n"
        + yaml.safe_dump(render_replica_config(config, layout), sort_keys=False)
    )
    try:
        old = path.read_text()
    except OSError:
        old = None
    if old == text:
        return staged.changed or mirrors.changed
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    load_config(tmp, {})  # never hand the replicas a file they would reject
    os.replace(tmp, path)
    return True
