"""One YAML file, validated into msgspec Structs; a wrong value stops start-up naming its key.

The file has a ``common`` section and one section per service. Each service owns the Struct of its
section (``services/<name>/config.py``), registers it as a ``poolwire.config`` entry point, and
reads only ``common`` and its own section. ``poolwire config check FILE`` validates them all.

Durations read as ``250ms``, ``30s``, ``120m``, ``6h``, ``2d`` (or a bare number of seconds).
Environment overrides: ``POOLWIRE_<SECTION>__<KEY>[__<KEY>...]=value`` (value read as YAML), e.g.
``POOLWIRE_REGISTRY__PUB=tcp://0.0.0.0:5570``; ``POOLWIRE_CONFIG`` names the file.
"""

from __future__ import annotations

import functools
import importlib
import os
import re
import typing
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import yaml

from shared.security import CurveConfig

T = TypeVar("T")

ENV_PREFIX = "POOLWIRE_"
CONFIG_ENV = "POOLWIRE_CONFIG"
DEFAULT_CONFIG_PATH = "deploy/poolwire.yaml"

# Each service registers its config section as an entry point of this group (pyproject.toml:
# ``[project.entry-points."poolwire.config"]``, name -> "module:Struct"), so shared/ names none.
SECTION_GROUP = "poolwire.config"


@functools.cache
def sections() -> dict[str, str]:
    """``section -> "module:Struct"`` of every registered config section."""
    return {ep.name: ep.value for ep in entry_points(group=SECTION_GROUP)}


Endpoint = Annotated[
    str,
    msgspec.Meta(pattern=r"^(tcp://[^:]+:\d+|ipc://.+|inproc://.+)$", description="zmq endpoint"),
]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]


class ConfigError(Exception):
    """A config file or value is wrong; the message names the file, key path and expectation."""


class Duration(float):
    """Seconds, written in config as ``30s``, ``120m``, ``6h``, ``2d``, ``250ms`` or a number."""

    _UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    _PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")

    @classmethod
    def parse(cls, value: object) -> Duration:
        if isinstance(value, bool):
            raise ValueError(f"expected a duration like 30s, 120m, 6h, 2d; got {value!r}")
        if isinstance(value, int | float):
            if value < 0:
                raise ValueError(f"a duration cannot be negative; got {value!r}")
            return cls(value)
        if isinstance(value, str):
            match = cls._PATTERN.match(value)
            if match:
                return cls(float(match.group(1)) * cls._UNITS[match.group(2)])
        raise ValueError(f"expected a duration like 30s, 120m, 6h, 2d; got {value!r}")


def _dec_hook(type_: type, obj: object) -> object:
    if type_ is Duration:
        return Duration.parse(obj)
    raise NotImplementedError(f"no config decoder for {type_!r}")


class CommonConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    data_dir: str = "data"
    log_level: str = "INFO"
    heartbeat_interval: Duration = Duration(1.0)
    # what a service publishes this long after its start waits, so that the subscribers of the
    # incarnation it replaces have reconnected (ZeroMQ retries every 100 ms) and lose none of it
    rejoin_wait: Duration = Duration(0.5)
    # bytes: a larger frame on a PULL or snapshot socket closes its sender's connection unread
    max_message_size: Annotated[int, msgspec.Meta(ge=1024, le=2**31 - 1)] = 4 * 1024 * 1024
    curve: CurveConfig | None = None  # CurveZMQ across hosts (shared/security.py); off by default
    wire_version: typing.Literal[1, 2] = 1  # PUB payloads (shared/wire.py); 2: one envelope per frame


