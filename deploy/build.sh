#!/usr/bin/env bash
# Configures and builds tb into ./build (CI: -Werror). Extra args go to cmake.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
werror=OFF
[ "${CI:-}" = "true" ] && werror=ON
cmake -S . -B build -G Ninja -DTB_WERROR=$werror "$@" >/dev/null
ninja -C build
