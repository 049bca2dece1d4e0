"""What the test servers (etcd, redis-server) share: a child process to kill, freeze or thaw."""

from __future__ import annotations

import signal
import subprocess


class ServerProcess:
    """``proc`` is the running server (None when stopped); ``paused`` is True while frozen."""

    proc: subprocess.Popen[bytes] | None = None
    paused = False

    def kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.kill()
        proc.wait()
        self.paused = False

    def pause(self) -> None:
        """SIGSTOP: the server holds its sockets and answers nothing (a frozen node)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)
        self.paused = True

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
        self.paused = False
