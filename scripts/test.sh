#!/usr/bin/env bash
# The test command (README, .ci/run): install dependencies, build, run every test.
#  1. a RelWithDebInfo build and the whole ctest suite (unit, real KVM + userfaultfd +
#     io_uring integration, script tests);
#  2. an ASan+UBSan build of the layer unit tests (io, swap, guestmem, control);
#  3. a ThreadSanitizer build of the concurrency suites (swap, guestmem: the parts
#     that need no KVM).
#  4. the libFuzzer targets (clang-16, ASan+UBSan), a short bounded run each.
#  5. on a host without /dev/kvm, the tests pass 1 skipped for want of it, again
#     under real KVM inside an emulated machine (scripts/nested-kvm.sh; slow, so
#     only the tests named in NESTED_TESTS below; SWV_NESTED=0 leaves it out).
# Warnings are errors in every pass (SWV_WERROR=ON).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cd "$here"
bash scripts/install-deps.sh
bash scripts/check-layers.sh
for dev in /dev/kvm; do
  [ -e "$dev" ] || echo "WARNING: $dev is absent: tests that need it will SKIP (loudly)"
done
# Tests ON explicitly: scripts/demo.sh configures build/ with them OFF, and a cached
# OFF would otherwise leave this pass with nothing to run (issue #16 item 10).
bash scripts/build.sh "$here/build" -DSWV_BUILD_TESTS=ON -DSWV_BUILD_BENCH=ON
summary=()
# run_ctest NAME DIR [ctest args...]: one ctest pass that fails on "no tests", and
# its line for the summary (tests run, how many of them skipped). pipefail makes the
# pipeline's status ctest's.
run_ctest() {
  local name=$1 dir=$2; shift 2
  local log; log=$(mktemp "${TMPDIR:-/tmp}/swv-ctest.XXXXXX")
  local status=0
  (cd "$dir" && ${SWV_CTEST_WRAP:-} ctest --output-on-failure --timeout 900 -j1 --no-tests=error "$@") 2>&1 | tee "$log" || status=$?
  local total skipped
  total=$(sed -n 's/.*tests passed, [0-9]* tests failed out of \([0-9]*\).*/\1/p' "$log" | tail -1)
  skipped=$(grep -c '\*\*\*Skipped' "$log" || true)
  if [ -n "${SWV_CTEST_KEEP_LOG:-}" ]; then cp "$log" "$SWV_CTEST_KEEP_LOG"; fi
  rm -f "$log"
  summary+=("$name: ${total:-0} tests, ${skipped} of them skipped")
  [ "$status" = 0 ] || { echo "test.sh: pass '$name' failed"; exit 1; }
  [ "${total:-0}" -gt 0 ] || { echo "test.sh: pass '$name' ran no tests"; exit 1; }
}
main_log=$(mktemp "${TMPDIR:-/tmp}/swv-main.XXXXXX")
SWV_CTEST_KEEP_LOG=$main_log run_ctest main build
# Only the layer test binaries under the sanitizers: the VMM, guests and benches are
# covered by the first pass.
cmake -S "$here" -B "$here/build-asan" -DSWV_SANITIZE=ON -DSWV_WERROR=ON -DSWV_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=Debug >/dev/null
cmake --build "$here/build-asan" -j"$(nproc)" --target io_tests swap_tests guestmem_tests control_tests
run_ctest asan build-asan -L 'io|swap|guestmem|control' 
# ThreadSanitizer over the concurrency suites. TSan needs the address-space layout it
# was built for: without ASLR limits some kernels map the binary where TSan's shadow
# lives, so the pass runs under setarch -R.
cmake -S "$here" -B "$here/build-tsan" -DSWV_TSAN=ON -DSWV_WERROR=ON -DSWV_BUILD_BENCH=OFF -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$here/build-tsan" -j"$(nproc)" --target swap_tests guestmem_tests
# The two tests whose "guest" thread takes a SIGBUS and leaves its handler with
# siglongjmp are left out: TSan does not model a longjmp out of a signal handler (one
# failed that way, without a report, in 1 of ~15 runs). They run in passes 1 and 2.
# tests/tsan.supp: liburing's ring mappings reused at one address look like races.
TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1 suppressions=$here/tests/tsan.supp" \
  SWV_CTEST_WRAP="setarch $(uname -m) -R" \
  run_ctest tsan build-tsan -L 'swap|guestmem' -LE kvm -E 'GuestGetsSigbus|ChecksumMismatchLosesThePage' 
