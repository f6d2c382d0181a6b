#!/usr/bin/env bash
# Validates the files in deploy/ with the tools this machine has; a check
# whose tool is missing is skipped with a message. Run from anywhere:
#   bash deploy/check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# systemd unit. systemd-analyze verify wants the ExecStart binary to exist,
# so verify a copy whose ExecStart points at a relay built into a temporary
# directory (or, without Go, at a stand-in executable).
if command -v systemd-analyze >/dev/null 2>&1; then
  if command -v go >/dev/null 2>&1; then
    go build -o "$tmp/relay" ./examples/relay
  else
    cp "$(command -v true)" "$tmp/relay"
  fi
  sed "s#^ExecStart=/usr/local/bin/relay #ExecStart=$tmp/relay #" deploy/fedirelay.service >"$tmp/fedirelay.service"
  grep -q "^ExecStart=$tmp/relay " "$tmp/fedirelay.service" || { echo "deploy/fedirelay.service: ExecStart does not start /usr/local/bin/relay"; exit 1; }
  out=$(systemd-analyze verify "$tmp/fedirelay.service" 2>&1) || { echo "$out"; exit 1; }
  # verify exits 0 on some warnings (unknown or misspelt settings): fail on any output.
  if [ -n "$out" ]; then echo "$out"; exit 1; fi
  echo "ok: systemd-analyze verify deploy/fedirelay.service"
else
  echo "skipped: systemd-analyze not installed (deploy/fedirelay.service)"
fi

# Container image.
if command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
  docker build -q -f deploy/Dockerfile -t fedirelay-check . >/dev/null
  echo "ok: docker build -f deploy/Dockerfile ."
else
  echo "skipped: no Docker daemon (deploy/Dockerfile)"
fi

# nginx: the snippet holds server blocks for the http context; test it in a
# minimal main configuration, with a throwaway certificate in place of the
# Let's Encrypt paths.
if command -v nginx >/dev/null 2>&1 && command -v openssl >/dev/null 2>&1; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=relay.example.org \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" >/dev/null 2>&1
  sed -e "s#/etc/letsencrypt/live/relay.example.org/fullchain.pem#$tmp/cert.pem#" \
      -e "s#/etc/letsencrypt/live/relay.example.org/privkey.pem#$tmp/key.pem#" \
      deploy/nginx.conf >"$tmp/site.conf"
  cat >"$tmp/nginx-main.conf" <<CONF
pid $tmp/nginx.pid;
error_log $tmp/error.log;
events {}
http {
    access_log off;
    client_body_temp_path $tmp;
    proxy_temp_path $tmp;
    fastcgi_temp_path $tmp;
    uwsgi_temp_path $tmp;
    scgi_temp_path $tmp;
    include $tmp/site.conf;
}
CONF
  out=$(nginx -t -q -p "$tmp" -c "$tmp/nginx-main.conf" 2>&1) || { echo "$out"; exit 1; }
  echo "ok: nginx -t with deploy/nginx.conf"
else
  echo "skipped: nginx (or openssl) not installed (deploy/nginx.conf)"
fi

# Caddy.
if command -v caddy >/dev/null 2>&1; then
  out=$(HOME="$tmp" XDG_DATA_HOME="$tmp" XDG_CONFIG_HOME="$tmp" \
    caddy validate --config deploy/Caddyfile --adapter caddyfile 2>&1) || { echo "$out"; exit 1; }
  echo "ok: caddy validate deploy/Caddyfile"
else
  echo "skipped: caddy not installed (deploy/Caddyfile)"
fi
