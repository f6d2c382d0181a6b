#!/usr/bin/env bash
# Starts a throwaway PostgreSQL cluster for the tests and exports
# FEDIRELAY_TEST_DATABASE_URL, the connection string the PostgreSQL tests
# use. The cluster lives in a temporary directory, listens only on a Unix
# socket in it, and is stopped and removed when the shell that sourced this
# script exits.
#
#   . .ci/postgres.sh                 # in a shell or script: start, export
#   .ci/postgres.sh go test ./store/pgstore/...   # run one command with it
#
# The cluster trades durability for speed (fsync, synchronous_commit and
# full_page_writes off) unless FEDIRELAY_PG_DURABLE=1, for benchmarks.
#
# It uses initdb, pg_ctl and postgres from PATH, else from the newest
# /usr/lib/postgresql/*/bin, and installs the Debian package postgresql
# with apt-get only if neither has them. PostgreSQL refuses to run as
# root: as root, the cluster runs as the user "nobody".

fedirelay_pg_start() {
  local bin="" d
  if ! command -v initdb >/dev/null 2>&1; then
    for d in /usr/lib/postgresql/*/bin; do
      [ -x "$d/initdb" ] && bin="$d/"
    done
    if [ -z "$bin" ]; then
      echo "postgres.sh: installing PostgreSQL with apt-get" >&2
      DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql >&2
      for d in /usr/lib/postgresql/*/bin; do
        [ -x "$d/initdb" ] && bin="$d/"
      done
    fi
  fi
  local dir run=() fast="-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
  [ "${FEDIRELAY_PG_DURABLE:-}" = 1 ] && fast=""
  dir=$(mktemp -d "${TMPDIR:-/tmp}/fedirelay-pg.XXXXXX")
  if [ "$(id -u)" = 0 ]; then
    chown nobody "$dir"
    run=(runuser -u nobody --)
  fi
  "${run[@]}" "${bin}initdb" -D "$dir/data" -U postgres -A trust --no-sync -E UTF8 --locale=C >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; return 1; }
  "${run[@]}" "${bin}pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -s \
    -o "-k $dir -c listen_addresses='' $fast -c max_connections=300" \
    start || { cat "$dir/server.log" >&2; return 1; }
  FEDIRELAY_PG_DIR=$dir
  FEDIRELAY_PG_CTL=("${run[@]}" "${bin}pg_ctl")
  export FEDIRELAY_TEST_DATABASE_URL="host=$dir user=postgres dbname=postgres"
  trap fedirelay_pg_stop EXIT
}

fedirelay_pg_stop() {
  [ -n "${FEDIRELAY_PG_DIR:-}" ] || return 0
  "${FEDIRELAY_PG_CTL[@]}" -D "$FEDIRELAY_PG_DIR/data" -m immediate -s stop >/dev/null 2>&1 || true
  rm -rf "$FEDIRELAY_PG_DIR"
  FEDIRELAY_PG_DIR=
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  set -euo pipefail
  fedirelay_pg_start
  if [ $# -gt 0 ]; then
    "$@"
  else
    echo "FEDIRELAY_TEST_DATABASE_URL=$FEDIRELAY_TEST_DATABASE_URL (stopped when this shell exits)"
    "${SHELL:-bash}"
  fi
else
  fedirelay_pg_start
fi
