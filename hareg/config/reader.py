"""Reading the configuration: ``load_config(path, env)`` reads the YAML file,
applies ``HAREG_...`` environment overrides, validates everything
(``validation.py``) and either returns a frozen ``Config`` or raises
``ConfigError`` listing every problem at once, each naming the field by its
YAML path, the bad value and what is allowed, with the line it is on (or the
environment variable it came from)::

    requests.write.maxInQueue: -1 is not allowed; expected an integer >= 0 (line 7)

Rules worth knowing:

* A key whose value is ``null`` is treated as absent (Kubernetes semantics),
  so a commented-out block leaves the default in place.
* Unknown keys are errors, with a "did you mean" suggestion; OpenShift fields
  that make no sense for hareg (``affinity``, ``storage.gcs``,
  ``routes[].secretName``, ...) get an error that says so.
* Environment variables win over the file.  ``HAREG_<PATH>`` is the YAML path
  with camelCase split into words, upper-cased, '.' -> '_'
  (``requests.write.maxInQueue`` -> ``HAREG_REQUESTS_WRITE_MAX_IN_QUEUE``).
  Only scalar fields have one (``routes`` has none); ``HAREG_ETCD_ENDPOINTS``
  is a comma-separated list; an empty value for an optional string field
  unsets it.  A storage variable for a kind other than the file's is a
  conflict, reported as such, never a silent switch of storage.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

import yaml
from yaml.constructor import SafeConstructor

from hareg.config.context import ErrorContext, join_path, show
from hareg.config.fields import SCALARS, Scalar, env_var_name
from hareg.config.model import Config, ConfigError
from hareg.config.validation import build_config

_MERGE_TAG = "tag:yaml.org,2002:merge"
_MAX_NODES = 100_000


class _TooLarge(Exception):
    """The document expands to more than _MAX_NODES nodes (an alias bomb, or not a config file)."""


def _node_to_python(
    node: yaml.Node, path: str, ctx: ErrorContext, constructor: SafeConstructor, active: set[int]
) -> object:
    if id(node) in active:
        ctx.error(path, "a recursive YAML alias is not allowed")
        return None
    ctx.nodes += 1
    if ctx.nodes > _MAX_NODES:
        raise _TooLarge
    if isinstance(node, yaml.MappingNode):
        active.add(id(node))
        result: dict[str, object] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == _MERGE_TAG:
                ctx.add(
                    f"{path or '<top level>'}: YAML merge keys (<<) are not supported (line {line})", line
                )
                continue
            key = constructor.construct_object(key_node) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                shown = show(key) if isinstance(key_node, yaml.ScalarNode) else "a collection"
                ctx.add(f"{path or '<top level>'}: key {shown} is not a string (line {line})", line)
                continue
            sub = join_path(path, key)
            if key in result:
                ctx.add(f"{sub}: duplicate key (lines {ctx.lines[sub]} and {line})", line)
                continue
            ctx.lines[sub] = line
            result[key] = _node_to_python(value_node, sub, ctx, constructor, active)
        active.discard(id(node))
        return result
    if isinstance(node, yaml.SequenceNode):
        active.add(id(node))
        items: list[object] = []
        for index, item_node in enumerate(node.value):
            sub = f"{path}[{index}]"
            ctx.lines[sub] = item_node.start_mark.line + 1
            items.append(_node_to_python(item_node, sub, ctx, constructor, active))
        active.discard(id(node))
        return items
    value: object = constructor.construct_object(node)
    return value


def _yaml_error(name: str, exc: yaml.YAMLError) -> str:
    """``file:line:column: YAML syntax error: problem (context)``, never a traceback."""
    if not isinstance(exc, yaml.MarkedYAMLError):
        return f"{name}: YAML syntax error: {exc}"
    mark = exc.problem_mark or exc.context_mark
    if exc.problem == "but found another document":
        return (
            f"{name}:{mark.line + 1 if mark else '?'}: YAML syntax error: a second document starts here; "
            "expected exactly one YAML document"
        )
    message = exc.problem or exc.context or "invalid YAML"
    if exc.problem and exc.context:
        context = exc.context
        if exc.context_mark is not None and exc.context_mark is not mark:
            context += (
                f" that starts at line {exc.context_mark.line + 1}, column {exc.context_mark.column + 1}"
            )
        message += f" ({context})"
    if mark is None:
        return f"{name}: YAML syntax error: {message}"
    return f"{name}:{mark.line + 1}:{mark.column + 1}: YAML syntax error: {message}"


def _unreadable(exc: OSError | UnicodeDecodeError) -> str:
    """Why the file could not be read, in the user's terms."""
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text ({exc.reason} at byte {exc.start})"
    if isinstance(exc, FileNotFoundError):
        return "configuration file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory, expected a YAML configuration file"
    return f"cannot read the configuration file: {exc.strerror or exc}"


