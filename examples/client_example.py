"""Call the example Deployment (started by `make run`) with the Python client."""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from executors import Text, Token

from plait import Client, DocList


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=12345)
    args = ap.parse_args()
    with Client(host="localhost", port=args.port) as client:
        docs = DocList[Text]([Text(text="hello plait"), Text(text="typed documents over grpc")])
        encoded = client.post("/encode", docs)
        print("embeddings:", encoded.embedding.shape)
        print("upper:", client.post("/upper", docs).text)
        print("tokens:", [t.text for t in client.stream_doc("/tokens", docs[0], return_type=Token)])
        print("endpoints:", sorted(client.describe().endpoints))


if __name__ == "__main__":
    main()
