// Result<T> = std::expected<T, Error>: how every layer below vmm/ reports failure.
// An Error carries a std::error_code (errno values or a layer's own Errc), the
// name of the operation that failed and, where the caller knows it, what it was
// done to (a path, a guest address, a device), so one message says all three:
//   "swap-in read (device /var/tmp/a.swap, GPA 0x7f000): Input/output error".
// Lower layers set `op`; each layer that adds knowledge adds context with
// `with_context` on the way up, never by rewording the message.
// SWV_TRY propagates an error; SWV_ASSERT aborts on a broken invariant.
#pragma once

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <expected>
#include <string>
#include <system_error>
#include <utility>

namespace swapvisor {

struct Error {
    std::error_code code;
    const char* op = "";   // static string naming the failed operation
    std::string context;   // what it was done to; empty when the op says it all

    std::string message() const {
        std::string m(op);
        if (!context.empty()) m += " (" + context + ")";
        return m + ": " + code.message();
    }
    // Add what the operation was applied to; an inner context is kept after it.
    Error&& with_context(std::string what) && {
        context = context.empty() ? std::move(what) : std::move(what) + ", " + context;
        return std::move(*this);
    }
    // Equivalence, not identity: errno_error codes are system_category, and a layer's
    // Errc may map to a generic condition through its default_error_condition.
    bool is(std::errc e) const { return code == std::make_error_condition(e); }
};

template <class T>
using Result = std::expected<T, Error>;

// An Error from errno (or an explicit errno value) for the named operation.
inline std::unexpected<Error> errno_error(const char* op, int err = errno, std::string context = {}) {
    return std::unexpected(Error{std::error_code(err, std::system_category()), op, std::move(context)});
}

template <class E>
    requires std::is_error_code_enum_v<E>
inline std::unexpected<Error> make_error(E e, const char* op, std::string context = {}) {
    return std::unexpected(Error{make_error_code(e), op, std::move(context)});
}

// The same result with `what` added to its error's context (a value passes through).
template <class T>
Result<T> with_context(Result<T> r, std::string what) {
    if (!r) return std::unexpected(std::move(r.error()).with_context(std::move(what)));
    return r;
}

[[noreturn]] inline void assert_fail(const char* expr, const char* file, int line, const char* why) {
    std::fprintf(stderr, "swapvisor: invariant broken at %s:%d: %s (%s)\n", file, line, why, expr);
    std::abort();
}

}  // namespace swapvisor

// Evaluate a Result-returning expression; return its error from the enclosing function,
// otherwise yield its value (GNU statement expression, as Hedron's TRY_OR_RETURN;
// __extension__ keeps -Wpedantic quiet about it).
#define SWV_TRY(expr)                                                  \
    __extension__ ({                                                   \
        auto&& swv_try_result_ = (expr);                               \
        if (!swv_try_result_) return std::unexpected(swv_try_result_.error()); \
        std::move(swv_try_result_).value();                            \
    })

#define SWV_ASSERT(cond, why) \
    do { if (!(cond)) ::swapvisor::assert_fail(#cond, __FILE__, __LINE__, (why)); } while (0)
