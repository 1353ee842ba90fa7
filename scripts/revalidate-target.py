#!/usr/bin/env python3
"""A stand-in for a site's revalidation route (what `@spool-live/next` does in a Next.js
app): verifies the Standard Webhooks signature and prints the paths and tags it would
revalidate. `make run` starts it on 127.0.0.1:3001 for the demo site.

Usage: revalidate-target.py [--port 3001] [--secret whsec_...]
"""
import argparse, base64, hashlib, hmac, json, os, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

here = os.path.dirname(os.path.abspath(__file__))
p = argparse.ArgumentParser()
p.add_argument("--port", type=int, default=3001)
p.add_argument("--secret", default=None, help="defaults to the demo site's first target secret")
args = p.parse_args()
secret = args.secret or json.load(open(os.path.join(here, "..", "demo", "sites.json")))[0]["revalidate"][0]["secret"]
key = base64.b64decode(secret.removeprefix("whsec_"))
seen = set()


class Handler(BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        msg_id = self.headers.get("webhook-id", "")
        ts = self.headers.get("webhook-timestamp", "0")
        expected = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
        given = [s.removeprefix("v1,") for s in self.headers.get("webhook-signature", "").split()]
        if not any(hmac.compare_digest(expected, g) for g in given) or abs(time.time() - int(ts)) > 300:
            self.send_response(401)
            self.end_headers()
            print("revalidate-target: refused a call with a bad signature", flush=True)
            return
        data = json.loads(body)
        repeat = " (repeat, ignored)" if msg_id in seen else ""
        seen.add(msg_id)
        seqs = [e["seq"] for e in data["events"]]
        print(f"revalidate-target: {msg_id}{repeat} events {seqs}: "
              f"revalidatePath {data['paths']} revalidateTag {data['tags']}", flush=True)
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.end_headers()
        self.wfile.write(b'{"revalidated":true}')

    def log_message(self, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()
