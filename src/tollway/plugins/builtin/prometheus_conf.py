"""prometheus's configuration (``prometheus``): msgspec Structs live in a module mypyc does not
compile (``tollway.native``), whose class annotations msgspec reads."""

from __future__ import annotations

from typing import Annotated

import msgspec
from msgspec import Meta

# APISIX 3.x (apisix/plugins/prometheus/exporter.lua): 1 ms to 60 s.
DEFAULT_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000)
DEFAULT_EXPORT_URI = "/apisix/prometheus/metrics"


class PrometheusConf(msgspec.Struct):
    prefer_name: bool = False


BY_ID = PrometheusConf()
BY_NAME = PrometheusConf(prefer_name=True)


class ExportAddr(msgspec.Struct):
    ip: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=1, le=65535)] = 9091


class PrometheusAttr(msgspec.Struct):
    """``plugin_attr.prometheus`` in config.yaml (APISIX's keys; others are ignored)."""

    export_addr: ExportAddr = msgspec.field(default_factory=ExportAddr)
    export_uri: Annotated[str, Meta(pattern=r"^/")] = DEFAULT_EXPORT_URI
    metric_prefix: str = "apisix_"
    enable_export_server: bool = True
    default_buckets: Annotated[list[Annotated[float, Meta(gt=0)]], Meta(min_length=1)] | None = None

    @property
    def buckets(self) -> tuple[float, ...]:
        return tuple(sorted(set(self.default_buckets or DEFAULT_BUCKETS)))
