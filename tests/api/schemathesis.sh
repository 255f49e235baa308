#!/usr/bin/env bash
# The HTTP API against its own OpenAPI document, with schemathesis (PyPI): every documented
# operation is called with generated inputs (and the document's examples) against a running
# `quiver up` with demo data, and every answer must match the document (status code, content
# type, JSON schema) and never be a server error. Installs schemathesis into a venv under
# target/ when missing; starts the local stack with `quiver up` (and stops it again if it was not
# running before).
#
#   tests/api/schemathesis.sh                 # 100 examples per operation
#   EXAMPLES=1000 tests/api/schemathesis.sh   # longer
set -euo pipefail
cd "$(dirname "$0")/../.."

say() { echo "api-check: $*" >&2; }
die() { echo "api-check: error: $*" >&2; exit 1; }
source deploy/local/installing.sh
venv=target/schemathesis-venv
python_venv "$venv" 'schemathesis>=4,<5'
cargo build -q --bin quiver
quiver=target/debug/quiver

port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
run=apicheck-$$
work=$(mktemp -d)
export QUIVER__API__LISTEN=127.0.0.1:$port
export QUIVER__INGEST__ADMIN_LISTEN=
export QUIVER__MONITOR__ADMIN_LISTEN=
export QUIVER__KAFKA__TOPIC_PREFIX=$run.
export QUIVER__INGEST__GROUP_ID=$run-ingest
export QUIVER__REDIS__KEY_PREFIX=$run
export QUIVER__STORE__DIR=$work/store

stack_was_up=false
if "$quiver" stack status 2>&1 | grep -q "tansu: running"; then stack_was_up=true; fi

"$quiver" up --count 4000 --rate 1000 --users 300 --warmup-secs 3 >"$work/up.log" 2>&1 &
up=$!
cleanup() {
    kill -INT "$up" 2>/dev/null || true
    wait "$up" 2>/dev/null || true
    if [[ $stack_was_up == false ]]; then "$quiver" stack down >/dev/null 2>&1 || true; fi
    rm -rf "$work"
}
trap cleanup EXIT

api=http://127.0.0.1:$port
echo "api-check: waiting for the API at $api with demo features"
for _ in $(seq 1 180); do
    if curl -fs "$api/v1/features/user_txn/u-000001" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$up" 2>/dev/null; then cat "$work/up.log"; echo "api-check: quiver up stopped"; exit 1; fi
    sleep 1
done
curl -fs "$api/v1/features/user_txn/u-000001" >/dev/null || { tail -30 "$work/up.log"; echo "api-check: no features after 180 s"; exit 1; }

"$venv/bin/schemathesis" run "$api/openapi.json" \
    --checks all \
    --max-examples "${EXAMPLES:-100}" \
    --generation-deterministic \
    --suppress-health-check all
echo "api-check: the API matches its OpenAPI document"
