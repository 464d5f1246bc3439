"""The embedded engine as a server: moto's threaded server on 127.0.0.1 with the engine fixes.

Run as its own process (`python -m mlbatch.engine.server --port N --ready-file F`);
`mlbatch local up` starts it in the background and `mlbatch local down` stops it with
SIGTERM. Executions run exactly as in the tests: the same fixes are applied in this
process, builders are mocked from the MockConfigFile (`SFN_MOCK_CONFIG`), and the
interpreter's service calls come back to this server (moto sends them to
`http://localhost:$MOTO_PORT`, so MOTO_PORT is set to the port really bound).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import urllib.request
from pathlib import Path

__all__ = ["serve", "main"]


def _enable_executions(endpoint: str) -> None:
    """Turn on moto's Step Functions interpreter, the way moto documents it for its server."""
    request = urllib.request.Request(f"{endpoint}/moto-api/config", method="POST",
                                     data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10):
        pass
    from moto.core.config import default_user_config  # this very process serves: check it took
    if not default_user_config.get("stepfunctions", {}).get("execute_state_machine"):
        raise RuntimeError(f"the engine at {endpoint} did not enable state machine execution")


def serve(port: int, ready_file: Path | None = None, mock_config: Path | None = None,
          stop: threading.Event | None = None) -> None:
    """Serve until SIGTERM/SIGINT (or `stop` is set); write {pid, port} to `ready_file` when ready."""
    from moto.server import ThreadedMotoServer

    from ..sandbox import MOCK_CONFIG
    from . import fixes

    if os.environ.get("MLBATCH_ENGINE_LOG") != "1":
        logging.getLogger("moto.stepfunctions.parser").setLevel(logging.CRITICAL)
        logging.getLogger("werkzeug").setLevel(logging.ERROR)
    os.environ["SFN_MOCK_CONFIG"] = str(mock_config or MOCK_CONFIG)
    fixes.apply_all()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    _, bound = server.get_host_and_port()
    os.environ["MOTO_PORT"] = str(bound)  # where the interpreter sends its service calls
    endpoint = f"http://127.0.0.1:{bound}"
    _enable_executions(endpoint)

    stop = stop or threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    if ready_file:
        tmp = ready_file.with_suffix(".tmp")
        tmp.write_text(json.dumps({"pid": os.getpid(), "port": bound, "endpoint": endpoint}))
        tmp.replace(ready_file)  # atomic: the parent never reads half a file
    print(f"mlbatch engine serving on {endpoint} (pid {os.getpid()})", file=sys.stderr, flush=True)
    stop.wait()
    print("mlbatch engine stopping", file=sys.stderr, flush=True)
    server.stop()


def main(argv: list[str] | None = None) -> int:
    """The server process's entry point (`mlbatch local up` starts it); exit 1 if it cannot serve."""
    parser = argparse.ArgumentParser(prog="python -m mlbatch.engine.server", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (0: any free port)")
    parser.add_argument("--ready-file", type=Path, help="written with {pid, port, endpoint} once serving")
    parser.add_argument("--mock-config", type=Path, help="MockConfigFile.json (default: tests/mocks/)")
    args = parser.parse_args(argv)
    try:
        serve(args.port, args.ready_file, args.mock_config)
    except OSError as exc:  # most often: the port is taken
        print(f"mlbatch engine: cannot serve on 127.0.0.1:{args.port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
