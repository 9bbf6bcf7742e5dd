#!/usr/bin/env bash
# Start PostgreSQL, Redis and RabbitMQ when they are installed here but not answering.
# Never fails the build by itself: tests decide (skip locally, fail under
# SLUICE_REQUIRE_SERVICES=1).
set -u

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local name=$1 port=$2
  for _ in $(seq 1 60); do
    port_open "$port" && { echo "services: $name is up on :$port"; return 0; }
    sleep 1
  done
  echo "services: $name did not come up on :$port" >&2
  return 0
}

if ! port_open 5432 && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  wait_port PostgreSQL 5432
fi
if ! port_open 6379 && command -v redis-server >/dev/null 2>&1; then
  echo "services: starting Redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no || true
  wait_port Redis 6379
fi
if ! port_open 5672 && command -v rabbitmq-server >/dev/null 2>&1; then
  echo "services: starting RabbitMQ"
  rabbitmq-server -detached || true
  wait_port RabbitMQ 5672
fi
exit 0
