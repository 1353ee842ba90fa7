#!/usr/bin/env bash
# `make run`: nats-server (JetStream, data under .run/), then the services with the demo
# sites file, and the demo page with the built @spool-live/client (make run builds both);
# prints a signed demo webhook; Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."

NATS_PORT=${NATS_PORT:-4222}
INGEST_PORT=${INGEST_PORT:-8080}
DELIVERY_PORT=${DELIVERY_PORT:-8081}
DEMO_PAGE_PORT=${DEMO_PAGE_PORT:-3000}
REVALIDATOR_PORT=${REVALIDATOR_PORT:-8082}
TARGET_PORT=${TARGET_PORT:-3001}
export NATS_URL="nats://127.0.0.1:${NATS_PORT}"
export SPOOL_SITES_FILE=${SPOOL_SITES_FILE:-demo/sites.json}
export SPOOL_ADMIN_TOKEN=${SPOOL_ADMIN_TOKEN:-dev-admin-token}
# SPOOL_BIN_DIR runs other builds of the services (as the clients/js tests do).
BIN=${SPOOL_BIN_DIR:-target/release}
CLIENT_DIST=clients/js/packages/client/dist
if [[ ! -f $CLIENT_DIST/index.js ]]; then
  echo "$CLIENT_DIST is missing: build it with \`make run\`, or: cd clients/js && npm ci && npm run build" >&2
  exit 1
fi
mkdir -p .run/nats .run/logs .run/demo-page
# What the demo page server sees: the page and the built client beside it (links, so an
# edited page or a rebuilt client shows on reload).
ln -sfn ../../demo/live.html .run/demo-page/live.html
ln -sfn ../../demo/live.html .run/demo-page/index.html
ln -sfn "../../$CLIENT_DIST" .run/demo-page/spool-live-client

pids=()
stop() {
  trap - INT TERM EXIT
  echo; echo "stopping..."
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap stop INT TERM EXIT

wait_http() { # url name
  for _ in $(seq 1 200); do
    if curl -fsS -o /dev/null "$1" 2>/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "$2 did not become ready; see .run/logs/" >&2
  exit 1
}

"${NATS_SERVER_BIN:-nats-server}" -a 127.0.0.1 -p "$NATS_PORT" -js -sd .run/nats \
  > .run/logs/nats.log 2>&1 &
pids+=($!)

SPOOL_LISTEN="127.0.0.1:${INGEST_PORT}" "$BIN/spool-ingest" > .run/logs/ingest.log 2>&1 &
pids+=($!)
SPOOL_LISTEN="127.0.0.1:${DELIVERY_PORT}" "$BIN/spool-delivery" > .run/logs/delivery.log 2>&1 &
pids+=($!)
# The demo site's target is local: loopback must be allowed (only public addresses are by
# default).
SPOOL_LISTEN="127.0.0.1:${REVALIDATOR_PORT}" \
  SPOOL_ALLOWED_TARGET_NETWORKS="${SPOOL_ALLOWED_TARGET_NETWORKS:-127.0.0.0/8,::1/128}" \
  "$BIN/spool-revalidator" > .run/logs/revalidator.log 2>&1 &
pids+=($!)
# The demo site's revalidation target prints what it is asked to revalidate, right here.
python3 scripts/revalidate-target.py --port "$TARGET_PORT" &
pids+=($!)
python3 -m http.server "$DEMO_PAGE_PORT" --bind 127.0.0.1 --directory .run/demo-page > .run/logs/demo-page.log 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:${INGEST_PORT}/readyz" spool-ingest
wait_http "http://127.0.0.1:${DELIVERY_PORT}/readyz" spool-delivery
wait_http "http://127.0.0.1:${REVALIDATOR_PORT}/readyz" spool-revalidator

cat <<MSG

Spool Live is running (logs in .run/logs/):
  nats-server    $NATS_URL  (JetStream data in .run/nats)
  spool-ingest   http://127.0.0.1:${INGEST_PORT}   admin token: $SPOOL_ADMIN_TOKEN
  spool-delivery http://127.0.0.1:${DELIVERY_PORT}
  spool-revalidator http://127.0.0.1:${REVALIDATOR_PORT}  (dead letters: GET /v1/admin/dlq)
  demo target    http://127.0.0.1:${TARGET_PORT}/api/revalidate  (prints each revalidation below)
  demo site      demo  (public; sites file: $SPOOL_SITES_FILE)
  demo page      http://localhost:${DEMO_PAGE_PORT}/live.html  (@spool-live/client: events, status, reconnects, resets;
                 ?transport=poll forces the long-poll fallback)

Watch the live stream in a terminal (replays history, then live):

curl -N 'http://127.0.0.1:${DELIVERY_PORT}/v1/sites/demo/events/stream?since=0'

Or poll:  curl 'http://127.0.0.1:${DELIVERY_PORT}/v1/sites/demo/events?since=0'

Send a signed demo webhook (valid 5 minutes; \`make demo-webhook\` prints a fresh one):

$(python3 scripts/demo-webhook.py --url "http://127.0.0.1:${INGEST_PORT}")

List the sites:  curl -H 'Authorization: Bearer $SPOOL_ADMIN_TOKEN' http://127.0.0.1:${INGEST_PORT}/v1/admin/sites

Ctrl-C stops everything.
MSG
wait -n "${pids[@]}"
echo "a process exited; see .run/logs/" >&2
