"""A token client that knows nothing about tokenrelay, used by tests/forward.rs.

POSTs a client_credentials request to the URL in argv[1] and prints {"status", "body"} as
JSON. Proxy and trust come only from the environment `tokenrelay ca` prints: requests reads
HTTPS_PROXY / NO_PROXY and REQUESTS_CA_BUNDLE by itself.
"""

import json
import sys

import requests

resp = requests.post(sys.argv[1], data={"grant_type": "client_credentials", "scope": "python"}, timeout=20)
try:
    body = resp.json()
except ValueError:
    body = resp.text
print(json.dumps({"status": resp.status_code, "body": body}))
