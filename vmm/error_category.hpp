// EnumCategory: the std::error_category of one of vmm/'s error-code enums
// (LoadErrc, CliErrc, VirtioErrc, DeviceErrc), so that each enum's .cpp only names
// the category and says what each code means (STYLE.md §3: one Errc per module,
// turned into std::error_code through its category).
#pragma once

#include <string>
#include <system_error>

namespace swapvisor::vmm {

template <class E>
class EnumCategory final : public std::error_category {
public:
    using Describe = std::string (*)(E);
    constexpr EnumCategory(const char* name, Describe describe) : name_(name), describe_(describe) {}
    const char* name() const noexcept override { return name_; }
    std::string message(int code) const override { return describe_(static_cast<E>(code)); }

private:
    const char* name_;
    Describe describe_;
};

}  // namespace swapvisor::vmm
