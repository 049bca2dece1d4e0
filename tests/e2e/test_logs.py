"""The logs a person reads: the error log file and level of config.yaml, and the access log as
JSON (APISIX's access_log_format_escape: json)."""

from __future__ import annotations

import json
from pathlib import Path

import requests

from tests.support.gateway import Gateway, free_port, wait_until
from tests.support.upstream import Upstream

ROUTES = """
routes:
  - id: r
    uri: /r
    plugins:
      tcp-logger: {host: 127.0.0.1, port: %(dead)d, batch_max_size: 1}
    upstream: {nodes: {"%(up)s": 1}}
#END
"""

JSON_FORMAT = (
    '{"host":"$host","uri":"$uri","ua":"$http_user_agent","status":"$status","ref":"$http_referer"}'
)


def test_error_log_file_and_level_and_json_access_log(tmp_path: Path, upstream: Upstream) -> None:
    error_log = tmp_path / "logs" / "error.log"
    access_log = tmp_path / "logs" / "access.log"
    config = {
        "nginx_config": {
            "error_log": str(error_log),
            "error_log_level": "warn",
            "http": {
                "access_log": str(access_log),
                "access_log_format": JSON_FORMAT,
                "access_log_format_escape": "json",
            },
        }
    }
    text = ROUTES % {"up": upstream.addr, "dead": free_port()}
    with Gateway(tmp_path, apisix_yaml=text, config=config) as g:
        ua = 'curl "quoted" \\ back\tslash'
        r = requests.get(g.url("/r"), headers={"User-Agent": ua}, timeout=5)
        assert r.status_code == 200
        # a warning (the dead log receiver) reaches the error log file, with the process id
        wait_until(
            lambda: (
                error_log.exists()
                and "Batch Processor[tcp logger] failed to process entries" in error_log.read_text()
            )
        )
    text = error_log.read_text()
    assert "[WARNING]" in text and "[INFO]" not in text  # error_log_level: warn
    assert "Batch Processor" not in g.logs()  # not on stderr
    lines = access_log.read_text().splitlines()
    entry = json.loads(lines[-1])
    assert entry == {"host": "127.0.0.1", "uri": "/r", "ua": ua, "status": "200", "ref": ""}
