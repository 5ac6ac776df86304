"""A client of an HA keyfloat cluster through its load balancer, with the official
`licensespring` Python SDK (4.0.0), for tests/ha_failover.rs.

Usage: ha_client.py HOST:PORT STOP_FILE
Until STOP_FILE exists: add one consumption to product `meter`, and register (then now and
then unregister) a user of product `seats`. Every answer is classified:
  acked     : 200 — the consumption is committed and must be in the database exactly once
  refused   : 503 not_leader / server_busy, or 400: known not to have committed
  ambiguous : no answer, 502/504, or anything else (may or may not have committed)
Prints one JSON line {"acked": n, "refused": n, "ambiguous": n, "registered": n} and exits 0.
"""

import json
import os
import sys

import requests
from licensespring.api.error import ClientError
from licensespring.floating_server import FloatingAPIClient

HOST, STOP = sys.argv[1], sys.argv[2]
counts = {"acked": 0, "refused": 0, "ambiguous": 0, "registered": 0}


def refused(exc):
    """Whether a failed call is known not to have committed."""
    if isinstance(exc, ClientError):
        return True
    response = getattr(exc, "response", None)
    if response is None or response.status_code != 503:
        return False
    try:
        return response.json().get("code") in ("not_leader", "server_busy")
    except ValueError:
        # HAProxy's own 503 (no server up): the request never reached a node.
        return True


def call(fn):
    """Runs one SDK call; answers "acked", "refused" or "ambiguous"."""
    try:
        fn()
        return "acked"
    except (requests.RequestException, ValueError) as exc:
        return "refused" if refused(exc) else "ambiguous"


c = FloatingAPIClient(api_protocol="http", api_domain=HOST)
n = 0
while not os.path.exists(STOP):
    n += 1
    counts[call(lambda: c.add_consumption(product="meter", consumptions=1))] += 1
    user = f"py-{n % 4}"
    if call(lambda: c.register_user(product="seats", user=user, os_hostname="py")) == "acked":
        counts["registered"] += 1
        if n % 3 == 0:
            call(lambda: c.unregister_user(product="seats", user=user))
print(json.dumps(counts), flush=True)
