"""Holds many HTTP/2 streams open on one TLS connection (the Python `h2` library).

  h2_streams.py --port P --name NAME --ca CA.pem --streams N --path PATH

Connects to 127.0.0.1:P over TLS (SNI NAME, verified against CA.pem, ALPN h2), opens N
GET streams on PATH at once and waits until each has its response head and a first
DATA frame; then prints `open N` and waits for a line on stdin. After that line it
waits (at most 15 s) until every stream has received one more DATA frame, and prints
one JSON object: {"alpn", "opened", "alive_after", "ended", "reset", "statuses"}.
"""

import argparse
import json
import socket
import ssl
import sys
import time

import h2.config
import h2.connection
import h2.events


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--streams", type=int, default=100)
    p.add_argument("--path", default="/")
    args = p.parse_args()

    ctx = ssl.create_default_context(cafile=args.ca)
    ctx.set_alpn_protocols(["h2"])
    raw = socket.create_connection(("127.0.0.1", args.port), timeout=15)
    sock = ctx.wrap_socket(raw, server_hostname=args.name)
    alpn = sock.selected_alpn_protocol()
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    # Room for every stream's events without waiting for window updates.
    conn.increment_flow_control_window(2**30)
    sock.sendall(conn.data_to_send())

    ids = []
    for _ in range(args.streams):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(
            sid,
            [(":method", "GET"), (":scheme", "https"), (":authority", args.name), (":path", args.path)],
            end_stream=True,
        )
        ids.append(sid)
    sock.sendall(conn.data_to_send())

    statuses = {}
    data = {sid: 0 for sid in ids}
    ended = set()
    reset = set()

    def pump(until, deadline):
        # Bounded by the deadline.
        while not until() and time.monotonic() < deadline:
            sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = sock.recv(65536)
            except socket.timeout:
                break
            if not chunk:
                break
            for ev in conn.receive_data(chunk):
                if isinstance(ev, h2.events.ResponseReceived):
                    statuses[ev.stream_id] = dict(ev.headers).get(b":status", b"").decode()
                elif isinstance(ev, h2.events.DataReceived):
                    data[ev.stream_id] = data.get(ev.stream_id, 0) + 1
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    ended.add(ev.stream_id)
                elif isinstance(ev, h2.events.StreamReset):
                    reset.add(ev.stream_id)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    return
            out = conn.data_to_send()
            if out:
                sock.sendall(out)

    pump(lambda: all(data[s] > 0 for s in ids), time.monotonic() + 15)
    opened = sum(1 for s in ids if data[s] > 0 and s not in ended and s not in reset)
    print("open %d" % opened)
    sys.stdout.flush()
    sys.stdin.readline()

    before = dict(data)
    pump(lambda: all(data[s] > before[s] for s in ids), time.monotonic() + 15)
    alive = sum(1 for s in ids if data[s] > before[s] and s not in ended and s not in reset)
    print(
        json.dumps(
            {
                "alpn": alpn,
                "opened": opened,
                "alive_after": alive,
                "ended": len(ended),
                "reset": len(reset),
                "statuses": sorted(set(statuses.values())),
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
