"""Schemathesis hooks of the contract test (integration-tests/tests/it/contract.rs).

They let generated requests reach past authentication to the real code behind it, while
every generated value that is *meant* to be wrong (negative cases) stays wrong:

- `POST /v1/sites/{site}/webhooks`: a well-formed site id becomes the test's site, and a
  well-formed `webhook-id` / `webhook-timestamp` pair gets the current time and a valid
  Standard Webhooks signature over the exact body bytes sent (when the case sends a
  `webhook-signature` at all: a case may test its absence).
- the delivery's reads: a well-formed site id becomes one of the test's two sites, and the
  private one gets its read token as `Authorization: Bearer` (unless the case brings its
  own); a long-poll waits at most 1 s, and most streams start from 0 or 1 (`since`,
  `Last-Event-ID`; a stream is read for a second only), so a run stays short and sees
  events.
- `PUT /v1/admin/sites/{site}`: a well-formed body `id` becomes the path's (they must be
  equal); writes to the fixture's two sites go to a scratch site instead.
- the admin APIs get the admin token from the command line (`-H`), not from here.

Configured by the test through the environment: SPOOL_CONTRACT_SECRET (the sites'
`whsec_` webhook secret), SPOOL_CONTRACT_PUBLIC_SITE, SPOOL_CONTRACT_PRIVATE_SITE and
SPOOL_CONTRACT_READ_TOKEN.
"""

import base64
import hashlib
import hmac
import json
import os
import re
import time
import zlib

import schemathesis

SITE_ID = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")
WEBHOOK_ID = re.compile(r"^[!-~]{1,256}$")
SECRET = os.environ["SPOOL_CONTRACT_SECRET"]
KEY = base64.b64decode(SECRET[len("whsec_"):])
PUBLIC_SITE = os.environ["SPOOL_CONTRACT_PUBLIC_SITE"]
PRIVATE_SITE = os.environ["SPOOL_CONTRACT_PRIVATE_SITE"]
READ_TOKEN = os.environ["SPOOL_CONTRACT_READ_TOKEN"]


def _is_site_id(value):
    return isinstance(value, str) and SITE_ID.match(value) is not None


def _body_bytes(body):
    """The bytes `requests` sends for a JSON body (`json=`): json.dumps, allow_nan=False."""
    if isinstance(body, bytes):
        return body
    return json.dumps(body, allow_nan=False).encode("utf-8")


def _sign_webhook(case):
    if _is_site_id(case.path_parameters.get("site")):
        case.path_parameters["site"] = PUBLIC_SITE
    headers = case.headers if case.headers is not None else {}
    webhook_id = headers.get("webhook-id")
    timestamp = headers.get("webhook-timestamp")
    if not (isinstance(webhook_id, str) and WEBHOOK_ID.match(webhook_id)):
        return
    if not (isinstance(timestamp, str) and timestamp.isdigit()):
        return
    if "webhook-signature" not in headers:
        # A case testing the missing header.
        return
    try:
        body = _body_bytes(case.body)
    except (TypeError, ValueError):
        return
    now = str(int(time.time()))
    signed = f"{webhook_id}.{now}.".encode() + body
    tag = base64.b64encode(hmac.new(KEY, signed, hashlib.sha256).digest()).decode()
    headers["webhook-timestamp"] = now
    headers["webhook-signature"] = f"v1,{tag}"
    case.headers = headers


def _read_as_a_reader(case):
    site = case.path_parameters.get("site")
    if _is_site_id(site):
        # Half the cases read the public site, half the private one (by the case's content,
        # so a failing case replays the same).
        private = _pick(case) % 2 == 1
        case.path_parameters["site"] = PRIVATE_SITE if private else PUBLIC_SITE
        headers = case.headers if case.headers is not None else {}
        if private and "authorization" not in {k.lower() for k in headers}:
            headers["Authorization"] = f"Bearer {READ_TOKEN}"
            case.headers = headers
    query = case.query or {}
    wait = query.get("wait")
    if _is_int(wait) and wait > 1:
        query["wait"] = 1
    if case.operation.path.endswith("/stream"):
        # A stream is read for a second: most start early on, so they have events to show.
        since = query.get("since")
        if _is_int(since) and 1 < since < 2**63:
            query["since"] = since % 2
        headers = case.headers if case.headers is not None else {}
        last = headers.get("Last-Event-ID")
        if isinstance(last, str) and last.isdigit() and _pick(case) % 3 != 0:
            # A third stay where they are (often beyond the end: `event: reset`).
            headers["Last-Event-ID"] = str(int(last) % 2)
        if "since" not in query and last is None and case.path_parameters.get("site") == PRIVATE_SITE:
            # On the private site, a stream without a start point reads the history.
            query["since"] = 0
            case.query = query


def _pick(case):
    """A number from the case's generated values: the same case, the same number."""
    seen = (case.path_parameters, case.query, dict(case.headers or {}))
    return zlib.crc32(repr(seen).encode())


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _admin_site(case):
    site = case.path_parameters.get("site")
    if site in (PUBLIC_SITE, PRIVATE_SITE) and case.method in ("PUT", "DELETE"):
        # The fixture's sites stay as they are (the stateful phase finds their ids in the
        # list and would change or delete them): writes go to a scratch site instead.
        case.path_parameters["site"] = site = "contract-scratch"
    if case.method == "PUT" and _is_site_id(site) and isinstance(case.body, dict):
        # The body's `id` must be the path's (documented; a schema can't say it).
        if _is_site_id(case.body.get("id")):
            case.body["id"] = site


@schemathesis.hook
def before_call(context, case, kwargs):
    path = case.operation.path
    if path == "/v1/sites/{site}/webhooks":
        _sign_webhook(case)
    elif path.startswith("/v1/sites/{site}/events"):
        _read_as_a_reader(case)
    elif path == "/v1/admin/sites/{site}":
        _admin_site(case)
