#pragma once

#include <map>
#include <string>

namespace srf {

// CUDA runtime/driver versions and visible device count, or an "error" entry. Never throws:
// it is safe to call on machines without a GPU or driver.
std::map<std::string, std::string> cuda_runtime_info();

}  // namespace srf
