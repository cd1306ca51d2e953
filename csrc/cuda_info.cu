// Compiled by nvcc only when CUDA is enabled: reports what the CUDA runtime sees.
#include <cuda_runtime.h>

#include "cuda_info.h"

namespace srf {

std::map<std::string, std::string> cuda_runtime_info() {
  std::map<std::string, std::string> info;
  int runtime = 0, driver = 0, count = 0;
  cudaRuntimeGetVersion(&runtime);
  info["runtime_version"] = std::to_string(runtime);
  cudaDriverGetVersion(&driver);  // 0 when no driver is installed
  info["driver_version"] = std::to_string(driver);
  cudaError_t err = cudaGetDeviceCount(&count);
  if (err != cudaSuccess) {
    info["error"] = std::string("cudaGetDeviceCount: ") + cudaGetErrorString(err);
    cudaGetLastError();  // clear the sticky-free error so later calls start clean
    count = 0;
  }
  info["device_count"] = std::to_string(count);
  return info;
}

}  // namespace srf
