#!/usr/bin/env bash
# Makes `import torch` work in the LibTorch virtualenv of scripts/libtorch-env.sh, for the
# PyTorch reference model in training-core/benches (the export parity test, the throughput
# benchmark, examples/python/load_in_pytorch.py). A no-op once done.
#
#   scripts/torch-python.sh                 set up, after `eval "$(scripts/libtorch-env.sh)"`
#   scripts/torch-python.sh ARGS...         set up, then run that virtualenv's python with ARGS
#                                           (it evaluates libtorch-env.sh itself when LIBTORCH is unset)
#
# The cpu flavour installs torch without its dependencies. Python then needs torch's pure-python
# dependencies, and libtorch_python.so is linked against CUDA libraries that flavour leaves out
# (cuDNN, cuBLAS, NCCL, …: 3 GB). Tiny stand-ins carrying the symbols and symbol versions torch
# asks for let it load; on a machine without a GPU nothing calls them (each aborts if called).
# Only python sees them, through LD_LIBRARY_PATH (set by the test, or here for ARGS...); the
# grokforge binary never does.
set -euo pipefail

if [[ -z "${LIBTORCH:-}" && $# -gt 0 ]]; then
  eval "$("$(dirname "${BASH_SOURCE[0]}")/libtorch-env.sh")"
fi
[[ -n "${LIBTORCH:-}" ]] || { echo "torch-python: run eval \"\$(scripts/libtorch-env.sh)\" first" >&2; exit 2; }
flavor="${GROKFORGE_LIBTORCH_FLAVOR:-}"
# $venv/lib/python3.X/site-packages/torch; for a LIBTORCH of the user's own, whatever is there.
venv="$(cd "$LIBTORCH/../../../.." 2>/dev/null && pwd || true)"

run() { # the virtualenv's python when there is one (else python3), with the stand-ins if built
  local python=python3
  [[ -x "$venv/bin/python" && -f "$venv/pyvenv.cfg" ]] && python="$venv/bin/python"
  if [[ -f "$venv/grokforge-cuda-stubs/.ready" ]]; then
    export LD_LIBRARY_PATH="$venv/grokforge-cuda-stubs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  fi
  exec "$python" "$@"
}

# The cuda flavour has everything; a user's own LIBTORCH is theirs.
if [[ "$flavor" != cpu || ! -x "$venv/bin/pip" ]]; then
  [[ $# -eq 0 ]] || run "$@"
  exit 0
fi

stubs="$venv/grokforge-cuda-stubs"
if [[ ! -f "$stubs/.ready" ]]; then
  echo "libtorch-env: making torch importable from python (pure-python deps, CUDA stand-ins)" >&2
  "$venv/bin/pip" install --quiet typing_extensions sympy networkx jinja2 fsspec filelock >&2
  site="$(echo "$venv"/lib/python3*/site-packages)"
  rm -rf "$stubs" && mkdir -p "$stubs/src"
  torch_libs=("$site"/torch/lib/*.so "$site"/torch/_C*.so)
  # Strong undefined symbols, with their version (`name@libcudnn.so.9`) where they have one.
  for so in "${torch_libs[@]}"; do
    readelf --dyn-syms -W "$so" | awk '$7 == "UND" && $5 != "WEAK" && $8 != "" {print $8}'
  done | sed 's/ (.*//' | sort -u >"$stubs/src/undefined"
  # Unversioned ones that nothing present defines (the CUDA driver API, NCCL, cuRAND, …).
  for so in "$site"/torch/lib/*.so* "$site"/nvidia/*/lib/*.so* $(ldconfig -p | awk '/x86-64/ {print $NF}'); do
    readelf --dyn-syms -W "$so" 2>/dev/null | awk '$7 != "UND" && $8 != "" {print $8}'
  done | sed 's/@.*//' | sort -u >"$stubs/src/defined"
  grep -v @ "$stubs/src/undefined" | comm -23 - "$stubs/src/defined" >"$stubs/src/unversioned"
  # Every needed library that neither torch's rpath nor the system provides.
  missing=$(for so in "${torch_libs[@]}"; do ldd "$so" | awk '/not found/ {print $1}'; done | sort -u)
  for soname in $missing; do
    src="$stubs/src/$soname"
    # A library's symbols carry its soname as version, except NVSHMEM's.
    version="$soname"
    [[ "$soname" == libnvshmem_host.* ]] && version=NVSHMEM
    grep -qF "@$version" "$stubs/src/undefined" || version=""
    { [[ -n "$version" ]] && grep -F "@$version" "$stubs/src/undefined" | grep -E "@${version//./\\.}$" | sed 's/@.*//'
      cat "$stubs/src/unversioned"; } | sort -u |
      awk 'BEGIN {print "#include <stdlib.h>"} {print "void " $1 "(void) { abort(); }"}' >"$src.c"
    args=()
    if [[ -n "$version" ]]; then
      echo "$version { global: *; };" >"$src.map"
      args=("-Wl,--version-script=$src.map")
    fi
    cc -shared -fPIC -o "$stubs/$soname" "$src.c" "-Wl,-soname,$soname" "${args[@]}"
  done
  touch "$stubs/.ready"
fi
[[ $# -eq 0 ]] || run "$@"
