"""The one exception tree. Third-party exceptions are translated at module boundaries."""

from __future__ import annotations


class TollwayError(Exception):
    """Base of every error Tollway raises on purpose."""


class SettingsError(TollwayError):
    """The local config (config.yaml) is wrong: names the file and the key path."""

    def __init__(self, file: str, key: str, message: str) -> None:
        super().__init__(f"{file}: {key}: {message}")
        self.file = file
        self.key = key
        self.message = message


class ConfigError(TollwayError):
    """A config item (route, upstream...) is invalid. The message is APISIX-compatible."""


class SourceError(TollwayError):
    """A config source (etcd, yaml file) failed; the last good config keeps serving."""


class EtcdError(SourceError):
    """etcd answered with an error or could not be reached."""

    def __init__(self, message: str, *, code: int | None = None, status: int | None = None):
        super().__init__(message)
        self.code = code
        self.status = status


class EtcdUnavailable(EtcdError):
    """No etcd endpoint answered."""


class EtcdCompacted(EtcdError):
    """The requested revision was compacted."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(
            f"required revision has been compacted (compact_revision={compact_revision})"
        )
        self.compact_revision = compact_revision
