#!/bin/bash
# The "old way" load balancer for issue 9's side-by-side comparison (tests/tests/e2e_scenarios.rs,
# docs/benchmarks-e2e.md), in the style of the public wavelet-stack setup this project
# replaces: every 10 s, read every registered node from etcd, regenerate the whole HAProxy
# configuration with text tools, and reload HAProxy whenever the file differs. No health checks,
# no readiness (every registered node is a server, whatever its state), no retries to another
# server, no runtime API. Used only through compose/e2e-wavelet-lb.yml; not for production.
#
# Runs as the lb container's entrypoint (the lb image: haproxy + the `peerkeep` CLI, which
# reads etcd with the container's PEERKEEP_* settings).
set -u

cfg=/etc/haproxy/generated/haproxy.cfg
master_socket=/run/haproxy/master.sock
interval=${WAVELET_LB_INTERVAL:-10}

# The whole configuration for the current registry content, on stdout.
render() {
  local servers n=0 addr
  servers=$(peerkeep ls --json | grep -o '"api":"[^"]*"' | cut -d'"' -f4 | sort) || return 1
  cat <<CFG
global
    maxconn 4096
    stats socket /run/haproxy/admin.sock mode 600 level admin

defaults
    mode http
    timeout connect 5s
    timeout client 50s
    timeout server 50s

frontend rpc
    bind 0.0.0.0:8000
    default_backend rpc

backend rpc
    balance roundrobin
CFG
  for addr in $servers; do
    n=$((n + 1))
    printf '    server node%d %s\n' "$n" "$addr"
  done
}

update() {
  local new=$cfg.new
  render >"$new" || { rm -f "$new"; return; }
  if ! cmp -s "$cfg" "$new"; then
    mv "$new" "$cfg"
    # Master-worker mode: SIGUSR2 makes the master re-read the file and start new workers.
    [[ -n ${haproxy_pid:-} ]] && kill -USR2 "$haproxy_pid"
  fi
  rm -f "$new"
}

stop() {
  [[ -n ${haproxy_pid:-} ]] && kill -USR1 "$haproxy_pid" && wait "$haproxy_pid"
  exit 0
}
trap stop TERM INT

until update && [[ -s $cfg ]]; do sleep 1; done
haproxy -W -db -S "$master_socket" -f "$cfg" &
haproxy_pid=$!
while :; do
  sleep "$interval" &
  wait $!
  update
done
