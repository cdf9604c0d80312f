#!/usr/bin/env bash
# copy-libs.sh STAGE LIBPATH BINARY...
# Copies the ELF interpreter and every shared library BINARY needs (per ldd,
# with LIBPATH searched first) into STAGE at the same absolute path.
# Static binaries need nothing. Fails if a library cannot be found.
set -euo pipefail
stage="$1"; libpath="$2"; shift 2
for bin in "$@"; do
  out="$(LD_LIBRARY_PATH="$libpath" ldd "$bin" 2>&1 || true)"
  case "$out" in
    *"not a dynamic executable"*|*"statically linked"*) continue ;;
  esac
  if grep -q "not found" <<<"$out"; then
    echo "copy-libs: $bin needs libraries that are neither packaged nor on the host:" >&2
    grep "not found" <<<"$out" >&2
    exit 1
  fi
  while read -r lib; do
    [ -n "$lib" ] || continue
    # Install under the canonical path the binary asks for (/lib/x86_64-linux-gnu,
    # /lib64), whatever directory it was found in.
    case "$lib" in
      */ld-linux-x86-64.so.2) dest="/lib64/ld-linux-x86-64.so.2" ;;
      *) dest="/lib/x86_64-linux-gnu/$(basename "$lib")" ;;
    esac
    if [ ! -e "$stage$dest" ]; then
      mkdir -p "$(dirname "$stage$dest")"
      cp -L "$lib" "$stage$dest"
    fi
  done < <(awk '/=> \//{print $3} /^\t\/.*ld-linux/{print $1}' <<<"$out")
done
