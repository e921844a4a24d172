"""`make run`: serve the example Executor as a Deployment until Ctrl-C.

    python examples/serve_example.py [--port 12345] [--replicas 2]

Then, from another terminal:  plait ping localhost:12345   and   python examples/client_example.py
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from executors import HashEncoder

from plait import Deployment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--port", type=int, default=12345)
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--replicas", type=int, default=2)
    args = ap.parse_args()
    with Deployment(
        uses=HashEncoder, name="encoder", port=args.port, host=args.host, replicas=args.replicas
    ) as dep:
        print(f"plait example serving on {args.host}:{dep.port} with {args.replicas} replicas. Try:")
        print(f"  plait ping localhost:{dep.port}")
        print(f"  python examples/client_example.py --port {dep.port}")
        print("Ctrl-C to stop.", flush=True)
        dep.block()


if __name__ == "__main__":
    main()
