"""The README's Python recipes, run against tokenrelay in front of its demo AS.

Usage: python recipes.py http://127.0.0.1:PORT/demo
Prints one JSON object: what each recipe got.
"""
import json
import sys

import requests
from authlib.common.security import generate_token
from authlib.integrations.requests_client import OAuth2Session

proxy = sys.argv[1]
out = {}

# Python requests: a plain token request; tokenrelay signs it.
r = requests.post(proxy + "/token", data={"grant_type": "client_credentials", "scope": "read"})
body = r.json()
out["requests"] = {"status": r.status_code, "token_type": body.get("token_type"), "verified": body.get("verified")}

# authlib, as the README shows it: the proxy's discovery document, PKCE S256 (the demo AS,
# like most ASes now, requires it), and no client authentication of its own (tokenrelay signs).
meta = requests.get(proxy + "/.well-known/openid-configuration").json()
client = OAuth2Session(
    "demo-app",
    redirect_uri="http://127.0.0.1:8000/callback",
    scope="openid read",
    code_challenge_method="S256",
    token_endpoint_auth_method="none",
)
verifier = generate_token(48)
url, _state = client.create_authorization_url(meta["authorization_endpoint"], code_verifier=verifier)
# The demo AS has no login page: it redirects straight back with the code.
back = requests.get(url, allow_redirects=False)
token = client.fetch_token(
    meta["token_endpoint"], authorization_response=back.headers["location"], code_verifier=verifier
)
out["authlib"] = {
    "token_type": token.get("token_type"),
    "verified": token.get("verified"),
    "token_endpoint": meta["token_endpoint"],
    "id_token": bool(token.get("id_token")),
}
print(json.dumps(out))
