"""key-auth's configuration (``key_auth``): msgspec Structs live in a module mypyc does not
compile (``tollway.native``), whose class annotations msgspec reads."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta


class Conf(msgspec.Struct):
    header: str = "apikey"
    query: str = "apikey"
    hide_credentials: bool = False
    anonymous_consumer: Annotated[str, Meta(min_length=1)] | None = None
    realm: str = "key"


class ConsumerConf(msgspec.Struct):
    key: str
