"""Logging set-up: one logger per subsystem, to stderr, with the process id."""

from __future__ import annotations

import logging
import os

from tollway.settings import LoadedSettings

_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "notice": logging.INFO,
    "warn": logging.WARNING,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "crit": logging.CRITICAL,
}


def setup_logging(settings: LoadedSettings | None = None) -> None:
    level_name = os.environ.get("TOLLWAY_LOG_LEVEL") or (
        settings.conf.nginx_config.error_log_level if settings else "warn"
    )
    level = _LEVELS.get(level_name.lower(), logging.INFO)
    logging.basicConfig(
        level=level,
        format="%(asctime)s [%(levelname)s] %(process)d %(name)s: %(message)s",
        force=True,
    )
