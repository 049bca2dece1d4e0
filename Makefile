# The two commands a newcomer runs: `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
MODE   ?= etcd

.PHONY: ui run test lint typecheck unit e2e native system-deps bench-proxy bench-hotpath bench-plugins bench-router bench-balancer bench-churn bench-limit-redis bench-scale bench-h2 bench-grpc clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $(STAMP)

# The request path compiled with mypyc into src/tollway/_native (tollway/native.py): built when
# missing or when a compiled module's source changed (a no-op otherwise); `NATIVE=0 make test`
# skips it and runs pure Python, as does TOLLWAY_PURE=1 at run time. Needs gcc and the Python
# headers (scripts/ensure-system-deps.sh). The tests check that the compiled build is what they
# run unless NATIVE=0 (tests/unit/test_native.py).
NATIVE ?= 1
export TOLLWAY_NATIVE_EXPECTED := $(if $(filter 0,$(NATIVE)),0,1)
native: $(STAMP)
ifneq ($(NATIVE),0)
	@scripts/ensure-system-deps.sh compiler
	$(BIN)/python scripts/build_native.py
endif

# etcd (Debian etcd-server) is needed by `make run` and by the tests, redis-server by the tests of
# the Redis rate-limit policies; installed when missing.
system-deps:
	@scripts/ensure-system-deps.sh

# The dashboard's assets (src/tollway/admin/ui_assets) are committed: only a change to ui/src
# needs Node.js (Debian's nodejs and npm), to rebuild them with esbuild.
ui:
	command -v npm >/dev/null 2>&1 || scripts/ensure-system-deps.sh node
	cd ui && npm ci --no-audit --no-fund && npm run build

run: $(STAMP) system-deps native
	MODE=$(MODE) scripts/run-demo.sh

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: $(STAMP) system-deps native lint typecheck
	$(BIN)/pytest -q tests; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing on purpose"; exit 1; fi; \
	exit $$rc

unit: $(STAMP) native
	$(BIN)/pytest -q tests/unit

e2e: $(STAMP) system-deps native
	$(BIN)/pytest -q tests/e2e

bench-proxy: $(STAMP) native
	scripts/ensure-system-deps.sh bench
	$(BIN)/python bench/proxy.py

bench-h2: $(STAMP) native
	scripts/ensure-system-deps.sh bench
	$(BIN)/python bench/http2.py

bench-grpc: $(STAMP) native
	scripts/ensure-system-deps.sh bench
	$(BIN)/python bench/grpc_proxy.py

bench-hotpath: $(STAMP) native
	$(BIN)/python bench/hotpath.py
	$(BIN)/python bench/hotpath.py --plugins
	$(BIN)/python bench/hotpath.py --realistic

# The marginal Python cost of every built-in plugin alone on the route (a markdown table).
bench-plugins: $(STAMP) native
	$(BIN)/python bench/hotpath.py --each

bench-limit-redis: $(STAMP) native system-deps
	$(BIN)/python bench/limit_redis.py

bench-router: $(STAMP) native
	$(BIN)/python bench/router.py

bench-balancer: $(STAMP) native
	$(BIN)/python bench/balancer.py

bench-scale: $(STAMP) native
	scripts/ensure-system-deps.sh
	$(BIN)/python bench/scale.py

bench-churn: $(STAMP) native
	scripts/ensure-system-deps.sh bench
	$(BIN)/python bench/router_churn.py

clean:
	rm -rf $(VENV) run build src/tollway/_native .pytest_cache .mypy_cache .ruff_cache
