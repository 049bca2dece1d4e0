"""The Prometheus export of the instance: APISIX's export server (127.0.0.1:9091,
``/apisix/prometheus/metrics``), served once by the supervisor for all workers.

Workers write running totals into their own files of a prometheus-client multiprocess directory
(``tollway.plugins.builtin.prometheus``). A scrape merges those files (``MultiProcessCollector``)
and adds the instance's own gauges: etcd reachability and modify indexes, node info, and
Tollway's config revision, lag and rejected-item count.

Invariants: the directory belongs to this supervisor run (emptied at start, removed at stop); a
worker that exits leaves its totals behind, folded into one archive file per metric type, so
counters never go back and the directory does not grow with worker restarts. Files are only
removed from the event loop, between scrapes, so a scrape never meets a half-removed file.
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.metrics_core import Metric
from prometheus_client.mmap_dict import MmapedDict
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.utils import floatToGoString

from tollway.checks import UnknownPluginItems
from tollway.logs import http_server_log
from tollway.plugins.builtin.prometheus import ENV_DIR, Prometheus, PrometheusAttr

if TYPE_CHECKING:
    from tollway.instance import InstanceView

log = logging.getLogger("tollway.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# The per-collection modify indexes APISIX exports (exporter.lua etcd_modify_index).
MODIFY_INDEX_KINDS = (
    "routes",
    "services",
    "ssls",
    "consumers",
    "global_rules",
    "upstreams",
    "stream_routes",
    "protos",
)
# Labels in APISIX's order (the merged files hand them back sorted by name); one order fits
# every label set exported here.
_LABELS_IN_ORDER = (
    *("type", "code", "route", "matched_uri", "matched_host", "service", "consumer", "node"),
    *("name", "ip", "port", "le"),
)
_LABEL_ORDER = {name: i for i, name in enumerate(_LABELS_IN_ORDER)}
_SUFFIX_ORDER = {"_bucket": 0, "_sum": 1, "_count": 2}


class MetricsExport:
    """The multiprocess directory and the export endpoint of one supervisor."""

    def __init__(
        self, attr: PrometheusAttr, directory: Path, unknown: UnknownPluginItems | None = None
    ) -> None:
        self.attr = attr
        self.directory = directory
        self.unknown = unknown
        self._modify_index: dict[str, tuple[int, int]] = {}  # kind -> (collection version, max)

    @classmethod
    def for_instance(cls, instance: InstanceView) -> MetricsExport | None:
        """None unless the prometheus plugin is enabled (it is by default) and proxies run."""
        plugin = instance.registry.get("prometheus")
        if not isinstance(plugin, Prometheus) or not instance.settings.serves_proxy:
            return None
        if not plugin.attr.enable_export_server:
            log.warning(
                "plugin_attr.prometheus.enable_export_server is false: Tollway has no "
                "public-api plugin to serve metrics on the proxy port; not exporting"
            )
            return None
        export = cls(
            plugin.attr,
            instance.settings.run_dir / "prometheus",
            UnknownPluginItems(instance.registry),
        )
        export.open()
        return export

    # -- the directory --------------------------------------------------------------------

    def open(self) -> None:
        """Create the directory, dropping files a previous run left (its counts are stale)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        for f in self.directory.iterdir():
            if f.suffix in (".db", ".tmp"):
                f.unlink()

    def worker_env(self) -> dict[str, str]:
        """The environment for a worker: ours, with the directory it records into."""
        return {**os.environ, ENV_DIR: str(self.directory)}

    def worker_exited(self, pid: int) -> None:
        """Fold a dead worker's totals into the archive files and remove its own."""
        mark_process_dead(pid, str(self.directory))  # its live gauges, if any
        for typ in ("counter", "histogram"):
            dead = self.directory / f"{typ}_{pid}.db"
            if not dead.exists():
                continue
            try:
                self._fold(typ, dead)
            except (OSError, RuntimeError) as e:  # the counts stay in the worker's file
                log.error("prometheus: cannot archive %s: %s", dead, e)

    def _fold(self, typ: str, dead: Path) -> None:
        archive = self.directory / f"{typ}_archive.db"
        totals: dict[str, float] = {}
        for path in (archive, dead):
            if path.exists():
                for key, value, _, _ in MmapedDict.read_all_values_from_file(str(path)):
                    totals[key] = totals.get(key, 0.0) + value
        tmp = self.directory / f"{typ}_archive.tmp"  # not *.db: scrapes never read it
        tmp.unlink(missing_ok=True)  # MmapedDict would keep what a failed fold left in it
        merged = MmapedDict(str(tmp))
        try:
            for key, value in totals.items():
                merged.write_value(key, value, 0.0)
        finally:
            merged.close()
        os.replace(tmp, archive)
        dead.unlink()

    def close(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)

    # -- a scrape -------------------------------------------------------------------------

    def render(self, instance: InstanceView) -> bytes:
        files = [str(p) for p in self.directory.glob("*.db")]
        families: list[Metric] = list(MultiProcessCollector.merge(files, accumulate=True))
        families += self.instance_metrics(instance)
        return render_text(families).encode()

    def instance_metrics(self, instance: InstanceView) -> list[Metric]:
        """What the supervisor knows: node, etcd, upstream health, Tollway's config state."""
        from tollway import __version__

        prefix = self.attr.metric_prefix
        store = instance.store
        status = instance.source_status()
        etcd_rev = status.etcd_revision or 0
        host = {"hostname": socket.gethostname(), "version": __version__}
        out = [_single(prefix + "node_info", "Info of APISIX node", 1, host)]
        if instance.settings.config_provider == "etcd":  # APISIX: only with etcd as config center
            up = 1 if status.connected else 0
            doc = "Config server etcd reachable from APISIX, 0 is unreachable"
            out.append(_single(prefix + "etcd_reachable", doc, up))
            out.append(self._modify_indexes(instance, prefix + "etcd_modify_indexes", etcd_rev))
        out.append(self._upstream_status(instance, prefix + "upstream_status"))
        lag = max(0, etcd_rev - store.revision) if etcd_rev else 0
        snapshot = 1 if status.from_snapshot else 0
        return [
            *out,
            _single(
                "tollway_config_revision", "Config revision the instance serves", store.revision
            ),
            _single("tollway_config_lag", "Revisions etcd is ahead of the served config", lag),
            _single(
                "tollway_config_rejected_total",
                "Config items rejected by validation",
                store.rejected,
                typ="counter",
            ),
            _single(
                "tollway_config_from_snapshot",
                "1 while serving the on-disk snapshot because etcd was unreachable at start",
                snapshot,
            ),
            _single(
                "tollway_config_unknown_plugin_items",
                "Config items naming a plugin this gateway cannot run (their requests get 503 "
                "unless tollway.unknown_plugins is skip)",
                len(self.unknown(store)) if self.unknown is not None else 0,
            ),
        ]

    @staticmethod
    def _upstream_status(instance: InstanceView, name: str) -> Metric:
        """Health-checked nodes (the supervisor holds the checkers): 1 while healthy or mostly
        healthy, as APISIX's ``upstream_status{name,ip,port}``."""
        metric = Metric(name, "Upstream node health from health checks, 1 is healthy", "gauge")
        for stat in instance.upstreams.describe():
            for node in stat["nodes"]:
                up = 1 if node["status"] in ("healthy", "mostly_healthy") else 0
                labels = {"name": stat["name"], "ip": node["ip"], "port": str(node["port"])}
                metric.add_sample(name, labels, up)
        return metric

    def _modify_indexes(self, instance: InstanceView, name: str, etcd_rev: int) -> Metric:
        metric = Metric(name, "Etcd modify index for APISIX keys", "gauge")
        top = 0
        for kind in MODIFY_INDEX_KINDS:
            coll = instance.store[kind]
            cached = self._modify_index.get(kind)
            if cached is None or cached[0] != coll.version:
                highest = max((it.mod_revision for it in coll.items.values()), default=0)
                cached = self._modify_index[kind] = (coll.version, highest)
            top = max(top, cached[1])
            metric.add_sample(name, {"key": kind}, cached[1])
        metric.add_sample(name, {"key": "max_modify_index"}, top)
        metric.add_sample(name, {"key": "x_etcd_index"}, etcd_rev)
        return metric

    # -- the server -----------------------------------------------------------------------

    def build_app(self, instance: InstanceView) -> web.Application:
        from tollway import __version__

        server = f"Tollway/{__version__}"

        async def metrics(_: web.Request) -> web.Response:
            body = self.render(instance)
            return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE, "Server": server})

        app = web.Application()
        app.router.add_get(self.attr.export_uri, metrics)
        return app

    async def start_server(self, instance: InstanceView) -> web.AppRunner | None:
        """Serve on ``export_addr``; a port in use is logged and the instance runs on."""
        addr = self.attr.export_addr
        runner = web.AppRunner(self.build_app(instance), access_log=None, logger=http_server_log())
        await runner.setup()
        try:
            await web.TCPSite(runner, addr.ip, addr.port, reuse_address=True).start()
        except OSError as e:
            log.error("prometheus export not started on %s:%d: %s", addr.ip, addr.port, e)
            await runner.cleanup()
            return None
        return runner


