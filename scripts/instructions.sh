#!/usr/bin/env bash
# Counts the instructions the gateway executes per forwarded call, under
# valgrind's callgrind, in front of flowgate-backends in another process.
# Unlike CPU time, the count does not move with what else the machine is
# doing: the same build and load give the same figure to a fraction of a
# percent, so a change of 1% shows in one pair of runs. It leaves out
# what time adds on top: system calls, cache misses, waiting.
#
# For each build given (default: the working tree), it runs:
#   grpc      - gRPC ExecuteWorkflow through the gateway
#   rest      - REST/JSON over HTTP/1.1 through the gateway
#   grpc+pol  - the same with an API key and both rate limits on
#   rest+pol
# Usage: scripts/instructions.sh [git revision ...]
#   N=3000 calls per figure (after 500 to warm up); KEEP=dir keeps the
#   callgrind files, for callgrind_annotate.
# Needs valgrind and h2load (Debian: valgrind, nghttp2-client); a run
# takes about 20 s per figure.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${N:-3000}
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"; git worktree prune' EXIT

build() { # rev -> binary
  local rev=$1 out=$work/flowgate-${1//\//_}
  if [ "$rev" = . ]; then
    go build -o "$out" ./cmd/flowgate
  else
    git worktree add -q --detach "$work/src" "$rev"
    (cd "$work/src" && go build -o "$out" ./cmd/flowgate)
    git worktree remove --force "$work/src"
  fi
  echo "$out"
}
go build -o "$work/flowgate-backends" ./cmd/flowgate-backends

FLOWGATE_BACKEND_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
export FLOWGATE_BACKEND_KEY
"$work/flowgate-backends" -agent-port 0 -runtime-port 0 -engine-port 0 -host 127.0.0.1 \
  -data-dir "$work/data" -log-format text >"$work/backends.out" 2>"$work/backends.log" &
for _ in $(seq 1 50); do grep -q 'engine on' "$work/backends.out" 2>/dev/null && break; sleep 0.2; done
read -r agent runtime engine < <(sed -E 's/.*agent on ([^,]+), runtime on ([^,]+), engine on (.*)$/\1 \2 \3/' "$work/backends.out")

printf '\x00\x00\x00\x00\x10\x0a\x0e\x12\x0c\x0a\x01t\x12\x07trigger' >"$work/grpc.bin"
printf '{"workflow_definition":{"nodes":[{"id":"t","type":"trigger"}]}}' >"$work/rest.json"
key=instructions-key-0123456789
hash=$(printf '%s' "$key" | sha256sum | cut -d' ' -f1)
policy=(-api-keys "$hash:bench:acme:workflows:execute" -rate-limit-ip 1000000 -rate-limit-subject 1000000)

count() { # binary kind policy(0|1) -> instructions per call
  local bin=$1 kind=$2 pol=$3 args=() hdr=() out=$work/cg.out
  [ "$pol" = 1 ] && args=("${policy[@]}") hdr=(-H "x-api-key: $key")
  rm -f "$out"* "$work/gateway.out"
  # Valgrind does not know RDTSCP; signals for asynchronous preemption
  # trip callgrind. Neither changes what a call executes.
  GOMAXPROCS=1 GODEBUG=cpu.rdtscp=off,asyncpreemptoff=1 \
  WORKFLOW_AGENT_HOST=${agent%:*} WORKFLOW_AGENT_PORT=${agent##*:} \
  WORKFLOW_RUNTIME_HOST=${runtime%:*} WORKFLOW_RUNTIME_PORT=${runtime##*:} \
  WORKFLOW_ENGINE_HOST=${engine%:*} WORKFLOW_ENGINE_PORT=${engine##*:} \
    valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" -listen 127.0.0.1:0 "${args[@]}" \
    >"$work/gateway.out" 2>"$work/valgrind.log" &
  local pid=$!
  for _ in $(seq 1 300); do grep -q 'serving on' "$work/gateway.out" 2>/dev/null && break; sleep 0.2; done
  local gateway; gateway=$(grep -o 'http://[0-9.:]*' "$work/gateway.out")
  load() {
    if [ "$kind" = rest ]; then
      h2load --h1 -n "$1" -c 8 -d "$work/rest.json" -H 'content-type: application/json' "${hdr[@]}" "$gateway/api/v1/workflow/execute"
    else
      h2load -n "$1" -c 2 -m 4 -d "$work/grpc.bin" -H 'content-type: application/grpc' -H 'te: trailers' "${hdr[@]}" \
        "$gateway/workflow.engine.v1.WorkflowEngineService/ExecuteWorkflow"
    fi | sed -nE 's/.*requests: .* ([0-9]+) succeeded.*/\1/p'
  }
  load 500 >/dev/null
  callgrind_control -z "$pid" >/dev/null 2>&1
  local ok; ok=$(load "$N")
  callgrind_control -d "$pid" >/dev/null 2>&1
  local total=""
  for _ in $(seq 1 100); do
    total=$(cat "$out".* 2>/dev/null | sed -n 's/^summary: //p' | head -1)
    [ -n "$total" ] && break
    sleep 0.3
  done
  kill -INT "$pid" 2>/dev/null; wait "$pid" 2>/dev/null || true
  [ "$ok" = "$N" ] || { echo "$kind: only $ok of $N calls succeeded" >&2; exit 1; }
  [ -n "${KEEP:-}" ] && mkdir -p "$KEEP" && cp "$out".* "$KEEP/$(basename "$bin")-$kind-$pol.out"
  echo $((total / N))
}

revs=("$@"); [ ${#revs[@]} -gt 0 ] || revs=(.)
printf '%-22s %10s %10s %10s %10s\n' build grpc rest grpc+pol rest+pol
for rev in "${revs[@]}"; do
  bin=$(build "$rev")
  printf '%-22s %10s %10s %10s %10s\n' "$rev" "$(count "$bin" grpc 0)" "$(count "$bin" rest 0)" \
    "$(count "$bin" grpc 1)" "$(count "$bin" rest 1)"
done
