"""APISIX standalone mode: config from ``apisix.yaml``, re-read when the file changes.

The file must end with ``#END`` (APISIX: the last bytes must match ``#END\\s*$``), otherwise it is
rejected and the last good config keeps serving. ``${{VAR}}`` and ``${{VAR:=default}}`` are
substituted from the environment on the raw text before parsing.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from pathlib import Path
from typing import Any

import msgspec
import yaml

from tollway.config.source import ConfigSink, ConfigSource, KeyValue
from tollway.config.values import printable_key
from tollway.errors import SourceError
from tollway.model import KINDS
from tollway.ratelog import RateLimitedLog

log = logging.getLogger("tollway.config")

_END = re.compile(rb"#END\s*$")
_ENV = re.compile(r"\$\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*(?::=\s*([^}]*?))?\s*\}\}")


def substitute_env(text: str) -> str:
    def repl(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        val = os.environ.get(name)
        if val is None:
            if default is None:
                raise SourceError(f"environment variable {name} is not set")
            return default
        return val

    return _ENV.sub(repl, text)


def parse_yaml_config(raw: bytes, prefix: str = "/apisix") -> list[KeyValue]:
    """apisix.yaml bytes -> key/values in file order. Raises SourceError if the file is unusable."""
    if not _END.search(raw[-10:] if len(raw) > 10 else raw):
        raise SourceError("the file does not end with #END (it may be partially written)")
    try:
        data = yaml.safe_load(substitute_env(raw.decode("utf-8")))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise SourceError(f"invalid YAML: {e}") from None
    if data is None:
        return []
    if not isinstance(data, dict):
        raise SourceError("the top level must be a mapping")
    return document_kvs(data, prefix)


def parse_json_config(raw: bytes, prefix: str = "/apisix") -> list[KeyValue]:
    """apisix.json (``config_provider: json``): the same document in JSON, no ``#END``."""
    try:
        data = msgspec.json.decode(substitute_env(raw.decode("utf-8")).encode())
    except (msgspec.DecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"invalid JSON: {e}") from None
    if not isinstance(data, dict):
        raise SourceError("the top level must be an object")
    return document_kvs(data, prefix)


def parse_config_file(path: Path, raw: bytes, prefix: str = "/apisix") -> list[KeyValue]:
    try:
        if path.suffix == ".json":
            return parse_json_config(raw, prefix)
        return parse_yaml_config(raw, prefix)
    except RecursionError:  # the parser's own limit: the file is unusable, as a syntax error
        raise SourceError("nested deeper than the parser can read") from None


def document_kvs(data: dict[str, Any], prefix: str = "/apisix") -> list[KeyValue]:
    """A standalone config document (apisix.yaml, or the body of PUT /apisix/admin/configs) ->
    key/values in document order. ``<kind>_conf_version`` and the X-* metadata are not items."""
    kvs: list[KeyValue] = []
    for kind, items in data.items():
        if kind not in KINDS:
            if kind != "plugins" and not kind.endswith("_conf_version") and kind[:2] != "X-":
                log.warning("apisix.yaml: unknown top-level key %s ignored", kind)
            continue
        if not isinstance(items, list):
            log.warning("apisix.yaml: %s must be a list; ignored", kind)
            continue
        for n, item in enumerate(items):
            item_id = item_id_of(kind, item, n)
            value, revision = standalone_value(kind, item, item_id)
            key = f"{prefix}/{kind}/{item_id}"
            raw = _encoded(key, value)
            if raw is not None:
                kvs.append(KeyValue(key, raw, revision))
            if kind == "consumers" and isinstance(item, dict):
                for cred in item.get("credentials") or []:
                    if isinstance(cred, dict) and "id" in cred:
                        key = f"{prefix}/consumers/{item_id}/credentials/{cred['id']}"
                        raw = _encoded(key, cred)
                        if raw is not None:
                            kvs.append(KeyValue(key, raw))
    return kvs


def _encoded(key: str, value: Any) -> bytes | None:
    """The item as JSON, or None (logged) when it has none: a lone surrogate escape, or nesting
    beyond Python's recursion limit. That item is skipped; the rest of the document loads."""
    try:
        return msgspec.json.encode(value)
    except UnicodeEncodeError:
        reason = "a string is not valid UTF-8"
    except RecursionError:
        reason = "nested too deeply"
    log.warning("rejected config item %s: %s", printable_key(key), reason)
    return None


def standalone_value(kind: str, item: Any, item_id: str) -> tuple[Any, int]:
    """The value stored for one item of a standalone document, and its modifiedIndex.

    The id is written into the value (APISIX: ``arr_<n>`` when absent); nested ``credentials``
    of a consumer are keys of their own; a credential listed among the consumers as
    ``<user>/credentials/<id>`` keeps its own id; ``modifiedIndex`` is metadata."""
    if not isinstance(item, dict):
        return item, 0
    value = dict(item)
    revision = value.pop("modifiedIndex", 0)
    if kind == "consumers":
        value.pop("credentials", None)
        if "/credentials/" in item_id:
            value["id"] = item_id.rpartition("/")[2]
    elif "id" not in value:
        value["id"] = item_id
    return value, revision if isinstance(revision, int) and not isinstance(revision, bool) else 0


def item_id_of(kind: str, item: Any, n: int) -> str:
    if isinstance(item, dict):
        if item.get("id") is not None:
            return str(item["id"])
        if kind == "consumers" and item.get("username"):
            return str(item["username"])
    return f"arr_{n}"


class YamlSource(ConfigSource):
    def __init__(self, path: Path, prefix: str = "/apisix", poll_interval: float = 0.25) -> None:
        self.path = path
        self.prefix = prefix
        self.poll_interval = poll_interval
        self.revision = 0
        self.last_error: str | None = None
        self._mtime: float | None = None
        self._warn = RateLimitedLog(log)

    def read(self) -> list[KeyValue] | None:
        try:
            raw = self.path.read_bytes()
        except OSError as e:
            self._fail(f"cannot read {self.path}: {e.strerror}")
            return None
        try:
            kvs = parse_config_file(self.path, raw, self.prefix)
        except SourceError as e:
            self._fail(f"{self.path}: {e}")
            return None
        self.last_error = None
        return kvs

    def _fail(self, msg: str) -> None:
        self.last_error = msg
        self._warn(logging.ERROR, "%s; keeping the last good config", msg)

    async def run(self, sink: ConfigSink) -> None:
        first = True
        while True:
            try:
                st = self.path.stat()
                mtime: float | None = st.st_mtime_ns + st.st_size
            except OSError:
                mtime = None
            if first or mtime != self._mtime:
                self._mtime = mtime
                kvs = self.read()
                if kvs is not None:
                    self.revision += 1
                    sink.load(self.revision, kvs)
                elif first:
                    sink.load(self.revision, [])
                first = False
            await asyncio.sleep(self.poll_interval)


class MemorySource(ConfigSource):
    """For unit tests: a fixed list of key/values."""

    def __init__(self, kvs: list[KeyValue], revision: int = 1) -> None:
        self.kvs = kvs
        self.revision = revision

    async def run(self, sink: ConfigSink) -> None:
        sink.load(self.revision, self.kvs)
        await asyncio.Event().wait()
