"""Typed config objects with APISIX 3.x schemas.

One msgspec declaration per object gives decoding, validation and the JSON Schema that the
Admin API serves. Objects are immutable once decoded and replaced whole, by revision.
Cross-field rules that jsonschema expresses with oneOf/anyOf live in ``__post_init__`` and
raise ``ValueError``; msgspec turns them into ``ValidationError`` with the path.
"""

from tollway.model.objects import (
    KINDS,
    SINGLE_KEY_KINDS,
    SSL,
    ActiveCheck,
    Consumer,
    ConsumerGroup,
    Credential,
    GlobalRule,
    HealthChecks,
    KeepalivePool,
    LeanRoute,
    Node,
    PassiveCheck,
    PluginConfig,
    PluginMetadata,
    Proto,
    Route,
    Secret,
    Service,
    StreamRoute,
    Timeout,
    Upstream,
    UpstreamTLS,
)
from tollway.model.validate import decode_item, format_validation_error, json_schema, kind_of_key

__all__ = [
    "KINDS",
    "SINGLE_KEY_KINDS",
    "SSL",
    "ActiveCheck",
    "Consumer",
    "ConsumerGroup",
    "Credential",
    "GlobalRule",
    "HealthChecks",
    "KeepalivePool",
    "LeanRoute",
    "Node",
    "PassiveCheck",
    "PluginConfig",
    "PluginMetadata",
    "Proto",
    "Route",
    "Secret",
    "Service",
    "StreamRoute",
    "Timeout",
    "Upstream",
    "UpstreamTLS",
    "decode_item",
    "format_validation_error",
    "json_schema",
    "kind_of_key",
]
