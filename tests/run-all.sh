#!/usr/bin/env bash
# The test command (README.md): installs what is missing, builds, and runs every test.
#   1. Release build: unit, integration and simulation tests through CTest.
#   2. ASan+UBSan build: the unit and simulation tests again.
#   3. Fuzz targets (clang/libFuzzer), each for a short time.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
jobs=$(nproc)

deploy/setup.sh

echo "== build (Release)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$jobs"

echo "== tests (Release)"
(cd build && ctest -j"$jobs" --output-on-failure --timeout 600)

echo "== build (ASan+UBSan)"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DCOLO_SANITIZE=ON >/dev/null
cmake --build build-asan -j"$jobs" --target tests_unit tests_sim

echo "== unit and simulation tests (ASan+UBSan)"
(cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest -j"$jobs" -L 'unit|sim' --output-on-failure --timeout 600)

if command -v clang++ >/dev/null && [ -d tests/fuzz ] && ls tests/fuzz/*_fuzz.cpp >/dev/null 2>&1; then
  echo "== fuzz (libFuzzer, short runs)"
  CC=clang CXX=clang++ cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=Debug -DCOLO_FUZZ=ON \
    -DCOLO_BUILD_TESTS=ON >/dev/null
  cmake --build build-fuzz -j"$jobs" --target colo_fuzzers
  for f in build-fuzz/tests/fuzz/*_fuzz; do
    corpus="$root/tests/fuzz/corpus/$(basename "$f")"
    mkdir -p build-fuzz/corpus-work
    work=$(mktemp -d build-fuzz/corpus-work/XXXX)
    [ -d "$corpus" ] && cp -r "$corpus/." "$work/"
    echo "-- $(basename "$f")"
    "$f" -max_total_time="${COLO_FUZZ_SECONDS:-30}" -seed=1 "$work" 2>&1 | tail -3
  done
fi
echo "== all tests passed"