# The libFuzzer targets (tests/fuzz), 20 s each on their seed corpora.
bash scripts/fuzz.sh 20
# Pass 5 (tests/README.md#nested): without /dev/kvm, pass 1 skipped every test that
# boots a guest. Run them again where a /dev/kvm exists: real KVM in a QEMU TCG
# machine (scripts/nested-kvm.sh), ~100x slower than hardware, so only the C++ KVM
# suites and the script tests in NESTED_SCRIPTS, those with SWV_TEST_SMALL=1 sizes
# (the others boot guests too large to finish there in CI's time; they run on hosts
# with /dev/kvm).
NESTED_SCRIPTS='daemon_basics_test|memory_tier_test|snapshot_test|snapshot_handover_test|live_swapoff_test|swapoff_stress_test|nbd_swap_test|operator_safety_test'
if [ ! -e /dev/kvm ] && [ "${SWV_NESTED:-1}" != 0 ]; then
  all_skipped=$(sed -n 's/.*Test *#[0-9]*: \([^ ]*\) .*\*\*\*Skipped.*/\1/p' "$main_log")
  skipped=$(printf '%s\n' $all_skipped | grep -v '^script\.' || true)
  scripts=$(printf '%s\n' $all_skipped | grep -E "^script\.($NESTED_SCRIPTS)\$" || true)
  names=$(printf '%s\n' $skipped $scripts | sed '/^$/d' | paste -sd'|')
  if [ -z "$names" ]; then
    summary+=("nested: 0 tests (pass 1 skipped none that need KVM)")
  else
    echo "test.sh: pass 5: $(printf '%s\n' $skipped $scripts | wc -l) tests under nested KVM"
    # Status 75: the emulated machine itself died before ctest ended (TCG's nested
    # SVM resets it now and then), or it hung past 1200 s: booted again once. Two in a
    # row are reported loudly as "could not run", like a missing /dev/kvm; a test
    # that fails (ctest's own status) fails the pass.
    nested_status=75
    for attempt in 1 2; do
      nested_status=0
      bash scripts/nested-kvm.sh --timeout 1200 -- env SWV_TEST_SLOW=3 SWV_TEST_SMALL=1 ctest --test-dir build --output-on-failure \
        --timeout 600 --no-tests=error -R "^($names)\$" 2>&1 | tee "$main_log.nested" || nested_status=$?
      [ "$nested_status" = 75 ] || break
      echo "test.sh: pass 5: the emulated machine died or hung (attempt $attempt of 2)"
    done
    # ctest in the emulated machine colours its summary: strip the escapes first.
    total=$(sed 's/\x1b\[[0-9;]*m//g' "$main_log.nested" |
      sed -n 's/.*tests passed, [0-9]* tests failed out of \([0-9]*\).*/\1/p' | tail -1)
    nskipped=$(grep -c '\*\*\*Skipped' "$main_log.nested" || true)
    if [ "$nested_status" = 75 ]; then
      echo "WARNING: pass 5 could not run: the emulated machine died or hung twice; the KVM tests did NOT run"
      summary+=("nested: could not run (the emulated machine died or hung twice)")
    else
      summary+=("nested: ${total:-0} tests, ${nskipped} of them skipped")
      [ "$nested_status" = 0 ] || { echo "test.sh: pass 'nested' failed (status $nested_status)"; exit 1; }
    fi
  fi
fi
rm -f "$main_log" "$main_log.nested"
printf 'test.sh: %s\n' "${summary[@]}"
echo "test.sh: all suites passed (${summary[*]})"