def _read_yaml(path: str, ctx: ErrorContext) -> dict[str, object] | None:
    """The file's top-level mapping; None (with an error recorded) if unusable."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        ctx.add(f"{path}: {_unreadable(exc)}")
        return None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        if node is None:
            return {}
        data = _node_to_python(node, "", ctx, SafeConstructor(), set())
    except yaml.YAMLError as exc:
        ctx.add(_yaml_error(path, exc))
        return None
    except RecursionError:
        ctx.add(f"{path}: the YAML is nested too deeply")
        return None
    except _TooLarge:
        ctx.add(f"{path}: the YAML expands to more than {_MAX_NODES} values (too many aliases?)")
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        ctx.add(
            f"{path}: {show(data)} is not allowed at the top level; "
            "expected a mapping of fields like 'logLevel: Normal'"
        )
        return None
    return data


_TRUE: Final = frozenset({"true", "1", "yes"})
_FALSE: Final = frozenset({"false", "0", "no"})
_DELETE: Final = object()


def _parse_env(scalar: Scalar, text: str) -> object:
    """The value an environment variable puts at the field's path; ValueError if unparseable."""
    if scalar.kind in ("bool", "flag"):
        word = text.strip().lower()
        if word not in _TRUE | _FALSE:
            raise ValueError("one of true, false, 1, 0, yes, no")
        flag = word in _TRUE
        if scalar.kind == "flag":
            return {} if flag else _DELETE
        return flag
    if scalar.kind == "int":
        try:
            return int(text.strip())
        except ValueError:
            raise ValueError("an integer") from None
    if scalar.kind == "list":
        return [item.strip() for item in text.split(",") if item.strip()]
    if scalar.kind == "optstr" and text == "":
        return _DELETE
    return text


def _apply_env(raw: dict[str, object], env: Mapping[str, str], ctx: ErrorContext) -> None:
    for scalar in SCALARS:
        var = env_var_name(scalar.path)
        if var not in env:
            continue
        try:
            value = _parse_env(scalar, env[var])
        except ValueError as exc:
            ctx.add(f"{var}: {show(env[var])} is not allowed; expected {exc} (sets {scalar.path})")
            continue
        *parents, leaf = scalar.path.split(".")
        node: dict[str, object] = raw
        for part in parents:
            child = node.get(part)
            if child is None:
                if value is _DELETE:
                    break
                child = node[part] = {}
            if not isinstance(child, dict):
                break  # the file's own structural error will be reported
            node = child
        else:
            if value is _DELETE:
                node.pop(leaf, None)
            else:
                node[leaf] = value
            ctx.sources[scalar.path] = var


def load_config(path: str | os.PathLike[str] | None, env: Mapping[str, str] | None = None) -> Config:
    """Read, override from the environment (``os.environ`` if ``env`` is None), validate.

    Raises ConfigError listing every problem found.
    """
    ctx = ErrorContext()
    raw: dict[str, object] | None = {}
    if path is not None:
        raw = _read_yaml(os.fspath(path), ctx)
    _apply_env(raw if raw is not None else {}, os.environ if env is None else env, ctx)
    if raw is None:
        # The file is unusable: report that and any unparseable variables,
        # but not what validating the defaults plus the environment would say.
        raise ConfigError(ctx.errors)
    config = build_config(raw, ctx)
    if ctx.errors:
        raise ConfigError(ctx.errors)
    return config
