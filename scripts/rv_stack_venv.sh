#!/usr/bin/env bash
# Create a venv at DIR with the RISC-V client's library versions, as far as x86-64 allows, so
# tests can check that client-path code (the fedcore/proto stubs first) loads on that stack.
#
#   bash scripts/rv_stack_venv.sh DIR
#
# Versions are those of Debian trixie riscv64 (reference riscv.md §4.2):
#   grpcio 1.51.1, protobuf 4.21.12, numpy 2.2.x, cryptography 43, PyYAML 6, omegaconf 2.3.
# Deviations that x86-64 forces:
#   - Python is the one running this script (3.11 here; PYTHON=... overrides). riscv64 has
#     3.13, but grpcio 1.51.1 has no cp313 wheel (its newest are cp311), so 3.11 is the
#     closest interpreter the pinned stack installs on.
#   - torch is 2.13.0 (the CPU wheel in the local store); riscv64 has torch 2.6, which is not
#     available for this machine.
# Idempotent: a DIR that already holds these versions is left untouched; one that holds
# other versions is rebuilt.
set -euo pipefail

dir=${1:?usage: rv_stack_venv.sh DIR}
python=${PYTHON:-python3}

# Exits 0 when the interpreter's distributions match the pins: "X." is a prefix, otherwise
# exact; a local build tag such as +cpu is ignored.
check='
import sys
from importlib.metadata import PackageNotFoundError, version
want = {"grpcio": "1.51.1", "protobuf": "4.21.12", "numpy": "2.2.", "cryptography": "43.",
        "PyYAML": "6.", "omegaconf": "2.3.", "torch": "2.13.0"}
for name, pin in want.items():
    try:
        have = version(name).split("+")[0]
    except PackageNotFoundError:
        sys.exit(f"{name} missing")
    if have != pin and not (pin.endswith(".") and have.startswith(pin)):
        sys.exit(f"{name} {have}, want {pin}")
'

if [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "$check" >/dev/null 2>&1; then
    echo "rv-stack venv at $dir is up to date"
    exit 0
fi

rm -rf "$dir"
"$python" -m venv "$dir"
"$dir/bin/python" -m pip install --quiet --disable-pip-version-check \
    grpcio==1.51.1 protobuf==4.21.12 "numpy==2.2.*" "cryptography==43.*" "PyYAML==6.*" \
    "omegaconf==2.3.*" torch==2.13.0
"$dir/bin/python" -c "$check"
"$dir/bin/python" -c 'import grpc, google.protobuf as p, numpy, cryptography, torch
print(f"rv-stack venv ready: grpcio {grpc.__version__}, protobuf {p.__version__}, "
      f"numpy {numpy.__version__}, cryptography {cryptography.__version__}, torch {torch.__version__}")'
