#!/usr/bin/env python3
"""Prints a curl that sends a signed demo webhook (Standard Webhooks) to the local ingest.

Usage: demo-webhook.py [--url http://127.0.0.1:8080] [--site demo] [--sites-file demo/sites.json]
The signature carries the current time, so the printed command is valid for 5 minutes.
"""
import argparse, base64, hashlib, hmac, json, os, shlex, time, uuid

here = os.path.dirname(os.path.abspath(__file__))
p = argparse.ArgumentParser()
p.add_argument("--url", default=os.environ.get("SPOOL_INGEST_URL", "http://127.0.0.1:8080"))
p.add_argument("--site", default="demo")
p.add_argument("--sites-file", default=os.path.join(here, "..", "demo", "sites.json"))
p.add_argument("--slug", default="hello-world")
args = p.parse_args()

site = next(s for s in json.load(open(args.sites_file)) if s["id"] == args.site)
key = base64.b64decode(site["webhook_secret"].removeprefix("whsec_"))
msg_id = "msg_" + uuid.uuid4().hex
ts = str(int(time.time()))
body = json.dumps({
    "type": "content.published", "collection": "blog",
    "item": {"id": "42", "slug": args.slug, "title": "Hello, world"},
    "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
}, separators=(",", ":"))
sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.{body}".encode(), hashlib.sha256).digest()).decode()
print(" ".join([
    "curl", "-i", "-X", "POST", shlex.quote(f"{args.url}/v1/sites/{args.site}/webhooks"),
    "-H", shlex.quote("content-type: application/json"),
    "-H", shlex.quote(f"webhook-id: {msg_id}"),
    "-H", shlex.quote(f"webhook-timestamp: {ts}"),
    "-H", shlex.quote(f"webhook-signature: v1,{sig}"),
    "--data", shlex.quote(body),
]))
