#!/usr/bin/env bash
# Downloads, into .whl/ (git ignores it), the wheels benchmarks/gpu.sh needs on a GPU machine that
# has jax (CUDA), torch, flax, optax, orbax-checkpoint, chex, numpy and absl-py but no network:
# the PyTorch reference's packages (pinned as in pyproject.toml's reference extra), what they need, and
# ml_collections. Run it where pip reaches PyPI; then carry .whl/ to the GPU machine with the
# checkout. gpu.sh installs them from there offline.
set -euo pipefail

usage() {
  cat <<'USAGE'
Usage: benchmarks/gpu_wheels.sh [--python-version V] [--dest DIR]

  --python-version V  the GPU machine's Python (default 3.12)
  --dest DIR          where the wheels go (default .whl, emptied first: two versions of a package
                      would stop the install)
USAGE
}

python_version=3.12
dest=.whl
while [[ $# -gt 0 ]]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --python-version) python_version="$2"; shift 2 ;;
    --dest) dest="$2"; shift 2 ;;
    *) echo "unknown argument: $1" >&2; usage >&2; exit 2 ;;
  esac
done
cd "$(dirname "$0")/.."

# mmdit, hyper-connections and x-transformers at the versions the parity tests pin; the rest at
# the versions those were tested with. --no-deps: exactly these, nothing the machine already has.
pinned() { sed -n "s/^ *'$1==\([^']*\)'.*/\1/p" pyproject.toml; }
wheels=(
  "mmdit==$(pinned mmdit)"
  "hyper-connections==$(pinned hyper-connections)"
  "x-transformers==$(pinned x-transformers)"
  torch-einops-utils==0.2.0  # hyper-connections, x-transformers
  einx==0.4.3                # x-transformers
  frozendict==2.5.1          # einx
  loguru==0.7.3              # x-transformers
  ml_collections==1.1.0      # lgdlm_jax's configs
)
for wheel in "${wheels[@]}"; do
  [[ $wheel != *== ]] || { echo "no pin for ${wheel%==} in pyproject.toml" >&2; exit 1; }
done

rm -rf "$dest"
mkdir -p "$dest"
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$tag")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$python_version" --implementation cp \
  "${platforms[@]}" -d "$dest" "${wheels[@]}"
ls -1 "$dest"
du -sh "$dest"
