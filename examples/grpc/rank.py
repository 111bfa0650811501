"""Calls adrank's gRPC ranking API (adrank.v1.Ranking/Rank) with Python's grpcio, and the same
requests over HTTP (POST /v1/rank) with the standard library, to compare the two.

The stubs are generated from the repository's proto file at start (grpcio-tools), so this client
shares nothing with adrank but the schema. Reads a JSON list of calls on stdin; each names a
request in the HTTP API's JSON shape, and optionally metadata, a timeout in seconds, a number
of copies sent at once, and `"http": true` to send it to the HTTP API instead. Writes one JSON
list of outcomes per call to stdout: the reply as a dict, or the status code, its details and
its trailers (HTTP: the status and the JSON body).

    python examples/grpc/rank.py 127.0.0.1:8081 [127.0.0.1:8080] < calls.json
"""

import concurrent.futures
import json
import pathlib
import sys
import tempfile
import urllib.error
import urllib.request

import grpc
from google.protobuf import json_format
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "contracts" / "proto"


def stubs():
    out = tempfile.mkdtemp(prefix="adrank-grpc-")
    proto = PROTO_ROOT / "adrank" / "v1" / "ranking.proto"
    args = ["protoc", f"-I{PROTO_ROOT}", f"--python_out={out}", f"--grpc_python_out={out}", str(proto)]
    if protoc.main(args) != 0:
        sys.exit(f"cannot compile {proto}")
    sys.path.insert(0, out)
    from adrank.v1 import ranking_pb2, ranking_pb2_grpc  # noqa: E402 (generated just now)

    return ranking_pb2, ranking_pb2_grpc


def value(pb, raw):
    if raw is None:
        return pb.Value()
    if isinstance(raw, str):
        return pb.Value(str=raw)
    return pb.Value(num=float(raw))


def message(pb, body):
    """The HTTP API's JSON request as the protobuf message."""
    request = pb.RankRequest(request_id=body.get("request_id", ""), user_id=body.get("user_id", ""))
    context = body.get("context")
    if context is not None:
        request.context.surface = context.get("surface", "")
        request.context.event_time_ms = context.get("event_time_ms", 0)
        for name, raw in context.get("features", {}).items():
            request.context.features[name].CopyFrom(value(pb, raw))
    for c in body.get("candidates", []):
        candidate = request.candidates.add(ad_id=c["ad_id"], advertiser_id=c["advertiser_id"], bid=c["bid"])
        for name, raw in c.get("features", {}).items():
            candidate.features[name].CopyFrom(value(pb, raw))
    if body.get("top_k") is not None:
        request.top_k = body["top_k"]
    if body.get("deadline_ms") is not None:
        request.deadline_ms = body["deadline_ms"]
    return request


def outcome(call):
    try:
        reply = call()
        return {"reply": json_format.MessageToDict(reply, preserving_proto_field_name=True)}
    except grpc.RpcError as e:
        trailers = {k: v for k, v in (e.trailing_metadata() or ())}
        return {"code": e.code().name, "details": e.details(), "trailers": trailers}


def http(addr, body, timeout):
    request = urllib.request.Request(
        f"http://{addr}/v1/rank", data=json.dumps(body).encode(), headers={"content-type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return {"status": reply.status, "body": json.load(reply)}
    except urllib.error.HTTPError as e:
        return {"status": e.code, "body": json.load(e)}


def main():
    pb, pb_grpc = stubs()
    calls = json.load(sys.stdin)
    with grpc.insecure_channel(sys.argv[1]) as channel:
        stub = pb_grpc.RankingStub(channel)
        results = []
        for call in calls:
            if call.get("http"):
                results.append([http(sys.argv[2], call["request"], call.get("timeout", 10.0))])
                continue
            request = message(pb, call["request"])
            metadata = [tuple(m) for m in call.get("metadata", [])]
            timeout = call.get("timeout", 10.0)
            copies = call.get("copies", 1)
            futures = [stub.Rank.future(request, metadata=metadata, timeout=timeout) for _ in range(copies)]
            results.append([outcome(f.result) for f in futures])
    json.dump(results, sys.stdout)


if __name__ == "__main__":
    main()
