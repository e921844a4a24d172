"""Regenerate plait_pb2.py / plait_pb2_grpc.py / plait_pb2.pyi from plait.proto.

Run with ``make proto`` (needs grpcio-tools, a dev dependency). The generated files are checked in
so that installing plait never needs protoc.
"""

from __future__ import annotations

import pathlib
import re
import sys

from grpc_tools import protoc

HERE = pathlib.Path(__file__).resolve().parent


def main() -> int:
    rc = protoc.main(
        [
            "grpc_tools.protoc",
            f"-I{HERE}",
            f"--python_out={HERE}",
            f"--pyi_out={HERE}",
            f"--grpc_python_out={HERE}",
            str(HERE / "plait.proto"),
        ]
    )
    if rc != 0:
        return int(rc)
    # protoc writes an absolute `import plait_pb2`; make it package-relative.
    grpc_file = HERE / "plait_pb2_grpc.py"
    text = grpc_file.read_text()
    grpc_file.write_text(re.sub(r"^import plait_pb2 as", "from . import plait_pb2 as", text, flags=re.M))
    return 0


if __name__ == "__main__":
    sys.exit(main())
