"""The backend of the browser test (standard library only).

  browser_app.py --port-file FILE --report FILE [--streams N]

Listens on 127.0.0.1 (a free port, written to --port-file) and serves:
  GET /            a page that opens N EventSources at once (more than the 6 connections
                   per host a browser opens over HTTP/1.1), waits until each has its
                   first event, then POSTs what it saw to /report;
  GET /events?i=K  an endless event stream: "hello K", then "tick" every 500 ms;
  POST /report     writes the body (JSON) to the --report file.
"""

import argparse
import http.server
import os
import threading
import time

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tidegate h2</title></head>
<body><p id="state">waiting</p>
<script>
const N = %d;
const got = new Array(N).fill(null);
const sources = [];
let sent = false;
function report(extra) {
  if (sent) return;
  sent = true;
  const nav = performance.getEntriesByType('navigation')[0];
  const body = {
    nav: nav ? nav.nextHopProtocol : null,
    got: got,
    resources: performance.getEntriesByType('resource').map(r => [r.name, r.nextHopProtocol]),
    extra: extra || null,
  };
  fetch('/report', {method: 'POST', body: JSON.stringify(body)});
  document.getElementById('state').textContent = 'reported';
}
for (let i = 0; i < N; i++) {
  const es = new EventSource('/events?i=' + i);
  sources.push(es);
  es.onmessage = (e) => {
    if (got[i] === null) {
      got[i] = e.data;
      if (got.every(g => g !== null)) report();
    }
  };
}
// Whatever arrived by then, so the test sees what was missing rather than a timeout.
setTimeout(() => report('timeout'), 8000);
</script></body></html>
"""


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    streams = 8
    report_path = None

    def log_message(self, fmt, *args):
        pass

    def do_GET(self):
        if self.path == "/":
            body = (PAGE % self.streams).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        if self.path.startswith("/events"):
            i = self.path.split("i=", 1)[-1]
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Cache-Control", "no-cache")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            try:
                self.wfile.write(("data: hello %s\n\n" % i).encode())
                self.wfile.flush()
                # Bounded: the browser goes away well before this.
                for _ in range(120):
                    time.sleep(0.5)
                    self.wfile.write(b"data: tick\n\n")
                    self.wfile.flush()
            except (BrokenPipeError, ConnectionResetError):
                pass
            return
        self.send_error(404)

    def do_POST(self):
        n = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(n)
        tmp = self.report_path + ".tmp"
        with open(tmp, "wb") as f:
            f.write(body)
        os.rename(tmp, self.report_path)
        self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port-file", required=True)
    p.add_argument("--report", required=True)
    p.add_argument("--streams", type=int, default=8)
    args = p.parse_args()
    Handler.streams = args.streams
    Handler.report_path = args.report
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    tmp = args.port_file + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(server.server_address[1]))
    os.rename(tmp, args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
