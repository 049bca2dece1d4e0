"""The instance as the supervisor's services see it: a narrow, read-only view.

The Admin API, the control API, the Prometheus export and the status API run in the supervisor
process and read what it holds. They take an ``InstanceView`` (the Supervisor is one), never the
Supervisor itself, so none of them imports ``tollway.supervisor`` and none can start, stop or
signal workers. A dashboard reading health, metrics or status takes the same view.

What it offers:

* ``settings``: the local config (``config.yaml`` merged over defaults);
* ``store``: the validated config items of the instance (the one ``Store``), with revisions;
* ``registry``: the loaded plugins (schemas, attributes);
* ``source`` / ``etcd_client``: the config source, and the etcd client when the source is etcd;
* ``upstreams``: health checks and DNS (``describe()`` lists nodes and their health);
* ``source_status()``: the served revision, etcd's, the connection, snapshot and rejections;
* ``worker_status()``: each worker's pid, readiness and applied revision;
* ``all_ready()``: every current worker has loaded the config (``/status/ready``);
* ``metric_files()``: the workers' prometheus files and the metric prefix (None: no export).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from tollway.config.etcd import EtcdClient
    from tollway.config.source import ConfigSource
    from tollway.config.store import Store
    from tollway.plugins.registry import Registry
    from tollway.settings import LoadedSettings
    from tollway.upstream.monitor import UpstreamMonitor


@dataclass(frozen=True, slots=True)
class SourceStatus:
    """Where the served config stands against its source."""

    revision: int  # the revision the instance serves
    etcd_revision: int | None  # etcd's latest known revision (None without etcd)
    connected: bool | None  # the source reaches etcd (None when it has no such notion)
    from_snapshot: bool  # serving the on-disk snapshot: etcd was unreachable at start
    rejected: int  # config items refused by validation since start

    @property
    def lag(self) -> int | None:
        """Revisions etcd is ahead of the served config (None without an etcd revision)."""
        return self.etcd_revision - self.revision if self.etcd_revision else None


@dataclass(frozen=True, slots=True)
class WorkerStatus:
    pid: int
    ready: bool  # it has loaded the config and serves
    revision: int  # the last config revision it applied
    current: bool  # of the current generation (False: draining after a reload)


class InstanceView(Protocol):
    """What a supervisor service may read. Implemented by ``Supervisor``."""

    @property
    def settings(self) -> LoadedSettings: ...

    @property
    def store(self) -> Store: ...

    @property
    def registry(self) -> Registry: ...

    @property
    def source(self) -> ConfigSource | None: ...

    @property
    def etcd_client(self) -> EtcdClient | None: ...

    @property
    def upstreams(self) -> UpstreamMonitor: ...

    def source_status(self) -> SourceStatus: ...

    def worker_status(self) -> list[WorkerStatus]: ...

    def all_ready(self) -> bool: ...

    def metric_files(self) -> tuple[list[str], str] | None: ...
