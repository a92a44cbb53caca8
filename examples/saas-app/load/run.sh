#!/usr/bin/env bash
# Load test of the example app on loopback with wrk: what the saas-kit stack costs per
# request, and what row-level security costs on a real query. Prints one table.
#
#   examples/saas-app/load/run.sh            # 10 s per case (about 1 minute)
#   DURATION=30s examples/saas-app/load/run.sh
#
# (a) bare:  GET /bare/ping on a plain axum router (no layers)
# (b) stack: GET /v1/ping behind the full stack: request id, trace, problem, JWT
#            authentication (cached), tenant resolution with membership, rate limit,
#            entitlements, flags and a permission check
# (c) rls:   GET /v1/projects (the stack and a TenantTx query under row-level security)
#     twin:  GET /bare/projects, the same query with WHERE tenant_id on a plain pool
#
# Needs PostgreSQL like `cargo run -p saas-app`; installs wrk (Debian package) when
# missing. The app runs from a release build on PORT (default 3100) with its bare twin
# on PORT+2, on a database of its own (saas_app_load).
set -euo pipefail
cd "$(dirname "$0")/../../.."

DURATION="${DURATION:-10s}"
CONNECTIONS="${CONNECTIONS:-32}"
THREADS="${THREADS:-2}"
PORT="${PORT:-3100}"
BARE_PORT=$((PORT + 2))
export PORT SAAS_APP_BARE_PORT="$BARE_PORT" SAAS_APP_DB="${SAAS_APP_DB:-saas_app_load}"
export LOCAL_ISSUER_PORT=$((PORT + 1)) SAAS_APP_DIR="${SAAS_APP_DIR:-target/saas-app-load}"
# The rate limiter runs (it is part of the stack) with a quota the load cannot reach.
export SAAS_APP_RATE_LIMIT=1000000000

if ! command -v wrk >/dev/null; then
    echo "Installing wrk (Debian package)"
    if [ "$(id -u)" = 0 ]; then apt-get install -y -qq wrk >/dev/null; else sudo apt-get install -y -qq wrk >/dev/null; fi
fi

cargo build --release -q -p saas-app
APP=target/release/saas-app
"$APP" > target/saas-app-load.log 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
    curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break
    if ! kill -0 $PID 2>/dev/null; then cat target/saas-app-load.log; exit 1; fi
    sleep 0.2
done
TOKEN="$("$APP" mint-token ada)"
rss() { awk '/VmRSS/ {print $2}' "/proc/$PID/status"; }

# Warm up (JWKS fetch, caches, connections), then measure.
for url in "http://127.0.0.1:$PORT/v1/ping" "http://127.0.0.1:$PORT/v1/projects"; do
    wrk -t1 -c4 -d2s -H "authorization: Bearer $TOKEN" -H "x-tenant-id: acme" "$url" >/dev/null
done
RSS_START=$(rss)

run() { # name url -> "rps p50_ms errors"
    local out
    out=$(wrk -t"$THREADS" -c"$CONNECTIONS" -d"$DURATION" --latency \
        -H "authorization: Bearer $TOKEN" -H "x-tenant-id: acme" "$2")
    local rps p50 errors non2xx
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1 == "50%" {print $2}' <<<"$out")
    errors=$(awk '/Socket errors/ {s=0; for (i=4;i<=NF;i+=2) s+=$i; print s}' <<<"$out")
    non2xx=$(awk '/Non-2xx or 3xx responses/ {print $5}' <<<"$out")
    echo "$rps $p50 $(( ${errors:-0} + ${non2xx:-0} ))"
}
read -r A_RPS A_P50 A_ERR < <(run bare "http://127.0.0.1:$BARE_PORT/bare/ping")
read -r B_RPS B_P50 B_ERR < <(run stack "http://127.0.0.1:$PORT/v1/ping")
read -r T_RPS T_P50 T_ERR < <(run twin "http://127.0.0.1:$BARE_PORT/bare/projects")
read -r C_RPS C_P50 C_ERR < <(run rls "http://127.0.0.1:$PORT/v1/projects")
RSS_END=$(rss)

CORES=$(nproc)
python3 - "$A_RPS" "$B_RPS" "$T_RPS" "$C_RPS" "$A_P50" "$B_P50" "$T_P50" "$C_P50" \
    "$A_ERR" "$B_ERR" "$T_ERR" "$C_ERR" "$RSS_START" "$RSS_END" "$CORES" "$DURATION" "$CONNECTIONS" <<'PY'
import sys, platform
a, b, t, c = (float(x) for x in sys.argv[1:5])
p50 = sys.argv[5:9]
errs = [int(x) for x in sys.argv[9:13]]
rss0, rss1, cores = int(sys.argv[13]), int(sys.argv[14]), int(sys.argv[15])
dur, conns = sys.argv[16], sys.argv[17]
# CPU time per request on a saturated machine (wrk shares the cores): cores / throughput.
cost = (cores / b - cores / a) * 1e6
cpu = open("/proc/cpuinfo").read()
model = next((l.split(":", 1)[1].strip() for l in cpu.splitlines() if l.startswith("model name")), platform.machine())
print(f"\nsaas-app under wrk on {cores} cores ({model}), {conns} connections, {dur} per case\n")
print("| case | requests/s | p50 | errors | ratio | goal |")
print("|---|---|---|---|---|---|")
print(f"| (a) bare axum route | {a:,.0f} | {p50[0]} | {errs[0]} | | |")
print(f"| (b) same route, full stack | {b:,.0f} | {p50[1]} | {errs[1]} | {b/a:.2f}× of (a); {cost:.1f} µs CPU per request more | ≥ 0.7×; ≤ 10 µs |")
print(f"| (c) twin: same query, plain pool | {t:,.0f} | {p50[2]} | {errs[2]} | | |")
print(f"| (c) GET /v1/projects, stack + RLS | {c:,.0f} | {p50[3]} | {errs[3]} | {c/t:.2f}× of its twin | ≥ 0.9× |")
print(f"\nresident memory: {rss0/1024:.1f} MiB after warm-up, {rss1/1024:.1f} MiB at the end")
ok = b / a >= 0.7 and cost <= 10 and c / t >= 0.9 and sum(errs) == 0 and rss1 <= rss0 * 1.25 + 8192
print("all goals met" if ok else "NOT ALL GOALS MET")
sys.exit(0 if ok else 1)
PY
