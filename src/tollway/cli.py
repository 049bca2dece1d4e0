"""``tollway start | stop | reload | validate``."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import click

from tollway import __version__
from tollway.errors import SettingsError
from tollway.settings import LoadedSettings, load_settings

DEFAULT_CONFIG = "conf/config.yaml"


def _load(config: str, workers: int | None = None) -> LoadedSettings:
    try:
        return load_settings(config, workers=workers)
    except SettingsError as e:
        click.echo(f"error: {e}", err=True)
        sys.exit(1)


@click.group()
@click.version_option(__version__, prog_name="tollway")
def main() -> None:
    """Tollway: an API gateway compatible with Apache APISIX's config model."""


@main.command()
@click.option("-c", "--config", default=DEFAULT_CONFIG, show_default=True, help="config.yaml")
@click.option("--workers", type=int, default=None, help="worker processes (overrides config)")
def start(config: str, workers: int | None) -> None:
    """Run in the foreground until SIGTERM/SIGINT."""
    import uvloop

    from tollway.logs import setup_logging
    from tollway.supervisor import Supervisor

    settings = _load(config, workers)
    setup_logging(settings)
    problems = _validate_yaml(settings)
    for p in problems:
        click.echo(f"warning: {p}", err=True)
    sys.exit(uvloop.run(Supervisor(settings).run()))


def _signal(config: str, sig: signal.Signals) -> None:
    settings = _load(config)
    pid_path = settings.run_dir / "tollway.pid"
    try:
        pid = int(pid_path.read_text().strip())
    except (OSError, ValueError):
        click.echo(f"error: no running instance ({pid_path} not found)", err=True)
        sys.exit(1)
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        click.echo(f"error: process {pid} from {pid_path} is not running", err=True)
        sys.exit(1)


@main.command()
@click.option("-c", "--config", default=DEFAULT_CONFIG, show_default=True)
def stop(config: str) -> None:
    """Stop a running instance gracefully (SIGTERM through its pid file)."""
    _signal(config, signal.SIGTERM)


@main.command()
@click.option("-c", "--config", default=DEFAULT_CONFIG, show_default=True)
def reload(config: str) -> None:
    """Reload workers without dropping connections (SIGHUP through the pid file)."""
    _signal(config, signal.SIGHUP)


@main.command()
@click.option("-c", "--config", default=DEFAULT_CONFIG, show_default=True)
def validate(config: str) -> None:
    """Check config.yaml (and apisix.yaml in standalone mode); exit 1 on any problem."""
    settings = _load(config)
    problems = _validate_yaml(settings)
    for p in problems:
        click.echo(p, err=True)
    if problems:
        sys.exit(1)
    click.echo(f"{config}: ok")


def _validate_yaml(settings: LoadedSettings) -> list[str]:
    if settings.config_provider not in ("yaml", "json") or settings.api_driven:
        return []  # etcd, or API-driven standalone: no file to check
    from tollway.checks import ItemChecker
    from tollway.config.yaml_source import parse_config_file
    from tollway.errors import ConfigError, SourceError
    from tollway.model import decode_item, kind_of_key
    from tollway.plugins.registry import load_registry

    path: Path = settings.yaml_path
    try:
        kvs = parse_config_file(path, path.read_bytes(), settings.etcd.prefix)
    except OSError as e:
        return [f"{path}: cannot read: {e.strerror}"]
    except SourceError as e:
        return [f"{path}: {e}"]
    checker = ItemChecker(load_registry(settings.conf.plugins), strict=True)
    import msgspec

    problems = []
    for kv in kvs:
        where = kind_of_key(kv.key, settings.etcd.prefix)
        if where is None or kv.value is None:
            continue
        kind, item_id = where
        try:
            obj = decode_item(kind, msgspec.json.decode(kv.value))
            checker(kind, item_id, obj, None)
        except ConfigError as e:
            problems.append(f"{path}: {kind}[{item_id}]: {e}")
    return problems


if __name__ == "__main__":
    main()
