"""Dials a SPIFFE mTLS server with py-spiffe-tls (OpenSSL) using the agent's X509-SVID.

Usage: tls_dial.py HOST:PORT EXPECTED_SERVER_ID MESSAGE. OpenSSL verifies the server's chain
against the Workload API bundle and spiffetls authorizes its SPIFFE ID; prints the reply as JSON.
"""
import json
import sys

from spiffe import SpiffeId, X509Source
from spiffetls import dial
from spiffetls.tlsconfig.authorize import authorize_id


def main():
    addr, expected, message = sys.argv[1], sys.argv[2], sys.argv[3]
    with X509Source(timeout_in_seconds=10) as source:
        client_id = str(source.get_x509_context().default_svid.spiffe_id)
        conn = dial(addr, source, authorize_fn=authorize_id(SpiffeId(expected)))
        try:
            conn.sendall(message.encode())
            chunks = []
            while True:
                try:
                    data = conn.recv(4096)
                except Exception:  # noqa: BLE001 - close_notify / EOF ends the reply
                    break
                if not data:
                    break
                chunks.append(data)
        finally:
            conn.close()
    print(json.dumps({"client_id": client_id, "reply": b"".join(chunks).decode()}))


if __name__ == "__main__":
    main()
