#!/usr/bin/env bash
# check-layers.sh [ROOT]: the layering STYLE.md promises, checked on the sources.
#   - dependencies point down only: vmm -> guestmem -> swap -> io;
#   - <linux/kvm.h> only under vmm/kvm/, <liburing.h> only in io/ring.cpp,
#     Boost.Asio only under vmm/control/.
# Prints every violation as file:line and exits 1 if there is any. Run by
# scripts/test.sh (and so by CI) and as the ctest `script.layers_test`.
set -u
root=${1:-$(cd "$(dirname "$0")/.." && pwd)}
cd "$root" || exit 2
bad=0

# forbid <folder> <regex> <why>: no file under folder may match.
forbid() {
  local folder=$1 pattern=$2 why=$3 hits
  hits=$(grep -rnE --include='*.cpp' --include='*.hpp' --include='*.h' "$pattern" "$folder" 2>/dev/null || true)
  if [[ -n $hits ]]; then
    echo "layer violation ($why):"
    echo "$hits" | sed 's/^/  /'
    bad=1
  fi
}

forbid io       '#include "(swap|guestmem|vmm)/' "io/ is the bottom layer"
forbid swap     '#include "(guestmem|vmm)/'      "swap/ may use only io/"
forbid guestmem '#include "vmm/'                 "guestmem/ may use only swap/ and io/"
for folder in io swap guestmem vmm; do
  forbid "$folder" '#include "(tests|examples|bench)/' "nothing includes tests/, examples/ or bench/"
done

# allow_only <regex> <allowed path regex> <why>
allow_only() {
  local pattern=$1 allowed=$2 why=$3 hits
  hits=$(grep -rnE --include='*.cpp' --include='*.hpp' --include='*.h' "$pattern" io swap guestmem vmm 2>/dev/null |
         grep -vE "^($allowed)" || true)
  if [[ -n $hits ]]; then
    echo "layer violation ($why):"
    echo "$hits" | sed 's/^/  /'
    bad=1
  fi
}
allow_only '#include <linux/kvm.h>' 'vmm/kvm/'        "<linux/kvm.h> only in vmm/kvm/"
allow_only '#include <liburing.h>'  'io/ring.cpp:'     "<liburing.h> only in io/ring.cpp"
allow_only '#include <boost/asio'   'vmm/control/'     "Boost.Asio only in vmm/control/"

if [[ $bad -eq 0 ]]; then echo "check-layers: ok"; fi
exit $bad
