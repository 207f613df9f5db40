"""A small mitmproxy addon for bench/run.sh: signs token requests like tokenrelay does.

Each request gets a private_key_jwt client assertion and a DPoP proof (both ES256, PyJWT) and
is relayed by mitmproxy in reverse mode over mTLS (`client_certs`).

    mitmdump --mode reverse:https://127.0.0.1:PORT -s mitm_sign.py --set client_certs=bundle.pem ...
"""

import base64
import hashlib
import json
import os
import secrets
import time

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

CLIENT_ID = "bench"
JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def thumbprint(jwk: dict) -> str:
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


class Sign:
    def __init__(self) -> None:
        self.client_key = ec.generate_private_key(ec.SECP256R1())
        self.dpop_key = ec.generate_private_key(ec.SECP256R1())
        self.kid = thumbprint(json.loads(ECAlgorithm.to_jwk(self.client_key.public_key())))
        self.dpop_jwk = json.loads(ECAlgorithm.to_jwk(self.dpop_key.public_key()))
        # The harness verifies the assertions with the client's public key.
        if os.environ.get("BENCH_MITM_JWK"):
            with open(os.environ["BENCH_MITM_JWK"], "w") as f:
                json.dump(json.loads(ECAlgorithm.to_jwk(self.client_key.public_key())), f)

    def request(self, flow) -> None:
        req = flow.request
        now = int(time.time())
        origin = f"{req.scheme}://{req.host}:{req.port}"
        assertion = jwt.encode(
            {"iss": CLIENT_ID, "sub": CLIENT_ID, "aud": origin, "iat": now, "exp": now + 60,
             "jti": secrets.token_urlsafe(16)},
            self.client_key, algorithm="ES256", headers={"kid": self.kid},
        )
        proof = jwt.encode(
            {"jti": secrets.token_urlsafe(16), "htm": req.method, "htu": origin + req.path.split("?")[0], "iat": now},
            self.dpop_key, algorithm="ES256", headers={"typ": "dpop+jwt", "jwk": self.dpop_jwk},
        )
        form = req.urlencoded_form
        form["client_id"] = CLIENT_ID
        form["client_assertion_type"] = JWT_BEARER
        form["client_assertion"] = assertion
        req.headers["DPoP"] = proof


addons = [Sign()]