def _single(
    name: str, doc: str, value: float, labels: dict[str, str] | None = None, typ: str = "gauge"
) -> Metric:
    metric = Metric(name, doc, typ)
    metric.add_sample(name, labels or {}, value)
    return metric


# -- the text format (Prometheus 0.0.4) ----------------------------------------------------


def render_text(families: Iterable[Metric]) -> str:
    """Prometheus text format, with sample names as stored: APISIX's counters have no
    ``_total`` suffix (``apisix_http_status``), which prometheus-client's own writer adds."""
    out: list[str] = []
    for m in families:
        if not m.samples:
            continue
        out.append(f"# HELP {m.name} {_escape_help(m.documentation)}\n")
        out.append(f"# TYPE {m.name} {m.type}\n")
        samples = m.samples
        if m.type == "histogram":
            samples = sorted(samples, key=_histogram_order)
        for s in samples:
            out.append(f"{s.name}{_labels(s.labels)} {floatToGoString(s.value)}\n")
    return "".join(out)


def _histogram_order(s: Any) -> tuple[Any, ...]:
    """Each series' buckets in ``le`` order, then its _sum and _count."""
    series = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
    suffix = next((v for k, v in _SUFFIX_ORDER.items() if s.name.endswith(k)), 3)
    le = float(s.labels.get("le", "0"))
    return series, suffix, le


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    items = sorted(labels.items(), key=lambda kv: (_LABEL_ORDER.get(kv[0], 99), kv[0]))
    return "{" + ",".join(f'{k}="{_escape_value(v)}"' for k, v in items) + "}"


def _escape_value(v: str) -> str:
    return str(v).replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def _escape_help(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n")
