#!/usr/bin/env bash
# `make run`: a working gateway with an example route, on this machine, in the foreground.
#   MODE=etcd (default): a local etcd (data in run/etcd, port 23790) + Tollway with the Admin API.
#   MODE=standalone:     routes from conf/apisix.yaml, no etcd.
set -euo pipefail
cd "$(dirname "$0")/.."
MODE=${MODE:-etcd}
BIN=.venv/bin
mkdir -p run logs
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT INT TERM

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if port_busy 1980; then echo "port 1980 is busy (demo upstream)"; exit 1; fi
$BIN/python scripts/demo_upstream.py 1980 & pids+=($!)

if [ "$MODE" = standalone ]; then
  CONF=conf/config-standalone.yaml
else
  CONF=conf/config.yaml
  if port_busy 23790; then echo "port 23790 is busy (demo etcd)"; exit 1; fi
  etcd --name tollway-demo --data-dir run/etcd \
    --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23800 --initial-advertise-peer-urls http://127.0.0.1:23800 \
    --initial-cluster tollway-demo=http://127.0.0.1:23800 --log-level warn --logger zap \
    > logs/etcd.log 2>&1 & pids+=($!)
  for _ in $(seq 100); do
    curl -fsS http://127.0.0.1:23790/health 2>/dev/null | grep -q true && break
    sleep 0.1
  done
  # The example route, written straight into etcd in APISIX's layout.
  ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:23790 put /apisix/upstreams/demo \
    '{"id":"demo","nodes":{"127.0.0.1:1980":1}}' >/dev/null
  ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:23790 put /apisix/routes/hello \
    '{"id":"hello","uri":"/hello*","upstream_id":"demo"}' >/dev/null
  # Count every route's traffic (the dashboard's charts and /apisix/prometheus/metrics).
  ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:23790 put /apisix/global_rules/metrics \
    '{"id":"metrics","plugins":{"prometheus":{}}}' >/dev/null
fi

$BIN/tollway start -c "$CONF" & pids+=($!)
for _ in $(seq 100); do
  curl -fsS http://127.0.0.1:7085/status/ready >/dev/null 2>&1 && break
  sleep 0.1
done

cat <<MSG

Tollway is running ($MODE mode). Try:

  curl -i http://127.0.0.1:9080/hello
  curl -i http://127.0.0.1:7085/status/ready
MSG
if [ "$MODE" = standalone ]; then
  cat <<MSG
  curl -i http://127.0.0.1:9080/api/world        # proxy-rewrite + response-rewrite
  # edit conf/apisix.yaml (keep the final #END): changes apply within a second
MSG
else
  cat <<MSG
  KEY=\$(cat run/admin_key)
  curl -i http://127.0.0.1:9180/apisix/admin/routes -H "X-API-KEY: \$KEY"
  curl -i -X PUT http://127.0.0.1:9180/apisix/admin/routes/2 -H "X-API-KEY: \$KEY" \\
       -d '{"uri":"/get","upstream":{"nodes":{"127.0.0.1:1980":1}}}'
  curl -i http://127.0.0.1:9080/get

Dashboard: http://127.0.0.1:9180/ui/  (log in with the admin key: $(cat run/admin_key 2>/dev/null || echo "deployment.admin.admin_key in $CONF"))
MSG
fi
echo
echo "Ctrl-C stops everything."
wait
