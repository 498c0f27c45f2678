#!/usr/bin/env bash
# The README's test command: setup, build (warnings are errors), every test.
# Runs the release build's tests, then the ASan+UBSan build's tests.
set -euo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top"
./deploy/setup.sh
jobs=$(nproc)
cmake -S . -B build -G Ninja -DTB_WERROR=ON >/dev/null
ninja -C build
ctest --test-dir build --output-on-failure -j "$jobs"
# Every proto decoder under libFuzzer (clang, ASan+UBSan) for a bounded time each.
TB_FUZZ_JOBS=${TB_FUZZ_JOBS:-2} tests/fuzz/run.sh "${TB_FUZZ_SECONDS:-20}"
cmake -S . -B build-asan -G Ninja -DTB_WERROR=ON -DTB_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug \
  -DTB_CUDA=OFF >/dev/null
ninja -C build-asan
ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
  ctest --test-dir build-asan --output-on-failure -j "$jobs" -LE slow
