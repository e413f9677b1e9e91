"""Fetches and validates JWT-SVIDs through the agent with py-spiffe; prints the results as JSON.

Usage: fetch_jwt.py AUDIENCE. Validation is done twice: offline (PyJWT, with the JWT bundle from the
Workload API) and by the agent (ValidateJWTSVID). Negative cases (wrong audience, tampered
signature) are reported as booleans for the Rust test to assert on.
"""
import json
import sys

from spiffe import JwtSource, JwtSvid, WorkloadApiClient


def rejected(fn):
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - any failure counts as a rejection
        return type(e).__name__
    return None


def tamper(token):
    head, payload, sig = token.split(".")
    flipped = ("A" if sig[0] != "A" else "B") + sig[1:]
    return ".".join([head, payload, flipped])


def main():
    aud = sys.argv[1]
    out = {}
    with WorkloadApiClient() as client:
        svid = client.fetch_jwt_svid(audience={aud}, timeout=10)
        token = svid.token
        out["token"] = token
        out["fetched_id"] = str(svid.spiffe_id)
        out["fetched_aud"] = sorted(svid.audience)
        bundles = client.fetch_jwt_bundles(timeout=10)
        out["jwt_bundle_tds"] = sorted(str(b.trust_domain) for b in bundles.bundles)
        bundle = bundles.get_bundle_for_trust_domain(svid.spiffe_id.trust_domain)
        out["jwt_authorities"] = len(bundle.jwt_authorities) if bundle else 0
        offline = JwtSvid.parse_and_validate(token, bundle, {aud})
        out["offline_id"] = str(offline.spiffe_id)
        out["offline_wrong_aud"] = rejected(
            lambda: JwtSvid.parse_and_validate(token, bundle, {aud + "-other"}))
        out["offline_tampered"] = rejected(
            lambda: JwtSvid.parse_and_validate(tamper(token), bundle, {aud}))
        by_agent = client.validate_jwt_svid(token, aud, timeout=10)
        out["agent_id"] = str(by_agent.spiffe_id)
        out["agent_wrong_aud"] = rejected(
            lambda: client.validate_jwt_svid(token, aud + "-other", timeout=10))
        out["agent_tampered"] = rejected(
            lambda: client.validate_jwt_svid(tamper(token), aud, timeout=10))
    with JwtSource(timeout_in_seconds=10) as source:
        s = source.fetch_svid(audience={aud})
        out["source_id"] = str(s.spiffe_id)
        out["source_bundle_tds"] = sorted(str(b.trust_domain) for b in source.bundles)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
