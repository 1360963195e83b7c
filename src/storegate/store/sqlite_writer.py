"""The SQLite store's writer process: `python -m storegate.store.sqlite_writer CONFIG FD`, started by
the server (store/writer.py says why a process), never by hand. It opens the database, says whether
it could, and runs the server's writes in group commits until the server closes its side of the
socket FD."""

import signal
import sys

# First, before anything slow: the process ends when the server closes its side (after committing
# everything sent), not on the Ctrl-C, SIGTERM or hang-up sent to the whole process group: those go
# to the server, which then stops it.
for _sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
    signal.signal(_sig, signal.SIG_IGN)


def main(argv: list[str]) -> int:
    import json
    import logging

    # Only what the writes need: not the server's modules, nor asyncio (a store opens as fast as this
    # process starts).
    from storegate.store.sqlite_writes import connect_writer, write
    from storegate.store.writer_process import Wedged, send_ready, serve, socket_from_argv

    config = json.loads(argv[0])
    logging.basicConfig(level=config["log_level"], format="%(message)s", stream=sys.stderr)
    sock = socket_from_argv(argv)
    try:
        conn = connect_writer(config["path"], config["cache_kib"], config["synchronous"])
    except Exception as exc:
        send_ready(sock, exc)
        return 1
    try:
        send_ready(sock, None)
        serve(conn, sock, write)
    except Wedged as exc:
        logging.getLogger("storegate.store").error("%s; ending this writer process for a new one", exc)
        return 1
    finally:
        conn.close()
        sock.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
