"""Moto's S3 server (its S3 app, under the request handler ``python -m moto.server`` uses),
answering one request at a time, on 127.0.0.1 and a port the system picks.

Why one at a time: moto checks a conditional write's ``If-None-Match`` / ``If-Match`` and then
stores the object in a second step, so two racing requests on its threaded server could both
pass the check, which real S3 servers never allow. Serialising the requests (connections stay
concurrent and kept alive, as with a real server) makes each check-and-store atomic, as on S3,
so the compare-and-swap tests test our code and not moto's race.

Usage: ``python serial_moto.py [HOST] [PARENT_PID]``; prints the port on its first line of
stdout, then serves until terminated, or until the process ``PARENT_PID`` is gone (the test
run that started it; under xdist, the run's main process, whose workers share the server).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterable
from typing import Any

from moto.moto_server.werkzeug_app import MotoRequestHandler, create_backend_app
from werkzeug.serving import make_server


def main() -> None:
    host = sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1"
    # S3's own app: moto's dispatcher would work out the service from each request's host,
    # listing its own package folder every time, for a server that only ever serves S3.
    app = create_backend_app("s3")
    # Errors only: a line per request is work for the server and read by nobody.
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    one_at_a_time = threading.Lock()

    def serial(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        with one_at_a_time:
            return list(app(environ, start_response))

    server = make_server(host, 0, serial, threaded=True, request_handler=MotoRequestHandler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if len(sys.argv) > 2:
        threading.Thread(target=_exit_with, args=(int(sys.argv[2]),), daemon=True).start()
    print(server.server_port, flush=True)
    server.serve_forever()


def _exit_with(parent: int) -> None:
    while True:
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:
            pass  # alive, another user's
        time.sleep(0.5)


if __name__ == "__main__":
    main()
