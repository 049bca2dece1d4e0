"""The one generic Admin API resource (APISIX ``admin/resource.lua``).

Each type declares its name, the word its messages use, its checks, its id rule, the methods
it refuses and its delete protection; the verbs are written once. Invariants: nothing is
written unless every check passed; a dry run (``?dry_run=true``) runs every check and writes
nothing; a PATCH is a compare-and-swap on the key's mod_revision.
"""

from __future__ import annotations

import asyncio
import copy
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from tollway.admin import deletion, validators
from tollway.admin.body import BodyError, check_plain, decode_json
from tollway.admin.listing import PageSizeError, filter_and_page
from tollway.admin.patch import PatchError, merge, patch_path
from tollway.admin.validators import Check, CheckContext, valid_id
from tollway.config.etcd import KV, EtcdClient
from tollway.config.store import Store
from tollway.config.values import check_tree, printable_key
from tollway.crypto import KeyCipher
from tollway.errors import ConfigError, TollwayError
from tollway.model import decode_item
from tollway.plugins.registry import Registry


class AdminError(TollwayError):
    """Ends an Admin API request with ``status`` and ``body`` (a dict, or plain text)."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"{status}: {body}")
        self.status = status
        self.body = body


def bad_request(msg: str) -> AdminError:
    return AdminError(400, {"error_msg": msg})


NOT_FOUND = {"message": "Key not found"}


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    body: Any
    dry_run: bool = False
    headers: dict[str, str] | None = None  # extra response headers (Content-Type may be one)


@dataclass(frozen=True, slots=True)
class ResourceType:
    name: str  # URL segment and etcd directory
    kind: str  # the word APISIX's messages use ("route", "consumer"...)
    model: str  # tollway.model kind for the JSON schema
    check: Check
    unsupported: frozenset[str] = frozenset()
    # "id": url or body id, written into the value; "username": consumers; "plugin":
    # plugin_metadata (the URL names the plugin).
    id_rule: str = "id"
    delete_check: deletion.DeleteCheck | None = None
    exact_filter: bool = False  # ``filter=service_id=..`` on lists
    secret_fields: tuple[str, ...] = ()  # never returned by the API


RESOURCES: dict[str, ResourceType] = {
    r.name: r
    for r in (
        ResourceType(
            "routes",
            "route",
            "routes",
            validators.check_route,
            exact_filter=True,
        ),
        ResourceType(
            "services",
            "service",
            "services",
            validators.check_service,
            delete_check=deletion.service_in_use,
        ),
        ResourceType(
            "upstreams",
            "upstream",
            "upstreams",
            validators.check_upstream,
            delete_check=deletion.upstream_in_use,
        ),
        ResourceType(
            "consumers",
            "consumer",
            "consumers",
            validators.check_consumer,
            unsupported=frozenset({"POST", "PATCH"}),
            id_rule="username",
        ),
        ResourceType(
            "credentials",
            "credential",
            "credentials",
            validators.check_credential,
            unsupported=frozenset({"POST", "PATCH"}),
        ),
        ResourceType(
            "ssls",
            "ssl",
            "ssls",
            validators.check_ssl,
            secret_fields=("key", "keys"),
        ),
        ResourceType(
            "global_rules",
            "global rule",
            "global_rules",
            validators.check_global_rule,
            unsupported=frozenset({"POST"}),
        ),
        ResourceType(
            "plugin_configs",
            "plugin config",
            "plugin_configs",
            validators.check_plugin_config,
            unsupported=frozenset({"POST"}),
            delete_check=deletion.plugin_config_in_use,
        ),
        ResourceType(
            "consumer_groups",
            "consumer group",
            "consumer_groups",
            validators.check_consumer_group,
            unsupported=frozenset({"POST"}),
            delete_check=deletion.consumer_group_in_use,
        ),
        ResourceType(
            "plugin_metadata",
            "plugin_metadata",
            "plugin_metadata",
            validators.check_plugin_metadata,
            unsupported=frozenset({"POST", "PATCH"}),
            id_rule="plugin",
        ),
        ResourceType(
            "protos",
            "proto",
            "protos",
            validators.check_proto,
            unsupported=frozenset({"PATCH"}),
            delete_check=deletion.proto_in_use,
        ),
        ResourceType(
            "secrets",
            "secret",
            "secrets",
            validators.check_secret,
            unsupported=frozenset({"POST"}),
        ),
        ResourceType(
            "stream_routes",
            "stream route",
            "stream_routes",
            validators.check_stream_route,
            unsupported=frozenset({"PATCH"}),
            exact_filter=True,
            delete_check=deletion.stream_route_in_use,
        ),
    )
}


@dataclass(frozen=True, slots=True)
class Target:
    """What a URL names: a type, maybe an item, maybe a sub-path (for PATCH).

    ``parent`` is the consumer of a credential or the manager of a secret; ``item_id`` is
    then the full id under the type's directory (``jack/credentials/a``, ``vault/1``)."""

    rtype: ResourceType
    item_id: str | None = None
    sub_path: str = ""
    parent: str | None = None
    own_id: str | None = None  # the last segment the URL gave (credential or secret id)


