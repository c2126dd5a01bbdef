#!/usr/bin/env bash
# mkswap_data_test.sh <build dir>: issue #17 item 4 on the real binary. `swapvisor
# mkswap` refuses a file holding recognisable data (an ext4 image, a kernel mkswap
# file, random bytes, a swapvisor swap file), leaving it byte for byte as it was, and
# erases it with --force; an all-zero file needs no --force. The same rule holds for
# `serve --swap PATH,format=yes` (format=force erases) and `ctl swapon --format`
# (--format --force erases). No /dev/kvm needed. Exit 77 only without io_uring.
set -u
build=${1:?usage: mkswap_data_test.sh <build dir>}
bin=$build/swapvisor
[[ -x $bin ]] || { echo "FAIL: $bin is missing (build the swapvisor target)" >&2; exit 1; }
for tool in mkfs.ext4 mkswap sha256sum; do
  command -v $tool >/dev/null || PATH=$PATH:/usr/sbin:/sbin
  command -v $tool >/dev/null || { echo "FAIL: $tool is missing (scripts/install-deps.sh: e2fsprogs, util-linux)" >&2; exit 1; }
done
work=$(mktemp -d /var/tmp/swv-mkswap.XXXXXX)
serve_pid=
cleanup() {
  [[ -n $serve_pid ]] && kill "$serve_pid" 2>/dev/null
  wait 2>/dev/null
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

# Skip only if io_uring cannot be used at all: a blank file must be accepted.
dd if=/dev/zero of="$work/probe.img" bs=1M count=8 status=none
if ! out=$("$bin" mkswap "$work/probe.img" 2>&1); then
  [[ $out == *io_uring* || $out == *"Operation not permitted"* || $out == *"Function not implemented"* ]] &&
    { echo "SKIPPED: io_uring unavailable: $out" >&2; exit 77; }
  fail "mkswap of an all-zero file: $out"
fi

make_images() {
  rm -f "$work"/*.img
  truncate -s 64M "$work/ext4.img" && mkfs.ext4 -q -F -L precious "$work/ext4.img" >/dev/null 2>&1 || fail "mkfs.ext4"
  truncate -s 64M "$work/kswap.img" && mkswap "$work/kswap.img" >/dev/null 2>&1 || fail "mkswap(8)"
  head -c $((64 << 20)) /dev/urandom >"$work/random.img"
  dd if=/dev/zero of="$work/zero.img" bs=1M count=64 status=none
}

# check_refused <file> <expected fragment> <command...>: exits non-zero, names what it
# found and how to force it, and leaves the file exactly as it was.
check_refused() {
  local file=$1 fragment=$2; shift 2
  local before after out
  before=$(sha256sum <"$file")
  out=$("$@" 2>&1) && fail "$* accepted $(basename "$file"): $out"
  [[ $out == *"$fragment"* ]] || fail "$* on $(basename "$file"): the message does not name '$fragment': $out"
  [[ $out == *force* ]] || fail "$* on $(basename "$file"): the message does not say how to force it: $out"
  after=$(sha256sum <"$file")
  [[ $before == "$after" ]] || fail "$* modified $(basename "$file") although it refused"
  local found=${out#*it holds }
  echo "  refused $(basename "$file"): it holds ${found%%): refusing*}"
}

# --- mkswap ----------------------------------------------------------------------
make_images
check_refused "$work/ext4.img" 'file system (TYPE ext4, LABEL "precious"' "$bin" mkswap "$work/ext4.img"
check_refused "$work/kswap.img" "mkswap(8)" "$bin" mkswap "$work/kswap.img"
check_refused "$work/random.img" "non-zero bytes" "$bin" mkswap "$work/random.img"
"$bin" mkswap "$work/zero.img" >/dev/null || fail "mkswap of an all-zero file needs no --force"
check_refused "$work/zero.img" "swapvisor swap header" "$bin" mkswap "$work/zero.img"
for img in ext4 kswap random zero; do
  "$bin" mkswap --force "$work/$img.img" >"$work/out.log" 2>&1 || fail "mkswap --force $img.img: $(cat "$work/out.log")"
  grep -q "UUID" "$work/out.log" || fail "mkswap --force $img.img said: $(cat "$work/out.log")"
done
echo "ok: mkswap refuses data, --force erases it, a blank file needs no --force"

# --- the same rule for serve --swap ...,format=yes ----------------------------------
make_images
sock=$work/control.sock
check_refused "$work/ext4.img" "file system (TYPE ext4" timeout 30 "$bin" serve --control "$sock" --swap "$work/ext4.img,format=yes"
check_refused "$work/random.img" "non-zero bytes" timeout 30 "$bin" serve --control "$sock" --swap "$work/random.img,format=yes"
[[ ! -e $sock ]] || fail "a refused serve left its socket"

# format=yes on a blank file, format=force on a kernel swap file: serve starts.
"$bin" serve --control "$sock" --swap "$work/zero.img,format=yes" --swap "$work/kswap.img,format=force" \
  2>"$work/serve.log" >/dev/null &
serve_pid=$!
for _ in $(seq 1 100); do [[ -S $sock ]] && break; kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
[[ -S $sock ]] || fail "serve with format=yes (blank) and format=force (data) did not start: $(tail -5 "$work/serve.log")"

# --- and for ctl swapon --format -----------------------------------------------------
check_refused "$work/ext4.img" "file system (TYPE ext4" timeout 30 "$bin" ctl --socket "$sock" swapon "$work/ext4.img" --format
check_refused "$work/random.img" "non-zero bytes" timeout 30 "$bin" ctl --socket "$sock" swapon "$work/random.img" --format
out=$(timeout 30 "$bin" ctl --socket "$sock" swapon "$work/ext4.img" --format --force 2>&1) || fail "ctl swapon --format --force: $out"
out=$(timeout 30 "$bin" ctl --socket "$sock" swapon "$work/random.img" --force 2>&1) && fail "--force without --format accepted: $out"
kill "$serve_pid"; wait "$serve_pid"; serve_pid=
# A swapvisor device with format=yes is used as it is (no new header): restart-safe.
uuid_before=$(head -c 48 "$work/zero.img" | sha256sum)
"$bin" serve --control "$sock" --swap "$work/zero.img,format=yes" 2>"$work/serve2.log" >/dev/null &
serve_pid=$!
for _ in $(seq 1 100); do [[ -S $sock ]] && break; kill -0 "$serve_pid" 2>/dev/null || break; sleep 0.1; done
[[ -S $sock ]] || fail "format=yes refused its own swapvisor device on a restart: $(tail -5 "$work/serve2.log")"
[[ $(head -c 48 "$work/zero.img" | sha256sum) == "$uuid_before" ]] || fail "format=yes rewrote an existing swapvisor header"
kill "$serve_pid"; wait "$serve_pid"; serve_pid=
echo "ok: --swap format=yes and ctl swapon --format share the rule; format=force / --force erase"
