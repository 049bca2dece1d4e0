#!/usr/bin/env bash
# Installs the Debian packages Tollway's tests and demo need, only when missing.
#   scripts/ensure-system-deps.sh         etcd (server + client), redis-server and redis-cli,
#                                         chromium and chromium-driver (the dashboard's browser tests),
#                                         gcc and python3-dev (the mypyc build of the request path)
#   scripts/ensure-system-deps.sh compiler  gcc and python3-dev alone (`make native`)
#   scripts/ensure-system-deps.sh bench   the same, nginx, wrk and h2load (nghttp2-client)
#   scripts/ensure-system-deps.sh node    the same, nodejs and npm (`make ui` only)
set -euo pipefail
pkgs=()
# `make` compiles the request path with mypyc (scripts/build_native.py): a C compiler and the
# headers of the python3 the venv is made from
command -v gcc >/dev/null 2>&1 || pkgs+=(gcc)
python3 -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' || pkgs+=(python3-dev)
if [ "${1:-}" != compiler ]; then
  command -v etcd >/dev/null 2>&1 || pkgs+=(etcd-server)
  command -v etcdctl >/dev/null 2>&1 || pkgs+=(etcd-client)
  # the Redis policies' tests start their own redis-server (and cluster, sentinel) on free ports
  command -v redis-server >/dev/null 2>&1 || pkgs+=(redis-server)
  command -v redis-cli >/dev/null 2>&1 || pkgs+=(redis-tools)
  # the dashboard's browser tests: headless Chromium driven by Selenium through chromedriver
  command -v chromium >/dev/null 2>&1 || pkgs+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || pkgs+=(chromium-driver)
  # the HTTP/2 tests drive curl --http2 / --http2-prior-knowledge
  command -v curl >/dev/null 2>&1 || pkgs+=(curl)
fi
if [ "${1:-}" = node ]; then
  command -v npm >/dev/null 2>&1 || pkgs+=(nodejs npm)
fi
if [ "${1:-}" = bench ]; then
  command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || pkgs+=(nginx)
  command -v wrk >/dev/null 2>&1 || pkgs+=(wrk)
  command -v h2load >/dev/null 2>&1 || pkgs+=(nghttp2-client)  # HTTP/2 and gRPC benchmarks
fi
[ ${#pkgs[@]} -eq 0 ] && exit 0
echo "installing Debian packages: ${pkgs[*]}"
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
# policy-rc.d may refuse to start the system etcd service: that is what we want (we run our own).
$SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
# Never leave the system etcd or redis service holding 2379 / 6379 when the host runs systemd.
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