def parse_target(segs: list[str]) -> Target | None:
    """``segs`` are the path segments after ``/apisix/admin/``. None: unknown type."""
    if not segs or segs[0] not in RESOURCES or segs[0] == "credentials":
        return None
    rt = RESOURCES[segs[0]]
    rest = segs[1:]
    if rt.name == "consumers" and len(rest) >= 2 and rest[1] == "credentials":
        user, cid = rest[0], (rest[2] if len(rest) > 2 else None)
        item = f"{user}/credentials/{cid}" if cid else None
        return Target(RESOURCES["credentials"], item, "/".join(rest[3:]), user, cid)
    if rt.name == "secrets":
        if not rest:
            return Target(rt)
        manager, sid = rest[0], (rest[1] if len(rest) > 1 else None)
        item = f"{manager}/{sid}" if sid else None
        return Target(rt, item, "/".join(rest[2:]), manager, sid)
    return Target(rt, rest[0] if rest else None, "/".join(rest[1:]))


def assign_id(kind: str, url_id: str | None, body: dict[str, Any], *, need_id: bool) -> Any:
    """APISIX's id rules: the URL id, else ``body.id``; they must agree; POST takes neither.
    Returns the id to write into the value (a numeric body id stays a number)."""
    body_id = body.get("id")
    if not need_id:
        if url_id is not None or body_id is not None:
            raise bad_request(f"wrong {kind} id, do not need it")
        return None
    item_id = url_id if url_id is not None else body_id
    if item_id is None:
        raise bad_request(f"missing {kind} id")
    if url_id is not None and body_id is not None and str(body_id) != url_id:
        raise bad_request(f"wrong {kind} id")
    if not valid_id(item_id):
        raise bad_request(validators.ID_ERROR)
    return item_id


def forbidden_property(body: Any) -> str | None:
    """``create_time``/``update_time`` may not be sent on PUT/POST (also inside ``upstream``
    and ``plugins``). APISIX's message has two spaces."""
    if not isinstance(body, dict):
        return None
    places = (("", body), ("upstream.", body.get("upstream")), ("plugins.", body.get("plugins")))
    for where, obj in places:
        if not isinstance(obj, dict):
            continue
        for name in ("create_time", "update_time"):
            if name in obj and obj[name] is not False:
                return f"the property is forbidden:  {where}{name}"
    return None


def _refuse_forbidden(body: Any) -> None:
    """After the method and id rules, before the schema (APISIX ``check_conf``)."""
    forbidden = forbidden_property(body)
    if forbidden is not None:
        raise bad_request(forbidden)


def _refuse_unsafe(body: Any) -> None:
    """Before anything walks the body recursively (deepcopy, merge, schema): a value the Store
    would reject when it comes back from etcd (too deep, a lone surrogate) is refused here."""
    problem = check_tree(body)
    if problem is not None:
        raise bad_request(f"invalid configuration: {problem}")


def decode_value(raw: bytes) -> Any:
    """A value read from etcd; one that is not plain JSON within the body limits (written
    there by another client) is shown as its text rather than failing the request."""
    try:
        value = decode_json(raw)
    except ValueError:  # UnicodeDecodeError and BodyError are ValueErrors
        return raw.decode("utf-8", errors="replace")
    if check_tree(value) is not None:
        return raw.decode("utf-8", errors="replace")
    return value


