"""The receiver's gunicorn worker: gthread, with a deadline for a request's headers and one for the rest.

gunicorn's sync worker serves one connection at a time, so two clients that drip bytes hold both
workers and every delivery waits behind them. gthread serves each connection in a thread of a pool
(`--threads`). A client that drips bytes, or sends none, still holds a thread meanwhile: this worker
arms a deadline when a thread takes a connection (HEADER_SECONDS to send the request line and
headers) and re-arms it once they are parsed (BODY_SECONDS for the body and the answer), and the
socket of a request that misses one is shut down. A slow client therefore holds a thread for
HEADER_SECONDS + BODY_SECONDS at most, and only `threads x workers` of them at once can delay others.
The supervisor sets `--worker-connections` to `--threads`, so a worker whose threads are all busy
accepts nothing and leaves new connections to the others (with more, it queues them in its pool).

A master that dies, SIGKILL included, leaves its workers running: gthread's loop sees the parent change,
stops accepting, and answers the connections it accepted (up to `--graceful-timeout`) before the worker
exits, so no accepted request is reset; this class changes none of that (a deadline still ends a dripping
client). Under serve the listening socket is serve's own (deployer/adapters/listeners.py): what no worker
accepted meanwhile waits in its backlog for the next gunicorn.

gunicorn runs it as `--worker-class deployer.adapters.http_worker.DeadlineThreadWorker`.
"""

from __future__ import annotations

from gunicorn.workers.gthread import ThreadWorker

from deployer.adapters.deadlines import Deadlines

HEADER_SECONDS = 5.0
BODY_SECONDS = 10.0  # GitHub waits 10 s for an answer; a request still reading by then is lost anyway


class DeadlineThreadWorker(ThreadWorker):
    def init_process(self) -> None:
        self.deadlines = Deadlines()
        super().init_process()

    def handle(self, conn):  # noqa: ANN001 - gunicorn's TConn
        conn.deadline_ticket = self.deadlines.arm(conn.sock, HEADER_SECONDS)
        try:
            return super().handle(conn)
        finally:
            self.deadlines.disarm(conn.deadline_ticket)

    def handle_request(self, req, conn):  # noqa: ANN001 - called once the headers are parsed
        self.deadlines.arm(conn.sock, BODY_SECONDS, conn.deadline_ticket)
        return super().handle_request(req, conn)
