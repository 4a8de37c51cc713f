#!/usr/bin/env bash
# Measures the CPU the gateway process spends per forwarded request, with
# h2load against a running gateway in front of flowgate-backends in another
# process (so the gateway's CPU is counted alone), for:
#   floor        - gRPC straight to the engine backend (the backend's CPU)
#   grpc->grpc   - gRPC through the gateway
#   rest->grpc   - REST/JSON (HTTP/2 prior knowledge) through the gateway
# Usage: scripts/loadtest.sh [requests] [connections] [streams per connection]
# Needs h2load (Debian: nghttp2-client).
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-40000} C=${2:-4} M=${3:-16}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

go build -o "$work/flowgate" ./cmd/flowgate
go build -o "$work/flowgate-backends" ./cmd/flowgate-backends

# The backends accept only calls the gateway signed with the key they share.
FLOWGATE_BACKEND_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
export FLOWGATE_BACKEND_KEY
"$work/flowgate-backends" -agent-port 0 -runtime-port 0 -engine-port 0 -host 127.0.0.1 \
  -data-dir "$work/data" -log-format text >"$work/backends.out" 2>"$work/backends.log" &
backends_pid=$!
for _ in $(seq 1 50); do grep -q 'engine on' "$work/backends.out" 2>/dev/null && break; sleep 0.2; done
read -r agent runtime engine < <(sed -E 's/.*agent on ([^,]+), runtime on ([^,]+), engine on (.*)$/\1 \2 \3/' "$work/backends.out")

WORKFLOW_AGENT_HOST=${agent%:*} WORKFLOW_AGENT_PORT=${agent##*:} \
WORKFLOW_RUNTIME_HOST=${runtime%:*} WORKFLOW_RUNTIME_PORT=${runtime##*:} \
WORKFLOW_ENGINE_HOST=${engine%:*} WORKFLOW_ENGINE_PORT=${engine##*:} \
  "$work/flowgate" -listen 127.0.0.1:0 >"$work/gateway.out" 2>/dev/null &
gateway_pid=$!
for _ in $(seq 1 50); do grep -q 'serving on' "$work/gateway.out" 2>/dev/null && break; sleep 0.2; done
gateway=$(grep -o 'http://[0-9.:]*' "$work/gateway.out")

# ExecuteWorkflowRequest{workflow_definition: {nodes: [{id: "t", type: "trigger"}]}},
# in a gRPC frame.
printf '\x00\x00\x00\x00\x10\x0a\x0e\x12\x0c\x0a\x01t\x12\x07trigger' >"$work/grpc.bin"
printf '{"workflow_definition":{"nodes":[{"id":"t","type":"trigger"}]}}' >"$work/rest.json"

cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; }
tick=$(getconf CLK_TCK)
measure() { # name pid url h2load-args...
  local name=$1 pid=$2 url=$3; shift 3
  h2load -n 2000 -c "$C" -m "$M" "$@" "$url" >/dev/null # warm up
  local before; before=$(cpu "$pid")
  local out; out=$(h2load -n "$N" -c "$C" -m "$M" "$@" "$url")
  local after; after=$(cpu "$pid")
  local ok; ok=$(echo "$out" | sed -nE 's/.*requests: .* ([0-9]+) succeeded.*/\1/p')
  local rps; rps=$(echo "$out" | sed -nE 's/^finished in .*, ([0-9.]+) req\/s.*/\1/p')
  local us; us=$(awk -v c=$((after - before)) -v t="$tick" -v n="$ok" 'BEGIN { printf "%.1f", c / t / n * 1e6 }')
  printf '%-12s %8s req/s  %6s ok of %s  %7s µs CPU per request\n' "$name" "$rps" "$ok" "$N" "$us"
}
grpc=(-d "$work/grpc.bin" -H 'content-type: application/grpc' -H 'te: trailers')
measure floor "$backends_pid" "http://$engine/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow" "${grpc[@]}"
measure grpc-\>grpc "$gateway_pid" "$gateway/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow" "${grpc[@]}"
measure rest-\>grpc "$gateway_pid" "$gateway/api/v1/workflow/execute" -d "$work/rest.json" -H 'content-type: application/json'
