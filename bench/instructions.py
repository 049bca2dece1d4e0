"""Instructions per proxied request under callgrind: the figure that sizes a hot-path change.

    .venv/bin/python bench/instructions.py bare     # or realistic, key-auth, limit-count+prometheus
    TOLLWAY_PURE=1 .venv/bin/python bench/instructions.py realistic   # the pure-Python build

bench/hotpath.py's route and in-memory transports, with the worker's gc.freeze() and thresholds:
200 warm requests, then N; run under valgrind for N = 200 and N = 1,200, the difference / 1,000.
Deterministic to about 0.1% (PYTHONHASHSEED=0), where timings on this shared VM move by 10-20%:
callgrind sizes a change, `hotpath.py --against` and `proxy.py` give its sign end to end.
Needs valgrind (Debian `valgrind`). A run takes 30-60 s.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent


def child(n: int, route: str) -> None:
    """One run under valgrind: the route's requests (what callgrind counts)."""
    import gc
    import tempfile

    import uvloop

    os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="tollway-prom-"))
    sys.path.insert(0, str(BENCH))
    import hotpath as hp

    async def main() -> None:
        plugins = None if route in ("bare", "realistic") else route.split("+")
        if route == "realistic":
            hp.SENT = hp.REALISTIC_REQUEST
            proto, conn, ct, ut = await hp.setup(False, realistic=True)
        else:
            hp.SENT = hp.plugin_request(plugins or [])
            proto, conn, ct, ut = await hp.setup(False, with_plugins=plugins)
        gc.freeze()
        gc.set_threshold(50_000, 50, 100)
        hp.round_(proto, conn, ct, ut, 200)
        hp.round_(proto, conn, ct, ut, n)

    uvloop.run(main())


def collected(n: int, route: str) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    argv = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    argv += [sys.executable, __file__, "--child", str(n), route]
    out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stderr
    found = re.search(r"Collected : (\d+)", out)
    if found is None:
        raise SystemExit(f"no callgrind total in: {out[-500:]}")
    return int(found.group(1))


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(int(sys.argv[2]), sys.argv[3])
        return
    if len(sys.argv) != 2 or sys.argv[1].startswith("-"):
        raise SystemExit(__doc__)
    route = sys.argv[1]
    per_request = (collected(1200, route) - collected(200, route)) // 1000
    from tollway import native

    print(f"{route}: {per_request} instructions per request ({native.STATUS})")


if __name__ == "__main__":
    main()
