"""Fetches X.509 material from the agent's Workload API with py-spiffe and prints it as JSON.

The endpoint comes from SPIFFE_ENDPOINT_SOCKET. The Rust test checks the output against the
server's trust bundle, so this script only reports what the library parsed.
"""
import json

from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import WorkloadApiClient, X509Source


def pem(cert):
    return cert.public_bytes(Encoding.PEM).decode()


def main():
    out = {}
    with WorkloadApiClient() as client:
        ctx = client.fetch_x509_context(timeout=10)
        out["context_ids"] = [str(s.spiffe_id) for s in ctx.x509_svids]
        svid = ctx.default_svid
        out["default_id"] = str(svid.spiffe_id)
        out["chain_pem"] = [pem(c) for c in svid.cert_chain]
        out["key_type"] = type(svid.private_key).__name__
        out["fetch_svids_ids"] = [str(s.spiffe_id) for s in client.fetch_x509_svids(timeout=10)]
        out["bundles"] = {
            str(b.trust_domain): sorted(pem(c) for c in b.x509_authorities)
            for b in client.fetch_x509_bundles(timeout=10).bundles
        }
    with X509Source(timeout_in_seconds=10) as source:
        sctx = source.get_x509_context()
        out["source_id"] = str(sctx.default_svid.spiffe_id)
        out["source_bundle_tds"] = sorted(str(b.trust_domain) for b in sctx.x509_bundle_set.bundles)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
