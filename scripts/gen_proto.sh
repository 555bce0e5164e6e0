#!/usr/bin/env bash
# Regenerate fedcore/proto/coordinator_pb2{.py,.pyi,_grpc.py} from coordinator.proto.
#
#   bash scripts/gen_proto.sh           write the generated files into fedcore/proto/
#   bash scripts/gen_proto.sh --check   exit 1 if the committed files differ from fresh output
#
# Uses grpcio-tools 1.51.3 (bundled protoc 3.21) on purpose: its gencode has no
# `google.protobuf.runtime_version` import and no `GRPC_GENERATED_VERSION` check, so the
# stubs load on the RISC-V client's grpcio 1.51.1 / protobuf 4.21.12 as well as on current
# grpcio/protobuf (reference riscv.md §4.1). Newer grpcio-tools would break that client.
# The tools live in their own venv under the cache folder, never in the project's venv.
set -euo pipefail
cd "$(dirname "$0")/.."

check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    *) echo "usage: gen_proto.sh [--check]" >&2; exit 2 ;;
esac
tools_version=1.51.3
venv="${FEDCORE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/fedcore}/grpcio-tools-${tools_version}"
python=${PYTHON:-python3}
files=(coordinator_pb2.py coordinator_pb2.pyi coordinator_pb2_grpc.py)

if [ "$("$venv/bin/python" -m pip show grpcio-tools 2>/dev/null | sed -n 's/^Version: //p')" != "$tools_version" ]; then
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "grpcio-tools==${tools_version}"
fi

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
# Proto path = repo root, so protoc names the module fedcore/proto/coordinator and the grpc
# stub imports its messages as `from fedcore.proto import coordinator_pb2`.
"$venv/bin/python" -m grpc_tools.protoc -I . \
    --python_out="$out" --pyi_out="$out" --grpc_python_out="$out" \
    fedcore/proto/coordinator.proto

if grep -l -E 'runtime_version|GRPC_GENERATED_VERSION' "$out"/fedcore/proto/*.py; then
    echo "gen_proto: output above has a runtime-version check; it would not load on grpcio 1.51" >&2
    exit 1
fi
grep -q '^from fedcore.proto import coordinator_pb2 ' "$out/fedcore/proto/coordinator_pb2_grpc.py" || {
    echo "gen_proto: coordinator_pb2_grpc.py does not import fedcore.proto.coordinator_pb2" >&2
    exit 1
}

if [ "$check" -eq 1 ]; then
    for f in "${files[@]}"; do
        if ! cmp -s "$out/fedcore/proto/$f" "fedcore/proto/$f"; then
            echo "gen_proto: fedcore/proto/$f is stale; run scripts/gen_proto.sh" >&2
            exit 1
        fi
    done
    echo "generated stubs are up to date"
else
    for f in "${files[@]}"; do cp "$out/fedcore/proto/$f" "fedcore/proto/$f"; done
    echo "generated ${files[*]} in fedcore/proto with grpcio-tools ${tools_version}"
fi
