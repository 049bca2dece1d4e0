"""``/apisix/admin/configs``: the Admin API of APISIX's API-driven standalone mode
(``apisix/admin/standalone.lua``, 3.13+).

- ``PUT`` replaces the whole config. ``X-Digest`` is required (400 ``missing digest header``);
  the same digest as the one served answers 204 and changes nothing; otherwise 202. The body
  is JSON, or YAML with ``Content-Type: application/yaml``. Per kind, ``<kind>_conf_version``
  may be sent: it must be a number and never go back (400); equal to the served one, that
  kind is kept as it is; absent, it is the served one plus one. Every item of a changed kind is
  checked (schema and plugins, not references): ``invalid routes at index 0, err: ...``; two
  items with one id: ``found duplicate id 1 in routes``.
- ``GET`` returns the served document (JSON, or YAML for ``Accept: application/yaml``) with the
  ``X-Digest`` and ``X-Last-Modified`` headers; ``HEAD`` the headers alone.
- ``POST /configs/validate`` (in every mode, see ``validate_document``) checks every item of a
  document and changes nothing: 200, or 400 with all the errors.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import yaml

from tollway.admin.body import decode_json, decode_yaml
from tollway.admin.resource import AdminError, Reply, bad_request
from tollway.checks import ItemChecker
from tollway.config.api_source import ApiSource
from tollway.config.values import check_tree
from tollway.config.yaml_source import item_id_of, standalone_value
from tollway.errors import ConfigError
from tollway.model import KINDS, decode_item

DIGEST = "X-Digest"
LAST_MODIFIED = "X-Last-Modified"


def _version_key(kind: str) -> str:
    return f"{kind}_conf_version"


class StandaloneConfigs:
    def __init__(
        self,
        source: ApiSource | None,
        checker: ItemChecker,
        *,
        kinds: tuple[str, ...] = tuple(KINDS),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.source = source
        self.checker = checker
        self.kinds = kinds
        self.clock = clock

    # -- the served document ------------------------------------------------------------

    @property
    def _source(self) -> ApiSource:
        assert self.source is not None, "a validating instance serves no document"
        return self.source

    def current(self) -> dict[str, Any]:
        doc = self._source.document
        if doc is not None:
            return doc
        return {_version_key(k): 0 for k in self.kinds}

    def metadata_headers(self) -> dict[str, str]:
        doc = self._source.document or {}
        out = {}
        for name in (LAST_MODIFIED, DIGEST):
            if doc.get(name) is not None:
                out[name] = str(doc[name])
        return out

    # -- verbs ----------------------------------------------------------------------------

    def get(self, accept: str) -> tuple[Reply, dict[str, str]]:
        doc = self.current()
        if accept.startswith("application/yaml"):
            text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
            return Reply(200, text.rstrip("\n")), {
                "Content-Type": "application/yaml",
                **self.metadata_headers(),
            }
        return Reply(200, doc), self.metadata_headers()

    def put(self, headers: Mapping[str, str], raw: bytes | None) -> Reply:
        digest = headers.get(DIGEST)
        if not digest:
            raise bad_request("missing digest header")
        if not digest.isascii() and not _is_utf8(digest):
            raise bad_request(f"invalid {DIGEST} header: not UTF-8 text")
        body = self._parse(headers.get("Content-Type") or "application/json", raw)
        served = self._source.document
        if served is not None and served.get(DIGEST) == digest:
            return Reply(204, None)  # accepted, not modified: the same digest
        document = self._merge(body, served or {})
        document[LAST_MODIFIED] = int(self.clock())
        document[DIGEST] = digest
        self._source.replace(document)
        return Reply(202, None)

    # -- checks ---------------------------------------------------------------------------

    @staticmethod
    def _parse(content_type: str, raw: bytes | None) -> dict[str, Any]:
        if not raw:
            raise bad_request("invalid request body: empty request body")
        try:
            if content_type.startswith("application/yaml"):
                data = decode_yaml(raw)
                if not isinstance(data, dict):
                    raise bad_request("invalid request body: invalid yaml request body")
            else:
                data = decode_json(raw)
        except (ValueError, yaml.YAMLError) as e:  # UnicodeDecodeError, BodyError too
            raise AdminError(
                400,
                {
                    "error_msg": f"invalid request body: {e}",
                    "req_body": raw.decode("utf-8", errors="replace"),
                },
            ) from None
        if not isinstance(data, dict):
            raise bad_request("invalid request body: the config must be an object")
        problem = check_tree(data)  # what the Store would reject, before anything recurses
        if problem is not None:
            raise bad_request(f"invalid request body: {problem}")
        return data

    def _merge(self, body: dict[str, Any], served: dict[str, Any]) -> dict[str, Any]:
        document: dict[str, Any] = {}
        for kind in self.kinds:
            vkey = _version_key(kind)
            old = served.get(vkey, 0)
            new = body.get(vkey)
            if new is None:
                new = old + 1
            elif not isinstance(new, int | float) or isinstance(new, bool):
                raise bad_request(f"{vkey} must be a number")
            elif new < old:
                raise bad_request(f"{vkey} must be greater than or equal to ({old})")
            document[vkey] = new
            if new == old:
                if served.get(kind):
                    document[kind] = served[kind]
                continue
            items = body.get(kind)
            if items is None:
                continue
            if not isinstance(items, list):
                raise bad_request(f"invalid {kind}: should be an array")
            if items:
                self._check_items(kind, items)
                document[kind] = copy.deepcopy(items)
        return document

    def _check_items(self, kind: str, items: list[Any]) -> None:
        for _, error in self.item_errors(kind, items):
            raise bad_request(error)  # PUT: the first one (APISIX stops there)

    def item_errors(self, kind: str, items: list[Any]) -> Iterator[tuple[int, str]]:
        """(index, message) for each item of ``kind`` that the schema, the plugin checks or
        the one-id rule refuses; references to other objects are not checked."""
        seen: set[str] = set()
        for n, item in enumerate(items):
            item_kind = kind
            if (
                kind == "consumers"
                and isinstance(item, dict)
                and "/credentials/" in str(item.get("id", ""))
            ):
                item_kind = "credentials"
            try:
                if not isinstance(item, dict):
                    raise ConfigError("invalid configuration: wrong type: expected object")
                item_id = item_id_of(kind, item, n)
                value, _ = standalone_value(kind, item, item_id)
                obj = decode_item(item_kind, value)
                self.checker(item_kind, item_id, obj, None)
            except ConfigError as e:
                yield n, f"invalid {kind} at index {n}, err: {e}"
                continue
            if kind == "consumers":
                ident = item.get("id") or item.get("username")
                what = "credential id" if item.get("id") else "username"
            else:
                ident, what = item.get("id"), "id"
            if ident is None:
                continue
            if str(ident) in seen:
                yield n, f"found duplicate {what} {ident} in {kind}"
            seen.add(str(ident))


def _is_utf8(header: str) -> bool:
    # aiohttp keeps a header's invalid UTF-8 bytes as surrogate escapes; they cannot be stored
    # as text or served back as they came.
    try:
        header.encode()
    except UnicodeEncodeError:
        return False
    return True


def validate_document(checker: ItemChecker, headers: Mapping[str, str], raw: bytes | None) -> Reply:
    """``POST /apisix/admin/configs/validate`` (any mode): every item of a whole standalone
    document is checked and nothing is stored; 200, or 400 with every error found:
    ``{"error_msg": "Configuration validation failed", "errors": [{"resource_type", "index",
    "error"}]}``."""
    body = StandaloneConfigs._parse(headers.get("Content-Type") or "application/json", raw)
    checks = StandaloneConfigs(None, checker)
    errors: list[dict[str, Any]] = []
    for kind in checks.kinds:
        items = body.get(kind)
        if items is None:
            continue
        if not isinstance(items, list):
            errors.append({"resource_type": kind, "error": f"invalid {kind}: should be an array"})
            continue
        for index, error in checks.item_errors(kind, items):
            errors.append({"resource_type": kind, "index": index, "error": error})
    if errors:
        raise AdminError(400, {"error_msg": "Configuration validation failed", "errors": errors})
    return Reply(200, None)
