"""Verifies a JWT-SVID the way an OIDC relying party does, knowing only the issuer URL:
discovery (<issuer>/.well-known/openid-configuration), then the JWKS at its jwks_uri with
PyJWT's PyJWKClient, then signature, audience and issuer. Prints JSON; the assertions are in
tests/tests/e2e/oidc.rs.

Usage: oidc_verify.py ISSUER AUDIENCE TOKEN
"""

import json
import sys
import urllib.request

import jwt


def main():
    issuer, audience, token = sys.argv[1:4]
    with urllib.request.urlopen(issuer + "/.well-known/openid-configuration") as r:
        conf = json.load(r)
    # No key cache: every run fetches the JWKS, so a rotated key is looked up afresh.
    client = jwt.PyJWKClient(conf["jwks_uri"], cache_keys=False, cache_jwk_set=False)
    signing_key = client.get_signing_key_from_jwt(token)
    algs = conf["id_token_signing_alg_values_supported"]
    claims = jwt.decode(
        token, signing_key.key, algorithms=algs, audience=audience, issuer=conf["issuer"]
    )
    out = {
        "discovery_issuer": conf["issuer"],
        "jwks_uri": conf["jwks_uri"],
        "kid": jwt.get_unverified_header(token)["kid"],
        "alg": jwt.get_unverified_header(token)["alg"],
        "sub": claims["sub"],
        "iss": claims.get("iss"),
        "jwks_kids": [k.key_id for k in client.get_jwk_set().keys],
    }
    for name, kwargs in [
        ("wrong_aud", {"audience": "not-" + audience, "issuer": conf["issuer"]}),
        ("wrong_iss", {"audience": audience, "issuer": conf["issuer"] + "/other"}),
    ]:
        try:
            jwt.decode(token, signing_key.key, algorithms=algs, **kwargs)
            out[name] = None
        except jwt.InvalidTokenError as e:
            out[name] = type(e).__name__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
