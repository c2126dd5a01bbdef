#!/usr/bin/env bash
# kvs_test.sh <build dir>: the in-guest key-value store (examples/kvs.c) run
# overcommitted 2x on swapvisor (a 128 MiB table under a 64 MiB resident limit,
# swapping to a file) with 1 and 2 vCPUs: every read's checksum and the final
# scan must find 0 errors. A self-test run with damaged values must report
# errors, so a broken checker cannot pass. Exit 77 (skipped) without /dev/kvm.
set -u

build=${1:?usage: kvs_test.sh <build dir>}
bin=$build/swapvisor
kvs=$build/examples/kvs.elf
if [[ ! -r /dev/kvm || ! -w /dev/kvm ]]; then
  echo "SKIPPED: /dev/kvm is absent or not accessible" >&2
  exit 77
fi
for f in "$bin" "$kvs"; do
  [[ -f $f ]] || { echo "FAIL: $f is missing (build the targets swapvisor and kvs)" >&2; exit 1; }
done
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
failures=0

# run_kvs <name> <vcpus> <want exit> <swapvisor args> -- <guest cmdline> ; then RESULT regexes
run_kvs() {
  local name=$1 vcpus=$2 want=$3 args=$4 cmdline=$5
  shift 5
  local log=$work/$name.log status result ok=1
  # shellcheck disable=SC2086
  timeout 600 "$bin" run --kernel "$kvs" --vcpus "$vcpus" $args --cmdline "$cmdline" >"$log" 2>&1
  status=$?
  result=$(grep -a '^RESULT ' "$log" | tail -n 1)
  [[ $status -eq $want ]] || { echo "FAIL [$name]: exit $status, want $want" >&2; ok=0; }
  [[ -n $result ]] || { echo "FAIL [$name]: no RESULT line" >&2; ok=0; }
  local re
  for re in "$@"; do
    [[ $result =~ $re ]] || { echo "FAIL [$name]: RESULT does not match /$re/: $result" >&2; ok=0; }
  done
  if [[ $ok -eq 1 ]]; then
    echo "PASS [$name]: $result"
  else
    tail -n 30 "$log" >&2
    failures=$((failures + 1))
  fi
}

# 2x: a 64 MiB table under a 32 MiB resident limit (the runtime and stacks
# are a few hundred KiB more). --stats-json proves pages really went to swap.
# SWV_TEST_SMALL=1 (the nested pass, tests/README.md#nested): a 32 MiB table at the
# 16 MiB floor of a limit, and a tenth of the operations.
if [[ ${SWV_TEST_SMALL:-0} == 1 ]]; then
  over="--memory 48M --resident-limit 16M" mib=32 ops=3000 selftest_ops=5000
else
  over="--memory 96M --resident-limit 32M" mib=64 ops=30000 selftest_ops=20000
fi
for v in 1 2; do
  run_kvs "overcommit2x-${v}vcpu" "$v" 0 "$over --swap $work/s$v.swap,size=128M --stats-json $work/st$v.json" \
    "mib=$mib ops=$ops threads=$v seed=$v" \
    '"guest":"kvs"' '"ok":true' "\"ops\":$ops" '"errors":0' "\"threads\":$v" '"p99_us":[0-9]+\.[0-9]'
  if grep -Eq '"swap_out_pages": *[1-9]' "$work/st$v.json" 2>/dev/null && grep -Eq '"swap_in_pages": *[1-9]' "$work/st$v.json"; then
    echo "PASS [overcommit2x-${v}vcpu-swapped]: $(grep -Eo '"swap_(in|out)_pages": *[0-9]+' "$work/st$v.json" | tr '\n' ' ')"
  else
    echo "FAIL [overcommit2x-${v}vcpu-swapped]: no swap-out and swap-in counted: $(cat "$work/st$v.json" 2>/dev/null)" >&2
    failures=$((failures + 1))
  fi
done
# Self-test: 3 damaged hot values must be seen (ok false, exit 1).
run_kvs corrupt-selftest 2 1 "--memory 64M" "mib=16 ops=$selftest_ops threads=2 corrupt=3" \
  '"ok":false' '"errors":[1-9]'

if [[ $failures -ne 0 ]]; then
  echo "kvs_test: $failures check(s) failed" >&2
  exit 1
fi
echo "kvs_test: all checks passed"
