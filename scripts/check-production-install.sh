#!/usr/bin/env bash
# Check Sluice installed as a user installs it: no dev extras, so a runtime dependency that
# only the dev tools bring in fails here (kombu's Redis transport needs `packaging`).
#
#   1. The README's distributed path in a copy of this checkout: `make run-distributed`
#      (a new .venv, `pip install -e .`, the API, 4 Celery workers, beat and the sandbox on
#      the local PostgreSQL and Redis) with SLUICE_EXIT_WHEN_DONE=1, so it ends by itself
#      once the demo is over. Every demo task must end final, in the output and in the
#      database, and no worker process may outlive `sluice up`.
#   2. A plain `pip install .` into another new venv: every module imports, and
#      `sluice up --demo --exit-when-done` runs from an empty folder (the package data).
#
# Its own database, Redis database number and free ports, so it runs beside the tests.
# Every step is bounded (CHECK_STEP_TIMEOUT_S, default 480 s). Logs stay in the work
# folder on failure. Usage: bash scripts/check-production-install.sh
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
step_timeout_s=${CHECK_STEP_TIMEOUT_S:-480}
python=${PYTHON:-python3}
work=$(mktemp -d "${TMPDIR:-/tmp}/sluice-prodcheck.XXXXXX")
db="sluice_prodcheck_$$"
redis_db=""
ok=0

say() { echo "production-install: $*"; }
fail() {
  say "FAILED: $*" >&2
  exit 1
}

free_port() {
  "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# A Redis database number nobody uses, claimed the way tests/acceptance claims one.
claim_redis_db() {
  local n
  for n in $(seq 15 -1 1); do
    if [ "$(redis-cli -n "$n" SET sluice:acceptance:claim "prodcheck-$$" NX EX 900)" = "OK" ]; then
      redis_db=$n
      return 0
    fi
  done
  fail "no free Redis database in 1..15"
}

cleanup() {
  # Whatever still runs from the work folder (workers of a `sluice up` that was killed).
  local pids
  pids=$(pgrep -f -- "$work/" || true)
  if [ -n "$pids" ]; then
    # shellcheck disable=SC2086
    kill -TERM $pids 2>/dev/null || true
    sleep 2
    # shellcheck disable=SC2086
    kill -KILL $pids 2>/dev/null || true
  fi
  if [ -n "$redis_db" ]; then redis-cli -n "$redis_db" FLUSHDB >/dev/null || true; fi
  psql -qh 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  if [ "$ok" = 1 ]; then rm -rf "$work"; else say "logs kept in $work" >&2; fi
}
trap cleanup EXIT

bash "$repo/scripts/ensure-services.sh" >/dev/null
command -v redis-cli >/dev/null || fail "redis-cli is needed (Debian package redis-tools)"
command -v psql >/dev/null || fail "psql is needed (Debian package postgresql-client)"
claim_redis_db

# A copy of the checkout as a fresh clone has it: tracked and new files, nothing ignored.
src="$work/sluice"
mkdir -p "$src"
(cd "$repo" && git ls-files -z --cached --others --exclude-standard \
  | tar --null -T - --ignore-failed-read -cf - 2>/dev/null) | tar -xf - -C "$src"

api_port=$(free_port)
sandbox_port=$(free_port)
printf '[sandbox]\nport = %s\n' "$sandbox_port" >"$work/ports.toml"

# -- 1. make run-distributed, to the end of the demo ------------------------------------
say "make run-distributed (pip install -e ., no dev extras; API, 4 workers, beat, demo)"
started=$(date +%s)
set +e
(
  cd "$src"
  SLUICE_CONFIG="$work/ports.toml" SLUICE_PORT="$api_port" SLUICE_EXIT_WHEN_DONE=1 \
    timeout -k 20 "$step_timeout_s" make --no-print-directory run-distributed \
    PYTHON="$python" DIST_DB="$db" DIST_REDIS="redis://127.0.0.1:6379/$redis_db"
) >"$work/run-distributed.log" 2>&1
code=$?
set -e
say "make run-distributed exited $code after $(($(date +%s) - started)) s"
if [ "$code" != 0 ]; then
  tail -n 60 "$work/run-distributed.log" >&2
  [ "$code" = 124 ] && fail "make run-distributed did not end within ${step_timeout_s}s"
  fail "make run-distributed exited $code"
fi
grep -Eq '^([0-9]+)/\1 demo tasks final' "$work/run-distributed.log" \
  || { tail -n 60 "$work/run-distributed.log" >&2; fail "the demo did not report every task final"; }
if grep -q "ModuleNotFoundError\|Traceback" "$work/run-distributed.log"; then
  grep -n -B2 -A12 "Traceback" "$work/run-distributed.log" | head -n 60 >&2
  fail "a traceback in the output"
fi
counts=$(psql -h 127.0.0.1 -U postgres -d "$db" -tAc \
  "SELECT count(*), count(*) FILTER (WHERE status NOT IN ('Completed', 'Error', 'Cancelled')) FROM tasks")
total=${counts%|*}
unfinished=${counts#*|}
[ "$total" -gt 0 ] || fail "the database holds no task"
[ "$unfinished" = 0 ] || fail "$unfinished of $total tasks are not final in the database"
sleep 1
if pgrep -f -- "$src/.venv/bin/python" >/dev/null; then
  fail "worker processes outlived sluice up: $(pgrep -af -- "$src/.venv/bin/python")"
fi
say "demo: $total tasks, all final (output and database); no worker left running"

# -- 2. pip install . (not editable): every module imports, the demo's data ships ---------
say "pip install . into a new venv (no dev extras)"
"$python" -m venv "$work/wheel-venv"
timeout "$step_timeout_s" "$work/wheel-venv/bin/python" -m pip install --quiet "$src" \
  >"$work/pip-install.log" 2>&1 || { tail -n 30 "$work/pip-install.log" >&2; fail "pip install ."; }
mkdir -p "$work/empty"
(cd "$work/empty" && timeout 120 "$work/wheel-venv/bin/python" - <<'EOF'
import importlib
import pkgutil

import sluice

skip = {"sluice.__main__", "sluice.store.migrations.env"}  # a program and Alembic's script
names = [m.name for m in pkgutil.walk_packages(sluice.__path__, "sluice.") if m.name not in skip]
for name in names:
    importlib.import_module(name)
# Transports are imported when a worker connects, not with the package.
for name in ("kombu.transport.redis", "kombu.transport.pyamqp", "psycopg", "redis"):
    importlib.import_module(name)
print(f"production-install: {len(names)} modules of sluice import")
EOF
) || fail "an import failed with only the declared dependencies"
api_port=$(free_port)
set +e
(cd "$work/empty" && SLUICE_CONFIG="$work/ports.toml" SLUICE_PORT="$api_port" \
  timeout -k 10 180 "$work/wheel-venv/bin/sluice" up --demo --exit-when-done) \
  >"$work/up-embedded.log" 2>&1
code=$?
set -e
grep -Eq '^([0-9]+)/\1 demo tasks final' "$work/up-embedded.log" && [ "$code" = 0 ] \
  || { tail -n 40 "$work/up-embedded.log" >&2; fail "embedded demo from the wheel exited $code"; }
say "installed package: embedded demo ran to the end from an empty folder"
ok=1
say "passed"
