"""JSON Schemas of everything the bus sends and the replay endpoint accepts, generated from the message models.

The files in ``inspector/outputs/schemas/`` are what integrators (PLC gateways, MES, the review page) read; they
are generated from the pydantic models the daemon builds its messages with, so code and documentation cannot
drift apart (the tests check the committed files are current and validate every message against them):

    python -m inspector.outputs.schema            # rewrite the files
    python -m inspector.outputs.schema --check    # exit 1 if a file is out of date
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from pydantic import TypeAdapter

from inspector.outputs.result import AlarmMessage, FrameResult
from inspector.outputs.zeromq import StatusMessage
from inspector.outputs.zeromq_replay import ReplayReply, ReplayRequest

SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"
DIALECT = "https://json-schema.org/draft/2020-12/schema"

# file name -> (type, title, what it describes)
SCHEMAS: dict[str, tuple[object, str, str]] = {
    "frame-result.schema.json": (FrameResult, "FrameResult",
                                 "result.<station>.<camera>: the verdict on one frame (OK / NG / NOT_INSPECTED)"),
    "alarm.schema.json": (AlarmMessage, "AlarmMessage",
                          "alarm.<station>.<severity>: an NG result that matched an alarm rule"),
    "status.schema.json": (StatusMessage, "StatusMessage",
                           "status.<station>.birth|heartbeat|healthy|degraded|death"),
    "replay-request.schema.json": (ReplayRequest, "ReplayRequest", "a request to the replay endpoint"),
    "replay-reply.schema.json": (ReplayReply, "ReplayReply",
                                 "the first frame of a replay reply (a page header or a refusal)"),
}


def generate() -> dict[str, str]:
    """File name -> schema text (sorted keys, 2-space indent, trailing newline)."""
    out: dict[str, str] = {}
    for name, (typ, title, description) in SCHEMAS.items():
        mode = "validation" if typ is ReplayRequest else "serialization"  # what clients send / what they receive
        schema = TypeAdapter(typ).json_schema(mode=mode, by_alias=True)
        schema = {"$schema": DIALECT, "$id": f"https://rddn-inspector.invalid/schemas/{name}", **schema,
                  "title": title, "description": description}
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def load(name: str) -> dict:
    """A committed schema file, parsed (tests and clients validate against it)."""
    return json.loads((SCHEMA_DIR / name).read_text())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m inspector.outputs.schema", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is out of date")
    args = parser.parse_args(argv)
    stale = []
    for name, text in generate().items():
        path = SCHEMA_DIR / name
        if path.is_file() and path.read_text() == text:
            continue
        stale.append(name)
        if not args.check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    if args.check and stale:
        print(f"out of date: {', '.join(stale)} (run python -m inspector.outputs.schema)", file=sys.stderr)
        return 1
    print("\n".join(f"{'stale' if args.check else 'wrote'} {n}" for n in stale) or "schemas up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
