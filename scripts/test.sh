#!/usr/bin/env bash
# Every check a change must pass: proto lint, generated code (Go and
# TypeScript) in step with proto/, a type check of the TypeScript, go vet,
# the Go tests with the race detector, and the deployment files (deploy/
# and compose.yaml, checked by the separate module deploy/validate).
#
# Tests that need PostgreSQL or Redis use FLOWGATE_TEST_DATABASE_URL and
# FLOWGATE_TEST_REDIS_URL; when those are unset and the services answer on
# their usual local ports, they are used. Browser tests need Debian's
# chromium, and the grpc-web client test Node and the npm packages; without
# them they skip, except in CI (CI=true), where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*"; }

step "npm ci (the TypeScript generator, type checker and grpc-web client, pinned in package-lock.json)"
npm ci --no-audit --no-fund --loglevel=error

step "buf lint"
go tool buf lint

step "buf generate (gen/ must be up to date)"
go tool buf generate
if [ -n "$(git status --porcelain -- gen)" ]; then
  git status --porcelain -- gen
  git --no-pager diff --stat -- gen
  echo "gen/ differs from what proto/ generates: run 'go tool buf generate' and commit gen/" >&2
  exit 1
fi

step "console build (server/console/dist must be what web/ builds)"
node web/build.mjs >/dev/null
if [ -n "$(git status --porcelain -- server/console/dist)" ]; then
  git status --porcelain -- server/console/dist
  echo "server/console/dist differs from what web/ builds: run 'node web/build.mjs' and commit it" >&2
  exit 1
fi

step "tsc (the generated TypeScript, examples/browser-client.ts and the e2e grpc-web client type-check)"
npx --no-install tsc -p tsconfig.json

step "go vet"
go vet ./...

if [ -z "${FLOWGATE_TEST_DATABASE_URL:-}" ] && command -v pg_isready >/dev/null && pg_isready -q -h 127.0.0.1 -p 5432; then
  export FLOWGATE_TEST_DATABASE_URL="postgres://postgres@127.0.0.1:5432/test?sslmode=disable"
fi
if [ -z "${FLOWGATE_TEST_REDIS_URL:-}" ] && command -v redis-cli >/dev/null && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  export FLOWGATE_TEST_REDIS_URL="redis://127.0.0.1:6379/0"
fi
echo "PostgreSQL tests: ${FLOWGATE_TEST_DATABASE_URL:-skipped (no database)}"
echo "Redis tests: ${FLOWGATE_TEST_REDIS_URL:-skipped (no redis)}"

step "go test -race"
go test -race -count=1 -timeout 12m ./...

step "deploy/ and compose.yaml (kustomize build, strict Kubernetes API types, checked against the binaries)"
(cd deploy/validate && go vet ./... && go test -count=1 ./...)
