// How swapvisor's log lines look (vmm/README.md#logging). Serial output owns stdout;
// logs go to stderr, one line each:
//   - on a terminal or into a file: a timestamp with its UTC offset, then the level
//     ("2026-12-06T07:40:01.123+00:00 swapvisor: info: ..."), so an audit line says
//     when on its own;
//   - started by systemd with stderr connected to the journal (JOURNAL_STREAM names
//     stderr's device and inode, systemd.exec(5)): a `<N>` syslog priority prefix,
//     as sd-daemon(3) describes, and no timestamp (the journal adds its own).
// SPDLOG_LEVEL=debug (or --log-level) shows more.
#pragma once

namespace swapvisor::vmm {

// Whether stderr is the journal's stream (JOURNAL_STREAM matches fstat(2)).
bool stderr_is_journal();
// Install the "swapvisor" stderr logger as the default, in the format above.
void setup_logging();

}  // namespace swapvisor::vmm
