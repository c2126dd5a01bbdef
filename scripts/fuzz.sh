#!/usr/bin/env bash
# Build the libFuzzer targets (tests/fuzz/README.md) in build-fuzz with clang-16 and run
# each for SECONDS (default 30) on a copy of its seed corpus; print how many inputs each
# ran and fail if any target crashes, breaks a property or times out. Installs nothing
# (scripts/install-deps.sh does). Usage: scripts/fuzz.sh [SECONDS]
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
seconds=${1:-30}
build="$here/build-fuzz"
targets=(virtqueue protocol elf cli manifest page_table)

# clang's warnings differ from g++'s (swap/ has one g++ does not report): -Werror
# stays for the g++ builds of scripts/test.sh.
# -O1 as in the libFuzzer documentation's examples; line tables are enough for symbolized stacks.
cmake -S "$here" -B "$build" -DSWV_FUZZ=ON -DSWV_WERROR=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" -DCMAKE_C_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
  -DCMAKE_CXX_COMPILER=clang++-16 -DCMAKE_C_COMPILER=clang-16 >/dev/null
cmake --build "$build" -j"$(nproc)" --target fuzz

work=$(mktemp -d "${TMPDIR:-/tmp}/swv-fuzz.XXXXXX")
trap 'rm -rf "$work"' EXIT
failed=()
for t in "${targets[@]}"; do
  # A copy: libFuzzer adds what it finds to the corpus directory it is given.
  cp -r "$here/tests/fuzz/corpus/$t" "$work/$t"
  log="$work/$t.log"
  status=0
  # Exit 77 (a target's LLVMFuzzerInitialize: no userfaultfd) is a loud skip, so
  # libFuzzer's own failures must not use 77, its default.
  "$build/fuzz/${t}_fuzz" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -error_exitcode=1 \
    -timeout_exitcode=1 -print_final_stats=1 -artifact_prefix="$work/$t-" "$work/$t" >"$log" 2>&1 || status=$?
  if [ "$status" -eq 77 ]; then
    echo "fuzz: $t: SKIPPED LOUDLY: $(tail -1 "$log")"
    continue
  fi
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
  echo "fuzz: $t: ${runs:-?} inputs in ${seconds} s, exit $status"
  if [ "$status" -ne 0 ]; then
    failed+=("$t")
    grep -E 'ERROR|SUMMARY|fuzz property|runtime error|Test unit written' "$log" | head -20 || true
    for a in "$work/$t-"*; do
      [ -e "$a" ] || continue
      mkdir -p "$build/fuzz/artifacts"
      cp "$a" "$build/fuzz/artifacts/"
      echo "fuzz: $t: crashing input kept in $build/fuzz/artifacts/$(basename "$a")"
    done
  fi
done
if [ "${#failed[@]}" -ne 0 ]; then
  echo "fuzz.sh: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz.sh: ${#targets[@]} targets ran ${seconds} s each without a finding"
