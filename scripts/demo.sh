#!/usr/bin/env bash
# make demo: M1's approval loop on loopback, start to finish, with what
# happens printed as it happens. Everything runs from ./bin and a
# throw-away directory; nothing listens beyond 127.0.0.1 and everything
# stops at the end (or on Ctrl-C).
#
#   goal ─► m1-orchestrator (scripted plan) ─► proposals
#        ─► m1 approve (signs with the operator's key)
#        ─► m1 dev-proxy (standing in for Envoy) ─► m1-authz ─► m1-demo-tool
#
# DEMO_INTERACTIVE=1 asks you to approve the write yourself (m1 approve's
# prompt); by default the demo approves it for you.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-bin}
PORT_BASE=${DEMO_PORT_BASE:-19190}
AUTHZ_GRPC=127.0.0.1:$((PORT_BASE + 1))
AUTHZ_ADMIN=127.0.0.1:$((PORT_BASE + 2))
ORCH=127.0.0.1:$((PORT_BASE + 3))
PROXY=127.0.0.1:$((PORT_BASE + 4))
TOOL=127.0.0.1:$((PORT_BASE + 5))
AUD=demo-tools
export M1_ADMIN_TOKEN=demo-admin-token

work=$(mktemp -d "${TMPDIR:-/tmp}/m1-demo.XXXXXX")
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  echo
  echo "Logs and the store are in $work (remove it when done)."
}
trap cleanup EXIT

say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
wait_http() { # url
  for _ in $(seq 1 100); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done
  echo "not answering: $1 (see $work/*.log)" >&2; exit 1
}
wait_port() { # host:port: something listens there (the dev proxy and the tool have no health URL)
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/${1%:*}/${1##*:}") 2>/dev/null && return 0; sleep 0.1; done
  echo "not listening: $1 (see $work/*.log)" >&2; exit 1
}
api() { # method path [json]
  curl -fsS -X "$1" -H "Authorization: Bearer $M1_ADMIN_TOKEN" -H 'Content-Type: application/json' \
    ${3:+--data "$3"} "http://$ORCH$2"
}
field() { # json field: the first "field": "value" of a JSON document (enough for ids and statuses)
  sed -n "s/.*\"$1\": *\"\([^\"]*\)\".*/\1/p" | head -n 1
}

say "1. The operator's signing key (private, stays with the operator) and the sidecars' public JWKS"
"$BIN/m1" keys gen --out "$work/keys" --kid operator-1
mkdir -p "$work/workspace" && printf 'old notes\n' >"$work/workspace/notes.txt"

say "2. Start the tool pod (demo tool, m1-authz, dev proxy) and the orchestrator"
"$BIN/m1-demo-tool" --listen "$TOOL" --dir "$work/workspace" >"$work/tool.log" 2>&1 & pids+=($!)
"$BIN/m1-authz" --grpc-addr "$AUTHZ_GRPC" --admin-addr "$AUTHZ_ADMIN" --data-dir "$work/data" \
  --jwks-file "$work/keys/jwks.json" --audience "$AUD" --clock-skew 2s >"$work/m1-authz.log" 2>&1 & pids+=($!)
wait_http "http://$AUTHZ_ADMIN/health"
# A new data directory refuses the approvals issued before its state epoch,
# the clock skew after its creation (DESIGN §7); on one host's loopback 2s
# of skew is plenty. The sidecar logs when it accepts approvals.
for _ in $(seq 1 100); do grep -q 'accepting approvals issued since the state epoch' "$work/m1-authz.log" && break; sleep 0.1; done
"$BIN/m1" dev-proxy --listen "$PROXY" --authz "$AUTHZ_GRPC" --upstream "http://$TOOL" >"$work/dev-proxy.log" 2>&1 & pids+=($!)
# The orchestrator verifies every approval with the sidecars' public JWKS
# before it records it, and does not start without one.
"$BIN/m1-orchestrator" --addr "$ORCH" --data-dir "$work/data" --plan-file testdata/plans/demo.yaml \
  --tool-endpoint "http://$PROXY" --jwks-file "$work/keys/jwks.json" --audience "$AUD" >"$work/m1-orchestrator.log" 2>&1 & pids+=($!)
wait_http "http://$ORCH/health"
wait_port "$TOOL"
wait_port "$PROXY"
echo "m1-authz gRPC $AUTHZ_GRPC, admin $AUTHZ_ADMIN; dev proxy $PROXY -> demo tool $TOOL; orchestrator $ORCH"

export M1_ORCHESTRATOR_URL=http://$ORCH M1_SIGNING_KEY=$work/keys/operator-1.jwk M1_AUDIENCE=$AUD USER=${USER:-operator}

say "3. The agent cannot act on its own: a write without an approval is denied by the sidecar"
curl -sS -X POST "http://$PROXY/mcp" -H 'Content-Type: application/json' -H 'Accept: application/json, text/event-stream' \
  --data '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"write_file","arguments":{"path":"notes.txt","content":"pwned"}}}'
echo

say "4. A goal becomes a run; the planner proposes its first step"
run=$(api POST /v1/runs '{"goal":"Review the workspace and record a summary.","agent":"demo-agent"}')
run_id=$(printf '%s' "$run" | field id)
echo "run $run_id"

say "5. Step 1 is read-only: approve every read-risk proposal (logged as auto-approved)"
"$BIN/m1" approve --auto-risk read

say "6. Step 2 writes a file: it needs the operator"
for _ in $(seq 1 50); do
  pending=$(api GET '/v1/proposals?status=pending')
  pid=$(printf '%s' "$pending" | field id)
  [ -n "$pid" ] && break
  sleep 0.1
done
echo "An approval signed with a key that is not in the JWKS (even with the operator's kid"
echo "and the orchestrator's admin token) is refused, and nothing is recorded:"
"$BIN/m1" keys gen --out "$work/mallory" --kid operator-1 >/dev/null
if M1_SIGNING_KEY=$work/mallory/operator-1.jwk "$BIN/m1" approve "$pid"; then
  echo "a forged approval was accepted" >&2; exit 1
fi
echo "Now the operator's own:"
if [ "${DEMO_INTERACTIVE:-}" = 1 ] && [ -t 0 ]; then
  "$BIN/m1" approve
else
  "$BIN/m1" approve "$pid"
fi

say "7. What happened: the run, its tool calls and its cost"
for _ in $(seq 1 50); do
  status=$(api GET "/v1/runs/$run_id" | field status)
  [ "$status" != running ] && break
  sleep 0.1
done
api GET "/v1/runs/$run_id" | sed -n '1,12p'
echo "  ..."
echo "notes.txt now holds: $(cat "$work/workspace/notes.txt")"
api GET /v1/costs

say "8. The audit trail of the run: proposals, approvals, the sidecar's decisions, results, LLM calls"
sleep 0.3 # the audit writers flush every 100 ms
"$BIN/m1" audit export --data-dir "$work/data" --since 1h --run "$run_id" --format csv | cut -d, -f1-12
echo
echo "Each call's decision beside its outcome (from the dev proxy's access log) and the orchestrator's dispatch:"
"$BIN/m1" audit export --data-dir "$work/data" --since 1h --run "$run_id" --format calls
say "9. Every hash chain verifies"
"$BIN/m1" audit verify --data-dir "$work/data"