def read_file(path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The file's top-level mapping; no path and no $POOLWIRE_CONFIG means an empty config."""
    chosen = path if path is not None else os.environ.get(CONFIG_ENV)
    if chosen is None:
        return {}
    p = Path(chosen)
    try:
        text = p.read_text()
    except OSError as exc:
        raise ConfigError(f"config file {p}: cannot read it ({exc.strerror})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {p}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {p}: expected a mapping at the top, got {type(data).__name__}")
    known = sections()
    unknown = sorted(set(data) - set(known) - {"common"})
    if unknown:
        raise ConfigError(
            f"config file {p}: unknown section(s) {', '.join(unknown)}; "
            f"expected common, {', '.join(known) or '(no service is installed: pip install -e .)'}"
        )
    return data


def apply_env(raw: dict[str, Any], environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Overlay ``POOLWIRE_<SECTION>__<KEY>`` variables onto the raw mapping (a copy).

    Each name part matches an existing key case-insensitively (``H1`` stays ``H1``); a part that
    matches nothing becomes a new lower-case key.
    """
    env = os.environ if environ is None else environ
    out: dict[str, Any] = dict(raw)
    for name, value in env.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name or name == CONFIG_ENV:
            continue
        node = out
        parts = name[len(ENV_PREFIX) :].split("__")
        for i, part in enumerate(parts):
            key = next((k for k in node if str(k).lower() == part.lower()), part.lower())
            if i == len(parts) - 1:
                node[key] = _env_value(name, parts, value)
            else:
                child = node.get(key)
                node[key] = dict(child) if isinstance(child, dict) else {}
                node = node[key]
    return out


def _env_value(name: str, parts: list[str], value: str) -> Any:
    if value == "":
        return ""
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        where = ".".join(p.lower() for p in parts)
        problem = str(getattr(exc, "problem", "") or "").strip() or "unreadable"
        raise ConfigError(
            f"{where} (from ${name}): not a valid YAML value ({problem}); got {value!r}"
        ) from None


def convert(data: object, type_: type[T], where: str) -> T:
    """Validate ``data`` into ``type_``; errors name ``where`` plus the key path inside it."""
    data = data if data is not None else {}
    try:
        return msgspec.convert(data, type_, dec_hook=_dec_hook)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), where, data, type_)) from None


def _explain(message: str, where: str, data: object, type_: object) -> str:
    # msgspec says "Expected `int`, got `str` - at `$.pools[...].ttl`"; we say "registry.pools.H1.ttl: ..."
    text, _, at = message.rpartition(" - at `")
    if not text:
        return f"{where}: {message}"
    tokens = re.findall(r"\.([^.\[]+)|\[([^\]]*)\]", at.rstrip("`").removeprefix("$"))
    try:
        parts = _locate(data, type_, [name or f"[{index}]" for name, index in tokens])
    except (KeyError, IndexError, TypeError, ValueError):
        parts = [name or f"[{index}]" for name, index in tokens]
    return f"{'.'.join([where, *parts])}: {text}"


def _unwrap(tp: object) -> object:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _locate(data: object, tp: object, tokens: list[str]) -> list[str]:
    """Turn msgspec's path tokens into key names, finding which dict entry ``[...]`` stands for."""
    parts: list[str] = []
    for token in tokens:
        tp = _unwrap(tp)
        if token == "[...]" and isinstance(data, dict):
            value_type = typing.get_args(tp)[1]
            key = next(k for k, v in data.items() if not _valid(v, value_type))
            parts.append(str(key))
            data, tp = data[key], value_type
        elif token.startswith("[") and isinstance(data, list):
            index = int(token[1:-1])
            parts.append(str(index))
            data, tp = data[index], typing.get_args(tp)[0]
        else:
            parts.append(token)
            fields = {f.encode_name: f.type for f in msgspec.structs.fields(tp)}  # type: ignore[arg-type]
            data, tp = (data.get(token) if isinstance(data, dict) else None), fields[token]
    return parts


def _valid(value: object, tp: object) -> bool:
    try:
        msgspec.convert(value, tp, dec_hook=_dec_hook)
    except msgspec.ValidationError:
        return False
    return True


def load_section(
    section: str,
    type_: type[T],
    path: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
) -> tuple[CommonConfig, T]:
    """Read the file (or $POOLWIRE_CONFIG), apply env overrides, validate common + one section."""
    raw = apply_env(read_file(path), environ)
    common = convert(raw.get("common"), CommonConfig, "common")
    return common, convert(raw.get(section), type_, section)


def section_type(section: str) -> type[Any]:
    module_name, _, attr = sections()[section].partition(":")
    module = importlib.import_module(module_name)
    return getattr(module, attr)  # type: ignore[no-any-return]


def check_file(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> list[str]:
    """Validate every section of a file; returns the problems found (empty when it is valid)."""
    try:
        raw = apply_env(read_file(path), environ if environ is not None else {})
    except ConfigError as exc:
        return [str(exc)]
    problems: list[str] = []
    try:
        convert(raw.get("common"), CommonConfig, "common")
    except ConfigError as exc:
        problems.append(str(exc))
    for section in sections():
        if section not in raw:
            continue
        try:
            type_ = section_type(section)
        except (ImportError, AttributeError) as exc:
            problems.append(f"{section}: cannot load its schema ({exc})")
            continue
        try:
            convert(raw[section], type_, section)
        except ConfigError as exc:
            problems.append(str(exc))
    return problems
