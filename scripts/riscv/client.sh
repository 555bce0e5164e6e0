#!/usr/bin/env bash
# Run `fedcore client ARGS...` as a riscv64 process from this source tree:
#   - on riscv64 hardware, natively with Debian's python3 (apt-get install $(packages.txt));
#   - elsewhere, under qemu-riscv64-static in the userland that userland.sh builds or reuses
#     (no binfmt_misc needed: the riscv64 interpreter is started explicitly).
#
#   bash scripts/riscv/client.sh --server HOST:PORT --id ID --certs DIR --config RUN/config.yaml
#
# The host's Python environment (PYTHONPATH, PYTHONHOME, a virtual env) is not passed in: the
# emulated client sees only Debian's riscv64 packages and the source tree. Its bytecode goes
# to the cache folder, not into the tree. Paths outside the userland (the source tree, certs,
# the run directory, ~/.cache/fedcore) are read from the host as they are.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

if [ "$(uname -m)" = riscv64 ]; then
    exec python3 "$here/source_tree.py" client "$@"
fi
root=$(bash "$here/userland.sh")
exec env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV \
    PYTHONPYCACHEPREFIX="$root.pycache" \
    qemu-riscv64-static -L "$root" "$root/usr/bin/python3" "$here/source_tree.py" client "$@"
