"""NAME
    spoold-webui - spoold's web UI server

SUMMARY
    spoold-webui [--config FILE] [--bind ADDRESS] [--port PORT]

DESCRIPTION
    Serves the web UI (dashboard, queue, statistics, contacts, lists,
    templates, send, mailouts, campaigns, the public unsubscribe page, JSON
    API, Prometheus /metrics, /healthz) with waitress, a production WSGI server, in one
    process with a pool of threads.  It reads the same settings file as
    spoold (--config, else $SPOOLD_CONFIG, else /etc/spoold/spoold.toml) and
    works on spoold's database through spoold's store only: it never talks
    to the queue runner, except to poke it after releasing or requeueing
    rows or creating or resuming a mailout, as ``spoold release`` and
    ``spoold mailout create|resume`` do.  It upgrades the schema at start, as
    every spoold command does.  Users come from ``spoold users add``.

    --port 0 takes any free port; the ``webui_listening`` log line names the
    address actually bound.  SIGTERM or SIGINT stop the server at once
    (requests in flight are cut: the UI holds no state worth a grace period).

DIAGNOSTICS
    One log line (structlog, as spoold's) at start with the URL, one per
    database error; a bad setting or an unreachable database at start is one
    line on stderr and exit status 78 (settings) or 74/75 (database).

CONFIGURATION
    [webui] bind (127.0.0.1), port (8025), secret_key (empty: generated and
    kept in the database), session_lifetime (12h), secure_cookies (false),
    trusted_proxies (0), login_limit ("5 per minute;30 per hour"), threads
    (8), page_size (50), poll_interval (2), heartbeat_timeout (20),
    metrics_public (false); [database] url; [runner] run_dir (to poke),
    max_lifetime (a mailout's default expiry); [mailout] sender, secret,
    unsubscribe_url, unsubscribe_mailto (previews, unsubscribe tokens);
    [log] format, level.  See etc/spoold.toml.
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from types import FrameType

from waitress.server import create_server

from spoold import config as config_mod
from spoold.errors import SpooldError
from spoold.log import configure as configure_log
from spoold.log import get_logger
from spoold.store import store_for
from webui.app import create_app


def _stop(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="spoold-webui", description="spoold's web UI server.")
    parser.add_argument("--config", help="settings file (default: $SPOOLD_CONFIG or "
                                         f"{config_mod.DEFAULT_PATH})")
    parser.add_argument("--bind", help="listen address (default: webui.bind)")
    parser.add_argument("--port", type=int, help="listen port, 0 for any (default: webui.port)")
    args = parser.parse_args(argv)
    try:
        config = config_mod.load(args.config)
        configure_log(config.log.format, config.log.level)
        store_for(config).close()  # create or upgrade the schema, as spoold does
        app = create_app(config)
    except SpooldError as exc:
        print(f"spoold-webui: {exc}", file=sys.stderr)
        return exc.exit_status
    bind = args.bind or config.webui.bind
    port = config.webui.port if args.port is None else args.port
    try:
        server = create_server(app, host=bind, port=port, threads=config.webui.threads,
                               ident="spoold-webui")
    except OSError as exc:
        print(f"spoold-webui: cannot listen on {bind}:{port}: {exc.strerror}", file=sys.stderr)
        return 71  # EX_OSERR
    host = f"[{bind}]" if ":" in bind else bind
    get_logger().info("webui_listening", url=f"http://{host}:{server.effective_port}/")
    signal.signal(signal.SIGTERM, _stop)
    try:
        server.run()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.close()
        app.extensions["spoold"].close()
    return 0
