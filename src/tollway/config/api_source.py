"""APISIX's API-driven standalone mode (3.13+): ``deployment.role: traditional`` with
``config_provider: yaml``. There is no etcd and no file: a client (ADC, the ingress controller)
sends the whole config with ``PUT /apisix/admin/configs`` and it replaces the previous one.

The document is the one APISIX keeps: item lists by kind (``routes``, ``consumers`` with
``<user>/credentials/<id>`` entries...), ``<kind>_conf_version`` numbers, and the ``X-Digest`` /
``X-Last-Modified`` metadata. APISIX holds it in shared memory only, so a restart serves nothing
until the client sends it again; Tollway also writes it to ``run/standalone-config.json`` and
serves it again at start.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path
from typing import Any

from tollway.config.source import ConfigSink, ConfigSource
from tollway.config.yaml_source import document_kvs

log = logging.getLogger("tollway.config")


class ApiSource(ConfigSource):
    def __init__(self, prefix: str = "/apisix", path: Path | None = None) -> None:
        self.prefix = prefix
        self.path = path  # where the last accepted document is kept across restarts
        self.document: dict[str, Any] | None = None  # None until a first PUT (or the file)
        self.revision = 0
        self._sink: ConfigSink | None = None

    async def run(self, sink: ConfigSink) -> None:
        self._sink = sink
        if self.document is None:
            self.document = self._restore()
        self._publish()
        await asyncio.Event().wait()

    def replace(self, document: dict[str, Any]) -> None:
        """Serve ``document`` from now on (it was validated by the caller)."""
        self.document = document
        self._persist(document)
        self._publish()

    def _publish(self) -> None:
        if self._sink is None:
            return
        self.revision += 1
        self._sink.load(self.revision, document_kvs(self.document or {}, self.prefix))

    def _restore(self) -> dict[str, Any] | None:
        if self.path is None:
            return None
        try:
            doc = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.error("standalone config %s is unusable (%s); starting empty", self.path, e)
            return None
        if not isinstance(doc, dict):
            return None
        log.info("standalone config restored from %s", self.path)
        return doc

    def _persist(self, document: dict[str, Any]) -> None:
        if self.path is None:
            return
        tmp = self.path.with_suffix(".tmp")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(document, separators=(",", ":")))
            os.replace(tmp, self.path)
        except OSError as e:
            log.error("cannot keep the standalone config in %s: %s", self.path, e)
