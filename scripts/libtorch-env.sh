#!/usr/bin/env bash
# Finds or installs the LibTorch that burn-tch 0.22.1 (tch / torch-sys 0.22) builds against —
# PyTorch 2.9.0 from PyPI, nowhere else — and prints the `export` lines torch-sys needs.
#
#   eval "$(scripts/libtorch-env.sh)"
#
# * LIBTORCH already set: the user's own libtorch is used as it is; nothing is installed.
# * Otherwise PyTorch 2.9.0 lives in a virtualenv under $GROKFORGE_TORCH_HOME
#   (default ~/.local/share/grokforge), outside the repository, so every clone and CI run reuse
#   it. A second run finds the install marker and returns in milliseconds.
# * Flavour: `cuda` (the full wheel with its CUDA libraries, 6.7 GB) when an NVIDIA GPU answers
#   `nvidia-smi` or GROKFORGE_TORCH_FLAVOR=cuda; otherwise `cpu`: the torch wheel without its
#   dependencies plus the two small CUDA packages libtorch_cpu.so is linked against (0.9 GB),
#   and a folder holding only the CPU libraries, so the binary never loads libtorch_cuda.so
#   (0.36 s and 183 MB at start instead of 570 MB).
set -euo pipefail

TORCH_VERSION=2.9.0

if [[ -n "${LIBTORCH:-}" ]]; then
  echo "libtorch-env: using LIBTORCH=$LIBTORCH as given" >&2
  printf 'export LIBTORCH=%q\n' "$LIBTORCH"
  exit 0
fi

flavor="${GROKFORGE_TORCH_FLAVOR:-}"
if [[ -z "$flavor" ]]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    flavor=cuda
  else
    flavor=cpu
  fi
fi
case "$flavor" in cpu | cuda) ;; *)
  echo "libtorch-env: GROKFORGE_TORCH_FLAVOR must be cpu or cuda, got '$flavor'" >&2
  exit 2
  ;;
esac

home="${GROKFORGE_TORCH_HOME:-${XDG_DATA_HOME:-$HOME/.local/share}/grokforge}"
venv="$home/torch-$TORCH_VERSION-$flavor"
marker="$venv/.grokforge-ready"

if [[ ! -f "$marker" ]]; then
  echo "libtorch-env: installing PyTorch $TORCH_VERSION ($flavor) from PyPI into $venv" >&2
  python="$(command -v python3 || command -v python)"
  rm -rf "$venv"
  mkdir -p "$home"
  "$python" -m venv "$venv"
  if [[ "$flavor" == cuda ]]; then
    "$venv/bin/pip" install --quiet "torch==$TORCH_VERSION" >&2
  else
    "$venv/bin/pip" install --quiet --no-deps "torch==$TORCH_VERSION" \
      nvidia-cuda-runtime-cu12==12.8.90 nvidia-cuda-cupti-cu12==12.8.90 >&2
  fi
fi

site="$(echo "$venv"/lib/python3*/site-packages)"
torch="$site/torch"
if [[ ! -f "$torch/lib/libtorch_cpu.so" ]]; then
  echo "libtorch-env: $torch/lib/libtorch_cpu.so is missing; remove $venv and run again" >&2
  exit 1
fi

lib_root="$torch"
if [[ "$flavor" == cpu ]]; then
  # torch-sys links from $LIBTORCH_LIB/lib. The folder sits two levels below site-packages,
  # like torch/lib, so the libraries' $ORIGIN/../../nvidia rpath still finds the CUDA runtime
  # stubs that libtorch_cpu.so is linked against.
  lib_root="$site/grokforge-libtorch-cpu"
  mkdir -p "$lib_root/lib"
  for so in libtorch_cpu.so libc10.so libtorch.so libgomp.so.1; do
    ln -sfn "../../torch/lib/$so" "$lib_root/lib/$so"
  done
fi
touch "$marker"

printf 'export LIBTORCH=%q\n' "$torch"
printf 'export LIBTORCH_INCLUDE=%q\n' "$torch"
printf 'export LIBTORCH_LIB=%q\n' "$lib_root"
printf 'export LIBTORCH_CXX11_ABI=1\n'
printf 'export GROKFORGE_LIBTORCH_FLAVOR=%q\n' "$flavor"
