"""The lifecycle the fake HTTP servers of the tests share: a stdlib threading server on a free
127.0.0.1 port, started and stopped from the test. Subclasses give the request handler class."""
from __future__ import annotations

import threading
from http.server import ThreadingHTTPServer


class FakeHTTPServer:
    port = 0
    _server: ThreadingHTTPServer | None = None

    def handler_class(self) -> type:
        raise NotImplementedError

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        server = ThreadingHTTPServer(("127.0.0.1", self.port), self.handler_class())
        server.daemon_threads = True
        self.port = server.server_address[1]
        self._server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
