"""Fixtures shared by the unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from tollway.settings import load_settings
from tollway.supervisor import Supervisor


@pytest.fixture
def sup(tmp_path: Path) -> Supervisor:
    """A supervisor of a standalone (yaml) data plane with no routes, not started."""
    conf = tmp_path / "config.yaml"
    conf.write_text(
        "deployment:\n  role: data_plane\n  role_data_plane:\n    config_provider: yaml\n"
    )
    (tmp_path / "apisix.yaml").write_text("routes: []\n#END\n")
    return Supervisor(load_settings(conf, warn=False))
