#!/usr/bin/env bash
# Smoke test of the compose fleet (docker/compose.yaml, already up): chat and completion
# requests through both routers, each prompt sent twice. The repeat must land on the engine
# that cached it (the x-cache-router-worker header) and report cached prompt tokens
# (usage.prompt_tokens_details.cached_tokens > 0) — also when the repeat goes to the other
# router, which learned the first engine's blocks from the shared event stream.
# Exit 0 when every check passes. Needs curl and python3.
set -euo pipefail
r1="${ROUTER_1:-http://127.0.0.1:8080}"
r2="${ROUTER_2:-http://127.0.0.1:8081}"
deadline=$((SECONDS + ${SMOKE_WAIT_S:-120}))

for r in "$r1" "$r2"; do
  until curl -fsS -m 2 "$r/ready" >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      echo "smoke: $r is not ready (see: docker-compose -f docker/compose.yaml logs)" >&2
      exit 1
    fi
    sleep 1
  done
  echo "smoke: $r ready"
done

# post URL PATH BODY -> prints "worker cached_tokens"
post() {
  local headers body
  headers="$(mktemp)"
  body="$(curl -fsS -m 30 -D "$headers" -H 'content-type: application/json' -d "$3" "$1$2")"
  local worker
  worker="$(grep -i '^x-cache-router-worker:' "$headers" | tr -d '\r' | awk '{print $2}')"
  rm -f "$headers"
  local cached
  cached="$(printf '%s' "$body" | python3 -c 'import json,sys; u=json.load(sys.stdin).get("usage",{}); print((u.get("prompt_tokens_details") or {}).get("cached_tokens",0))')"
  echo "$worker $cached"
}

fail=0
check() { # name first_router second_router path body
  local name="$1" a="$2" b="$3" path="$4" body="$5" first second
  first="$(post "$a" "$path" "$body")"
  # The second router learns the first engine's blocks from the event stream: wait (bounded)
  # until its dry run sees them.
  local until=$((SECONDS + 10)) overlap=0
  while [ $SECONDS -lt $until ]; do
    overlap="$(curl -fsS -m 5 -H 'content-type: application/json' -d "$body" "$b/route" \
      | python3 -c 'import json,sys; print((json.load(sys.stdin).get("chosen") or {}).get("overlap",0))')"
    [ "$overlap" -gt 0 ] && break
    sleep 0.2
  done
  second="$(post "$b" "$path" "$body")"
  local w1="${first%% *}" w2="${second%% *}" cached="${second##* }"
  if [ -n "$w1" ] && [ "$w1" = "$w2" ] && [ "$cached" -gt 0 ]; then
    echo "smoke: ok   $name: $w1 then $w2, cached_tokens $cached"
  else
    echo "smoke: FAIL $name: first '$first', repeat '$second'" >&2
    fail=1
  fi
}

stamp="$(date +%s%N)"
long="$(python3 -c 'print(" ".join(f"Clause {i} of the service agreement covers item {i*7}." for i in range(60)))')"
chat() { printf '{"model":"mock-model","max_tokens":8,"messages":[{"role":"system","content":"%s %s"},{"role":"user","content":"Summarize clause %s."}]}' "$1" "$long" "$2"; }
completion() { printf '{"model":"mock-model","max_tokens":8,"prompt":"%s %s"}' "$1" "$long"; }

check "chat, same router"        "$r1" "$r1" /v1/chat/completions "$(chat "a$stamp" 3)"
check "chat, other router"       "$r1" "$r2" /v1/chat/completions "$(chat "b$stamp" 4)"
check "completion, same router"  "$r2" "$r2" /v1/completions "$(completion "c$stamp")"
check "completion, other router" "$r2" "$r1" /v1/completions "$(completion "d$stamp")"
exit $fail