class AdminResources:
    """The verbs over etcd. ``store`` is the instance's validated Store (for uniqueness and
    delete checks); ``clock`` gives seconds (timestamps)."""

    def __init__(
        self,
        etcd: EtcdClient,
        prefix: str,
        store: Store,
        registry: Registry,
        *,
        stream_enabled: bool = False,
        cipher: KeyCipher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.etcd = etcd
        self.prefix = prefix.rstrip("/")
        self.store = store
        self.registry = registry
        self.stream_enabled = stream_enabled
        self.cipher = cipher
        self.clock = clock
        self.written_revision = 0  # the last revision this Admin API wrote

    # -- helpers --------------------------------------------------------------------------

    def key_of(self, t: Target, item_id: Any) -> str:
        if t.rtype.name == "credentials":
            return f"{self.prefix}/consumers/{item_id}"
        return f"{self.prefix}/{t.rtype.name}/{item_id}"

    def context(self) -> CheckContext:
        decrypt = self.cipher.decrypt if self.cipher is not None else None
        return CheckContext(
            self.registry, self.store, self._exists, self.stream_enabled, decrypt=decrypt
        )

    async def _exists(self, dir_: str, item_id: str) -> bool:
        return await self.etcd.get(f"{self.prefix}/{dir_}/{item_id}") is not None

    async def catch_up(self, timeout: float = 3.0) -> None:
        """Wait (bounded) until the Store has seen this API's last write, so checks that read
        the Store see what this client just wrote (read-your-writes)."""
        deadline = time.monotonic() + timeout
        while self.store.revision < self.written_revision and time.monotonic() < deadline:
            await asyncio.sleep(0.01)

    def _guard(self, t: Target, method: str) -> None:
        rt = t.rtype
        if rt.name == "stream_routes" and not self.stream_enabled:
            raise bad_request("stream mode is disabled, can not add stream routes")
        if method in rt.unsupported:
            raise AdminError(405, {"error_msg": f"not supported `{method}` method for {rt.kind}"})

    def _public(self, rt: ResourceType, value: Any) -> Any:
        if rt.secret_fields and isinstance(value, dict):
            return {k: v for k, v in value.items() if k not in rt.secret_fields}
        return value

    def _node(self, rt: ResourceType, kv: KV) -> dict[str, Any]:
        return {
            "key": printable_key(kv.key),  # a key that is not UTF-8 shows its bytes as \\xNN
            "value": self._public(rt, decode_value(kv.value)),
            "createdIndex": kv.create_revision,
            "modifiedIndex": kv.mod_revision,
        }

    async def _check(self, t: Target, item_id: str | None, value: dict[str, Any]) -> None:
        _refuse_unsafe(value)  # a PATCH merge can nest deeper than the body did
        if t.rtype.name in ("consumers", "credentials", "global_rules"):
            await self.catch_up()  # these checks read the Store
        try:
            await t.rtype.check(self.context(), item_id, value)
        except ConfigError as e:
            raise bad_request(str(e)) from None

    def _encrypt(self, rt: ResourceType, value: dict[str, Any]) -> None:
        if self.cipher is None or rt.name != "ssls":
            return
        if isinstance(value.get("key"), str):
            value["key"] = self.cipher.encrypt(value["key"])
        if isinstance(value.get("keys"), list):
            enc = self.cipher.encrypt
            value["keys"] = [enc(k) if isinstance(k, str) else k for k in value["keys"]]

    async def _lease(self, args: Mapping[str, str]) -> int | None:
        ttl = args.get("ttl")
        if ttl is None:
            return None
        return await self.etcd.lease_grant(max(1, int(float(ttl))))

    def _note_write(self, revision: int) -> None:
        self.written_revision = max(self.written_revision, revision)

    # -- verbs ----------------------------------------------------------------------------

    async def get(self, t: Target, args: Mapping[str, str]) -> Reply:
        self._guard(t, "GET")
        rt = t.rtype
        if t.item_id is not None:
            kv = await self.etcd.get(self.key_of(t, t.item_id))
            if kv is None:
                raise AdminError(404, NOT_FOUND)
            return Reply(200, self._node(rt, kv))
        if rt.name == "credentials":
            if not await self._exists("consumers", t.parent or ""):
                raise AdminError(404, NOT_FOUND)  # APISIX: no such directory
            base = f"{self.prefix}/consumers/{t.parent}/credentials/"
        elif rt.name == "secrets" and t.parent:
            base = f"{self.prefix}/secrets/{t.parent}/"
        else:
            base = f"{self.prefix}/{rt.name}/"
        _, kvs = await self.etcd.range_all(base)
        depth = 1 if rt.name == "secrets" and not t.parent else 0
        nodes = [
            self._node(rt, kv)
            for kv in kvs
            if kv.key != base and kv.key[len(base) :].count("/") == depth
        ]
        try:
            total, page = filter_and_page(nodes, args, exact_filter=rt.exact_filter)
        except PageSizeError as e:
            raise AdminError(400, str(e)) from None
        return Reply(200, {"total": total, "list": page})

    def _prepare_put(self, t: Target, body: Any) -> tuple[str, str, dict[str, Any]]:
        """(item id, key, value) for a PUT, after the id rules."""
        rt = t.rtype
        if body is None:
            raise bad_request("missing configurations")
        if not isinstance(body, dict):
            raise bad_request("invalid configuration: wrong type: expected object")
        value = copy.deepcopy(body)
        if rt.id_rule == "username":
            return t.item_id or "", "", value
        if rt.id_rule == "plugin":
            if t.item_id is None:
                raise bad_request("missing plugin name")
            value["id"] = t.item_id
            return t.item_id, self.key_of(t, t.item_id), value
        if rt.name == "credentials" and t.own_id is None and value.get("id") is not None:
            # the id from the body when the URL has none (APISIX credentials.lua)
            own = str(value["id"])
            if not valid_id(own):
                raise bad_request(validators.ID_ERROR)
            t = Target(rt, f"{t.parent}/credentials/{own}", t.sub_path, t.parent, own)
        if rt.name in ("credentials", "secrets"):
            if t.own_id is None:
                raise bad_request(f"missing {rt.kind} id")
            full = t.item_id or ""
            if rt.name == "secrets":
                if "id" in value and str(value["id"]) != full:
                    raise bad_request(f"wrong {rt.kind} id")
                value["id"] = full
            else:
                assign_id(rt.kind, t.own_id, value, need_id=True)
                value["id"] = t.own_id
            return full, self.key_of(t, full), value
        item_id = assign_id(rt.kind, t.item_id, value, need_id=True)
        value["id"] = item_id
        return str(item_id), self.key_of(t, item_id), value

    async def put(self, t: Target, body: Any, args: Mapping[str, str]) -> Reply:
        self._guard(t, "PUT")
        _refuse_unsafe(body)
        rt = t.rtype
        item_id, key, value = self._prepare_put(t, body)
        _refuse_forbidden(body)
        if rt.name == "credentials" and not await self._exists("consumers", t.parent or ""):
            raise AdminError(404, {"error_msg": "consumer not found"})
        await self._check(t, t.item_id if rt.id_rule == "username" else item_id, value)
        if rt.id_rule == "username":
            item_id = str(value["username"])
            key = self.key_of(t, item_id)
        prev = await self.etcd.get(key)
        if rt.name != "plugin_metadata":  # APISIX stamps every type but plugin metadata
            now = int(self.clock())
            old = decode_value(prev.value) if prev is not None else None
            created = old.get("create_time") if isinstance(old, dict) else None
            value["create_time"] = created if isinstance(created, int) else now
            value["update_time"] = now
        self._encrypt(rt, value)
        status = 200 if prev is not None else 201
        if args.get("dry_run") == "true":
            return Reply(status, {"key": key, "value": self._public(rt, value)}, dry_run=True)
        lease = await self._lease(args)
        rev, prev_kv = await self.etcd.put(key, _encode(value), lease=lease, prev_kv=True)
        self._note_write(rev)
        status = 200 if prev_kv is not None else 201
        return Reply(status, {"key": key, "value": self._public(rt, value)})

    async def post(self, t: Target, body: Any, args: Mapping[str, str]) -> Reply:
        self._guard(t, "POST")
        _refuse_unsafe(body)
        rt = t.rtype
        if body is None:
            raise bad_request("missing configurations")
        if not isinstance(body, dict):
            raise bad_request("invalid configuration: wrong type: expected object")
        value = copy.deepcopy(body)
        assign_id(rt.kind, t.item_id, value, need_id=False)
        _refuse_forbidden(body)
        await self._check(t, None, value)
        now = int(self.clock())
        value["create_time"] = now
        value["update_time"] = now
        self._encrypt(rt, value)
        dry = args.get("dry_run") == "true"
        if dry:
            # The id would be the revision of the gen_id write; predict it, reserve nothing.
            rev = (await self.etcd.range(f"{self.prefix}/gen_id")).revision + 1
        else:
            rev, _ = await self.etcd.put(f"{self.prefix}/gen_id", b"1")
        new_id = f"{rev:020d}"
        value = {**value, "id": new_id}
        key = self.key_of(t, new_id)
        if dry:
            return Reply(201, {"key": key, "value": self._public(rt, value)}, dry_run=True)
        lease = await self._lease(args)
        rev, _ = await self.etcd.put(key, _encode(value), lease=lease)
        self._note_write(rev)
        return Reply(201, {"key": key, "value": self._public(rt, value)})

    async def patch(self, t: Target, body: Any, args: Mapping[str, str]) -> Reply:
        self._guard(t, "PATCH")
        _refuse_unsafe(body)
        rt = t.rtype
        if t.item_id is None or (rt.name == "secrets" and t.own_id is None):
            raise bad_request(f"missing {rt.kind} id")
        if body is None:
            raise bad_request("missing new configuration")
        if not t.sub_path and not isinstance(body, dict):
            raise bad_request("invalid configuration")
        key = self.key_of(t, t.item_id)
        kv = await self.etcd.get(key)
        if kv is None:
            raise AdminError(404, NOT_FOUND)
        old = decode_value(kv.value)
        if not isinstance(old, dict):
            old = {}
        conf = copy.deepcopy(body)
        if rt.name == "ssls" and self.cipher is not None:
            conf = self._encrypt_patch(t.sub_path, conf)
        now = int(self.clock())
        try:
            if t.sub_path:
                value = patch_path(old, t.sub_path, conf)
                value["update_time"] = now
            else:
                value = merge(old, conf)
                if conf.get("update_time") is None:
                    value["update_time"] = now
            # the merged value: a long sub-path nests the body deeper than the body alone
            check_plain(value)
        except (PatchError, BodyError) as e:
            raise bad_request(str(e)) from None
        if "create_time" not in value:
            value["create_time"] = now
        if rt.name == "secrets":
            if str(value.get("id", t.item_id)) != t.item_id:
                raise bad_request(f"wrong {rt.kind} id")
        else:
            assign_id(rt.kind, t.item_id, value, need_id=True)
        value["id"] = value.get("id", t.item_id)
        await self._check(t, t.item_id, value)
        if args.get("dry_run") == "true":
            return Reply(200, {"key": key, "value": self._public(rt, value)}, dry_run=True)
        lease = await self._lease(args)
        ok, rev = await self.etcd.put_if(
            key, _encode(value), mod_revision=kv.mod_revision, lease=lease
        )
        if not ok:
            raise AdminError(503, {"error_msg": "value changed before overwritten"})
        self._note_write(rev)
        return Reply(200, {"key": key, "value": self._public(rt, value)})

    def _encrypt_patch(self, sub_path: str, conf: Any) -> Any:
        assert self.cipher is not None
        if sub_path == "key" and isinstance(conf, str):
            return self.cipher.encrypt(conf)
        if sub_path == "keys" and isinstance(conf, list):
            return [self.cipher.encrypt(k) if isinstance(k, str) else k for k in conf]
        if not sub_path and isinstance(conf, dict):
            self._encrypt(RESOURCES["ssls"], conf)
        return conf

    async def delete(self, t: Target, args: Mapping[str, str]) -> Reply:
        self._guard(t, "DELETE")
        rt = t.rtype
        if t.item_id is None:
            raise bad_request(f"missing {rt.kind} id")
        key = self.key_of(t, t.item_id)
        if rt.delete_check is not None and args.get("force") != "true":
            await self.catch_up()
            msg = rt.delete_check(self.store, t.item_id)
            if msg is not None:
                raise bad_request(msg)
        rev, deleted = await self.etcd.delete(key)
        if deleted == 0:
            raise AdminError(404, NOT_FOUND)
        if rt.name == "consumers":
            # A consumer's credentials go with it (APISIX consumers.lua delete).
            rev, _ = await self.etcd.delete(f"{key}/credentials/", prefix=True)
        self._note_write(rev)
        return Reply(200, {"deleted": "1", "key": key})

    def validate_schema(self, rtype: ResourceType, body: Any) -> None:
        """The resource's schema alone (APISIX ``core.schema.check(resource.schema, body)``):
        no references, plugin confs or id rules. Raises 400 with the validator's words."""
        try:
            decode_item(rtype.model, body)
        except ConfigError as e:
            msg = str(e)
            prefix = "invalid configuration: "
            raise bad_request(msg[len(prefix) :] if msg.startswith(prefix) else msg) from None


def _encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()
