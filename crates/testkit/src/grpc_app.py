"""A gRPC server and client for the end-to-end gRPC tests (grpcio from PyPI).

No generated code: the methods use raw bytes (no protobuf), registered as generic
handlers, so the script needs grpcio only.

  grpc_app.py server --unix PATH --events FILE
      Serves /test.T/{Unary,Fail,Slow,ServerStream,Endless,ClientStream,Bidi,Abort} on the
      Unix socket PATH (h2c, prior knowledge, which is what grpcio speaks) and appends
      one line per notable event to FILE: "ready", "cancelled METHOD", "deadline METHOD
      SECONDS" (the time remaining the server was given), "done METHOD".

  grpc_app.py client --target HOST:PORT --ca CA.pem --name NAME [--plain]
      Runs every scenario through the target (TLS with CA.pem and SNI NAME, or h2c with
      --plain; NAME is the :authority either way) and prints one JSON object:
      scenario -> what it saw.
"""

import argparse
import json
import sys
import threading
import time

import grpc


def log_event(path, line):
    with open(path, "a") as f:
        f.write(line + "\n")
        f.flush()


def serve(args):
    from concurrent import futures

    events = args.events

    def unary(req, ctx):
        ctx.set_trailing_metadata((("x-trailer", "unary-" + str(len(req))),))
        log_event(events, "done Unary")
        return b"echo:" + req

    def fail(req, ctx):
        ctx.abort(grpc.StatusCode.NOT_FOUND, "no such thing: " + req.decode("utf-8", "replace"))

    def slow(req, ctx):
        remaining = ctx.time_remaining()
        log_event(events, "deadline Slow %s" % ("none" if remaining is None else "%.3f" % remaining))
        # Until the client's deadline passes (its cancellation reaches us) or 10 s.
        end = time.monotonic() + 10
        while ctx.is_active() and time.monotonic() < end:
            time.sleep(0.02)
        if not ctx.is_active():
            log_event(events, "cancelled Slow")
        return b"too late"

    def server_stream(req, ctx):
        n = int(req or b"5")
        for i in range(n):
            yield b"msg-%d" % i
        ctx.set_trailing_metadata((("x-count", str(n)),))

    def endless(req, ctx):
        i = 0
        end = time.monotonic() + 20
        while ctx.is_active() and time.monotonic() < end:
            yield b"tick-%d" % i
            i += 1
            time.sleep(0.05)
        if not ctx.is_active():
            log_event(events, "cancelled Endless")

    def client_stream(reqs, ctx):
        total = 0
        count = 0
        for r in reqs:
            total += len(r)
            count += 1
        return b"%d messages, %d bytes" % (count, total)

    def bidi(reqs, ctx):
        for r in reqs:
            yield b"re:" + r

    def abort_mid(req, ctx):
        yield b"first"
        yield b"second"
        ctx.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "gave up after two")

    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(unary),
        "Fail": grpc.unary_unary_rpc_method_handler(fail),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
        "ServerStream": grpc.unary_stream_rpc_method_handler(server_stream),
        "Endless": grpc.unary_stream_rpc_method_handler(endless),
        "ClientStream": grpc.stream_unary_rpc_method_handler(client_stream),
        "Bidi": grpc.stream_stream_rpc_method_handler(bidi),
        "Abort": grpc.unary_stream_rpc_method_handler(abort_mid),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("test.T", handlers),))
    server.add_insecure_port("unix:" + args.unix)
    server.start()
    log_event(events, "ready")
    server.wait_for_termination()


def code_of(e):
    return e.code().name if isinstance(e, grpc.RpcError) else type(e).__name__


def client(args):
    if args.plain:
        # grpcio's default :authority for a unix: target is the socket path,
        # percent-encoded ("tmp%2Fapp.sock"), which the h2 library refuses as a malformed
        # authority (RST_STREAM PROTOCOL_ERROR, before tidegate sees the request): the
        # channel names the service instead, as grpc-go does by default ("localhost").
        channel = grpc.insecure_channel(args.target, options=(("grpc.default_authority", args.name),))
    else:
        with open(args.ca, "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(
            args.target,
            creds,
            options=(("grpc.ssl_target_name_override", args.name), ("grpc.default_authority", args.name)),
        )
    grpc.channel_ready_future(channel).result(timeout=10)
    out = {}

    unary = channel.unary_unary("/test.T/Unary")
    resp, call = unary.with_call(b"hello", timeout=10)
    out["unary"] = {
        "response": resp.decode(),
        "code": call.code().name,
        "trailers": {k: v for k, v in call.trailing_metadata()},
    }

    try:
        channel.unary_unary("/test.T/Fail")(b"widget", timeout=10)
        out["fail"] = {"code": "OK"}
    except grpc.RpcError as e:
        out["fail"] = {"code": e.code().name, "details": e.details()}

    started = time.monotonic()
    try:
        channel.unary_unary("/test.T/Slow")(b"", timeout=0.5)
        out["deadline"] = {"code": "OK"}
    except grpc.RpcError as e:
        out["deadline"] = {"code": e.code().name, "seconds": round(time.monotonic() - started, 3)}

    stream = channel.unary_stream("/test.T/ServerStream")(b"5", timeout=10)
    msgs = [m.decode() for m in stream]
    out["server_stream"] = {
        "messages": msgs,
        "code": stream.code().name,
        "trailers": {k: v for k, v in stream.trailing_metadata()},
    }

    def gen(n):
        for i in range(n):
            yield b"x" * (i + 1)

    resp = channel.stream_unary("/test.T/ClientStream")(gen(10), timeout=10)
    out["client_stream"] = {"response": resp.decode()}

    resp = channel.stream_stream("/test.T/Bidi")(iter([b"a", b"b", b"c"]), timeout=10)
    out["bidi"] = {"messages": [m.decode() for m in resp]}

    endless = channel.unary_stream("/test.T/Endless")(b"", timeout=20)
    got = []
    for m in endless:
        got.append(m.decode())
        if len(got) == 3:
            break
    endless.cancel()
    out["cancel"] = {"received": got, "code": code_of_cancelled(endless)}

    abort = channel.unary_stream("/test.T/Abort")(b"", timeout=10)
    got = []
    try:
        for m in abort:
            got.append(m.decode())
        out["abort"] = {"messages": got, "code": "OK"}
    except grpc.RpcError as e:
        out["abort"] = {"messages": got, "code": e.code().name, "details": e.details()}

    print(json.dumps(out, sort_keys=True))
    sys.stdout.flush()


def code_of_cancelled(call):
    try:
        return call.code().name
    except Exception as e:  # noqa: BLE001 - reported, not raised
        return type(e).__name__


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("server")
    s.add_argument("--unix", required=True)
    s.add_argument("--events", required=True)
    c = sub.add_parser("client")
    c.add_argument("--target", required=True)
    c.add_argument("--ca")
    c.add_argument("--name", default="localhost")
    c.add_argument("--plain", action="store_true")
    args = p.parse_args()
    if args.cmd == "server":
        serve(args)
    else:
        client(args)


if __name__ == "__main__":
    main()
