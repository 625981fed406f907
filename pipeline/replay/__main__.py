"""python -m pipeline.replay: generate a fake arXiv corpus, or serve one on 127.0.0.1.

    python -m pipeline.replay                      # = serve --corpus $CVF_DATA/replay (generated if absent)
    python -m pipeline.replay generate --out data/replay --papers 20 --months 2021-01 2021-02
    python -m pipeline.replay serve --corpus data/replay --port 0 --url-file data/replay/url
    python -m pipeline.replay serve --corpus data/replay --eprints-dir path/to/eprints \\
        --faults '[{"match": "/e-print/", "fault": "503", "retry_after": 1, "times": 2}]'
    python -m pipeline.replay serve --corpus data/replay --url-file data/replay/url \\
        --faults '[{"match": "/(e-print|pdf)/", "fault": "block", "ids": ["2101.00003", "2101.00009"]}]'
    curl -X POST --data '[]' "$(cat data/replay/url)/_replay/faults"      # lift the block
"""
from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from model import cli
from pipeline import config
from pipeline.replay.corpus import generate_corpus
from pipeline.replay.server import Replay, ReplayServer
from pipeline.shards import parse_month


def month(text: str) -> str:
    """argparse type: a YYYY-MM month."""
    try:
        parse_month(text)
    except ValueError as e:
        raise cli.ArgumentTypeError(str(e)) from None
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pipeline.replay", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    gen = sub.add_parser("generate", help="write a deterministic fake corpus (no copyrighted material)")
    srv = sub.add_parser("serve", help="serve a corpus as arXiv's API, e-print, PDF and OAI-PMH endpoints")
    for p in (gen, srv):
        p.add_argument("--papers", type=cli.positive_int, default=20, help="papers to generate (default 20)")
        p.add_argument("--months", nargs="+", default=["2021-01"], type=month,
                       help="YYYY-MM months to spread papers over")
        p.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True, type=lambda text: Path(cli.writable_dir(text)),
                     help="folder to write the corpus to")
    srv.add_argument("--corpus", type=Path, default=config.data_root() / "replay",
                     help="corpus folder, generated first when it has no papers.jsonl (default $CVF_DATA/replay)")
    srv.add_argument("--eprints-dir", type=lambda text: Path(cli.existing_dir(text)), help="also serve real e-prints named <arxiv id>.tar.gz from here")
    srv.add_argument("--port", type=cli.port_or_zero, default=0, help="port on 127.0.0.1 (0 = any free one)")
    srv.add_argument("--faults", default="[]",
                     help='fault rules as JSON text or a JSON file: a list of {"match": regex on the request path, '
                          '"fault": 503|429|500|404|slow|truncate|html|empty|malformed|block, "times": N (absent: '
                          'every request), "retry_after": s, "seconds": s (slow), "status": 403|200 (block), '
                          '"ids": [first, last] (only these arXiv ids)}; lift them by POSTing [] to '
                          '/_replay/faults; details in pipeline/replay/server.py')
    srv.add_argument("--url-file", type=Path, help="write the base URL here once listening (for scripts)")
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in ("generate", "serve", "-h", "--help"):
        argv = ["serve", *argv]  # serving is what `python -m pipeline.replay` does by default
    args = ap.parse_args(argv)

    if args.cmd == "generate":
        out = generate_corpus(args.out, args.papers, args.months, args.seed)
        print(f"corpus written to {out}")
        return 0

    try:
        faults = json.loads(Path(args.faults).read_text() if Path(args.faults).is_file() else args.faults)
    except json.JSONDecodeError as e:
        ap.error(f"--faults is neither a JSON file nor JSON text: {e}")
    if args.corpus and not (args.corpus / "papers.jsonl").exists():
        print(f"generating {args.papers} papers in {args.corpus} ...", file=sys.stderr)
        generate_corpus(args.corpus, args.papers, args.months, args.seed)
    try:
        server = ReplayServer(Replay(args.corpus, args.eprints_dir, faults), port=args.port)
    except OSError as e:  # the port is taken
        cli.fail(f"cannot listen on 127.0.0.1:{args.port} ({e.strerror or e})")
    print(f"arXiv replay serving {len(server.replay.papers)} papers at {server.url}", flush=True)
    for k, v in server.endpoints().items():
        print(f"  export {k}='{v}'", flush=True)
    if args.url_file:
        args.url_file.parent.mkdir(parents=True, exist_ok=True)
        args.url_file.write_text(server.url + "\n")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        server.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
