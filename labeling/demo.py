"""The labeling part of the demo, end to end on the replay corpus:

    python -m labeling.demo --truth <replay>/truth.parquet --count 200 --share 0.5

Starts the local Label Studio (or reuses the one running for this root), pushes a round of
figures, answers a share of them from the replay's ground truth through the API (marked
"replay-truth", never passed off as people's labels), pulls the labels table and says where
the project is in the browser. The server keeps running for a look around; stop it with
`python -m labeling.serve --stop`.
"""
from __future__ import annotations

import argparse
import sys

from model import cli
from labeling import pull, push, serve, simulate
from labeling.client import LabelStudioError, connect
from pipeline.config import data_root


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m labeling.demo",
        description="Demo of the labeling stage: start Label Studio, push figures, answer a "
                    "share from the replay's ground truth, pull the labels table.")
    parser.add_argument("--root", type=cli.writable_dir,
                        help="dataset root with figures/ and images/ (default: $CVF_DATA or ./data)")
    parser.add_argument("--truth", help="the replay's truth.parquet, or a folder holding it "
                                        "(default: the first one found under the root)")
    parser.add_argument("--count", type=cli.positive_int, default=200, help="figures to push (default 200)")
    parser.add_argument("--share", type=cli.unit_interval, default=0.5,
                        help="share of tasks the simulated annotator answers (default 0.5)")
    parser.add_argument("--port", type=cli.port_or_zero, default=serve.DEFAULT_PORT,
                        help="port for a new server (default 8080, or any free one if taken; 0: any free one)")
    args = parser.parse_args(argv)
    root = data_root(args.root)

    running = serve.running_server(root)
    if running is None:
        port = args.port if serve.port_is_free(args.port) else 0
        print("starting Label Studio (the first start migrates its database: ~40 s) ...")
        with cli.exit_on(FileNotFoundError, RuntimeError, TimeoutError, OSError):
            url = serve.serve(root, port).url
    else:
        url = running["url"]
    try:
        client = connect(url, root=root)
        pushed = push.push(client, root, count=args.count)
        truth_path = args.truth or next(root.rglob("truth.parquet"), None)
        answered = 0
        if truth_path is None:
            print("no truth.parquet found: leaving every task for people")
        else:
            truth = simulate.read_truth(truth_path)
            answered = simulate.answer_from_truth(client, pushed["project_id"], truth, args.share)
        pulled = pull.pull(client, root)
    except (LabelStudioError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"pushed round {pushed['round']}: {pushed['tasks_created']} tasks; "
          f"answered {answered} from the replay truth; pulled {pulled['labels']} labels "
          f"({pulled['positive']} positive, {pulled['negative']} negative) "
          f"-> {pull.labels_path(root)}")
    print(serve.how_to_log_in(url, root))
    print(f"  the project: {url}/projects/{pushed['project_id']}/data")
    print("  stop it with: python -m labeling.serve --stop" + (f" --root {root}" if args.root else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
