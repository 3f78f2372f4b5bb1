"""An HTTPS server on loopback that serves MTA-STS policies (RFC 8461), for tests.

NAME
    PolicyServer - GET /.well-known/mta-sts.txt over TLS, per Host header

DESCRIPTION
    ``PolicyServer(host, port, context)`` listens on one loopback address
    with a server ssl.SSLContext (fakenet.pki.TestCA.server_context) and
    answers ``GET /.well-known/mta-sts.txt`` with ``policies[Host]`` as
    text/plain, 404 for anything else.  ``fetches`` counts the policies
    served, so a test can tell a cached policy from a fetched one.
"""

from __future__ import annotations

import http.server
import ssl
import threading

WELL_KNOWN = "/.well-known/mta-sts.txt"


class PolicyServer:
    def __init__(self, host: str, port: int, context: ssl.SSLContext) -> None:
        self.host, self.port = host, port
        self.policies: dict[str, str] = {}
        self.fetches = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                name = (self.headers.get("Host") or "").split(":")[0]
                policy = server.policies.get(name)
                if self.path != WELL_KNOWN or policy is None:
                    self.send_error(404)
                    return
                server.fetches += 1
                body = policy.encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # tests read fetches, not a log

        self._httpd = http.server.ThreadingHTTPServer((host, port), Handler)
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.1,),
                                        daemon=True, name=f"policy-{host}")

    def start(self) -> PolicyServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)
