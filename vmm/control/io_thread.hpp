// The one thread that runs an Asio io_context for a server of vmm/control (the
// control socket, /metrics): a handler that throws is logged with the server's name
// and the loop goes on, so one bad request never stops the server.
#pragma once

#include <exception>
#include <thread>

#include <boost/asio/io_context.hpp>
#include <spdlog/spdlog.h>

namespace swapvisor::vmm::control {

inline std::thread run_io_thread(boost::asio::io_context& io, const char* server) {
    return std::thread([&io, server] {
        for (;;) {
            try {
                io.run();
                return;
            } catch (const std::exception& e) {
                spdlog::error("{}: handler failed: {}", server, e.what());
            }
        }
    });
}

}  // namespace swapvisor::vmm::control
