"""The committed gRPC stubs are exactly what the .proto generates (regenerate with `make proto`)."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).parents[2]


def test_stubs_match_the_proto(tmp_path):
    import grpc_tools
    from grpc_tools import protoc

    well_known = Path(grpc_tools.__file__).parent / "_proto"  # google/protobuf/struct.proto
    args = ["protoc", f"-I{ROOT / 'proto'}", f"-I{well_known}", f"--python_out={tmp_path}", f"--pyi_out={tmp_path}",
            f"--grpc_python_out={tmp_path}", str(ROOT / "proto/ditserve/v1/diffusion.proto")]  # fmt: skip
    assert protoc.main(args) == 0
    for name in ("diffusion_pb2.py", "diffusion_pb2.pyi", "diffusion_pb2_grpc.py"):
        fresh = (tmp_path / "ditserve/v1" / name).read_text()
        assert fresh == (ROOT / "plugin/ditserve/v1" / name).read_text(), f"{name} is stale: run `make proto`"
