#!/usr/bin/env bash
# packaging_test.sh <build dir>: issue #17 item 9, the Debian package. Builds it with
# `cpack -G DEB` in the build dir, installs it with dpkg -i, runs the installed
# `swapvisor --version`, checks the man page, bash completion, example config (copied
# to /etc/swapvisor/serve.toml by postinst when absent) and systemd unit are where
# the package says, runs `systemd-analyze verify` on the installed unit when
# systemd-analyze exists, then removes the package (dpkg -r) and everything it added.
# Exit 77 (skipped) only when not root (dpkg -i needs it).
set -u
build=${1:?usage: packaging_test.sh <build dir>}
if [[ $(id -u) -ne 0 ]]; then
  echo "SKIPPED: not root: dpkg -i cannot install the package" >&2
  exit 77
fi
for tool in cpack dpkg dpkg-deb; do
  command -v $tool >/dev/null || { echo "FAIL: $tool is missing (scripts/install-deps.sh)" >&2; exit 1; }
done
[[ -x $build/swapvisor ]] || { echo "FAIL: $build/swapvisor is missing (build the swapvisor target)" >&2; exit 1; }
fail() { echo "FAIL: $*" >&2; exit 1; }
if dpkg -s swapvisor >/dev/null 2>&1; then
  fail "a swapvisor package is already installed here; this test would replace it (dpkg -r swapvisor first)"
fi
work=$(mktemp -d /var/tmp/swv-pkg.XXXXXX)
had_etc=no
[[ -e /etc/swapvisor/serve.toml ]] && had_etc=yes
cleanup() {
  dpkg -r swapvisor >/dev/null 2>&1
  [[ $had_etc == no ]] && rm -rf /etc/swapvisor
  rm -rf "$work"
}
trap cleanup EXIT

# cpack runs the install rules, which need the man page built (help2man) first.
cmake --build "$build" --target swapvisor_man >/dev/null || fail "the man page target (help2man) did not build"
(cd "$build" && cpack -G DEB -B "$work" >"$work/cpack.log" 2>&1) || { cat "$work/cpack.log" >&2; fail "cpack -G DEB"; }
deb=$(ls "$work"/swapvisor_*.deb 2>/dev/null | head -n 1)
[[ -n $deb ]] || fail "cpack made no swapvisor_*.deb: $(ls "$work")"
echo "built $(basename "$deb")"
dpkg-deb -c "$deb" >"$work/contents"
for f in ./usr/bin/swapvisor ./usr/share/man/man8/swapvisor.8.gz ./usr/share/bash-completion/completions/swapvisor \
         ./usr/lib/systemd/system/swapvisor.service ./usr/share/swapvisor/serve.toml; do
  grep -q " $f\$" "$work/contents" || fail "$f is not in the package: $(cat "$work/contents")"
done
dpkg-deb -f "$deb" Depends | grep -q libsystemd0 || fail "Depends: lacks the shared libraries: $(dpkg-deb -f "$deb" Depends)"

dpkg -i "$deb" >"$work/dpkg.log" 2>&1 || { cat "$work/dpkg.log" >&2; fail "dpkg -i"; }
out=$(/usr/bin/swapvisor --version) || fail "the installed swapvisor --version exited $?"
[[ $out == "$("$build/swapvisor" --version)" ]] || fail "installed --version '$out' differs from the build's"
echo "installed: $out"
# Slim images tell dpkg not to unpack man pages (path-exclude): then the page is
# checked inside the package only.
man_installed=yes
grep -qs 'path-exclude=/usr/share/man' /etc/dpkg/dpkg.cfg.d/* && man_installed=no
page=/usr/share/man/man8/swapvisor.8.gz
if [[ $man_installed == yes ]]; then
  [[ -f $page ]] || fail "no man page installed"
else
  mkdir -p "$work/x" && dpkg-deb -x "$deb" "$work/x" && page=$work/x/usr/share/man/man8/swapvisor.8.gz
fi
zcat "$page" | grep -q "SIGHUP" || fail "the man page lacks the SIGNALS section"
zcat "$page" | grep -qE -- '(\\-\\-|--)config' || fail "the man page lacks serve --config"
bash -c 'source /usr/share/bash-completion/completions/swapvisor && complete -p swapvisor' >/dev/null ||
  fail "the bash completion does not load"
[[ -f /etc/swapvisor/serve.toml ]] || fail "postinst did not provide /etc/swapvisor/serve.toml"
unit=/usr/lib/systemd/system/swapvisor.service
grep -q "^ExecStart=/usr/bin/swapvisor serve --config /etc/swapvisor/serve.toml" "$unit" || fail "unit ExecStart: $(grep Exec "$unit")"
/usr/bin/swapvisor serve --config /etc/swapvisor/serve.toml --help >/dev/null || fail "the packaged config does not parse"
if command -v systemd-analyze >/dev/null; then
  # Documentation=man:swapvisor(8) is checked too where man(1) exists.
  man_check=no
  command -v man >/dev/null && [[ $man_installed == yes ]] && man_check=yes
  out=$(systemd-analyze verify --man=$man_check "$unit" 2>&1) || fail "systemd-analyze verify $unit: $out"
  [[ -z $out ]] || fail "systemd-analyze verify is not clean: $out"
  echo "ok: systemd-analyze verify $unit is clean"
else
  echo "note: systemd-analyze is absent; the unit was not verified"
fi
dpkg -r swapvisor >/dev/null 2>&1 || fail "dpkg -r swapvisor"
[[ ! -e /usr/bin/swapvisor ]] || fail "dpkg -r left /usr/bin/swapvisor"
echo "ok: the .deb installs a working swapvisor, its man page, completion, config and unit, and is removed"
