# Locates LibTorch inside the pinned `torch` wheel and exposes it as the
# interface target `trine::torch`.
#
# Why not plain find_package(Torch) everywhere: the PyPI wheel is a CUDA build,
# and its CMake config insists on a CUDA toolkit at configure time although the
# CPU libraries need none. Without a toolkit (TRINE_WITH_CUDA=OFF) we therefore
# link libtorch_cpu and libc10 directly; with one (ON, or AUTO finding nvcc) we
# use the wheel's own TorchConfig.cmake, which brings the CUDA targets.

set(TRINE_TORCH_DIR "" CACHE PATH "Directory of the installed torch package (site-packages/torch)")
set(TRINE_WITH_CUDA AUTO CACHE STRING
  "Build against LibTorch's CUDA libraries (NCCL, CUDA tensors): ON, OFF, or AUTO (ON when LibTorch has CUDA and a CUDA toolkit is found)")

if(NOT TRINE_TORCH_DIR)
  find_package(Python3 REQUIRED COMPONENTS Interpreter)
  execute_process(
    COMMAND ${Python3_EXECUTABLE} -c
      "import importlib.util, os; s = importlib.util.find_spec('torch'); print(os.path.dirname(s.origin) if s else '')"
    OUTPUT_VARIABLE _trine_torch_dir OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _trine_torch_dir)
    message(FATAL_ERROR
      "trine: no `torch` package found for ${Python3_EXECUTABLE}. Run scripts/setup.sh, "
      "or pass -DTRINE_TORCH_DIR=<site-packages/torch>.")
  endif()
  set(TRINE_TORCH_DIR "${_trine_torch_dir}" CACHE PATH "" FORCE)
endif()

if(NOT EXISTS "${TRINE_TORCH_DIR}/include/torch/csrc/api/include/torch/torch.h")
  message(FATAL_ERROR "trine: ${TRINE_TORCH_DIR} does not hold LibTorch headers (include/torch/csrc/api/include/torch/torch.h)")
endif()

# AUTO: whenever the LibTorch in use has CUDA (libtorch_cuda) and nvcc is
# there to satisfy its CMake config, compile the CUDA paths (NCCL backend).
if(TRINE_WITH_CUDA STREQUAL "AUTO")
  find_program(TRINE_NVCC nvcc HINTS /usr/local/cuda/bin)
  if(EXISTS "${TRINE_TORCH_DIR}/lib/libtorch_cuda.so" AND TRINE_NVCC)
    set(TRINE_WITH_CUDA ON)
    if(NOT CMAKE_CUDA_COMPILER)
      set(CMAKE_CUDA_COMPILER "${TRINE_NVCC}")
    endif()
  else()
    set(TRINE_WITH_CUDA OFF)
  endif()
endif()

add_library(trine_torch INTERFACE)
add_library(trine::torch ALIAS trine_torch)

if(TRINE_WITH_CUDA)
  list(APPEND CMAKE_PREFIX_PATH "${TRINE_TORCH_DIR}/share/cmake")
  find_package(Torch REQUIRED)
  target_link_libraries(trine_torch INTERFACE ${TORCH_LIBRARIES})
  target_compile_definitions(trine_torch INTERFACE TRINE_WITH_CUDA=1)
else()
  target_include_directories(trine_torch SYSTEM INTERFACE
    "${TRINE_TORCH_DIR}/include"
    "${TRINE_TORCH_DIR}/include/torch/csrc/api/include")
  target_link_libraries(trine_torch INTERFACE
    "${TRINE_TORCH_DIR}/lib/libtorch_cpu.so"
    "${TRINE_TORCH_DIR}/lib/libc10.so")
  # The wheel is built with the C++11 ABI; mixing ABIs gives link errors on std::string.
  target_compile_definitions(trine_torch INTERFACE _GLIBCXX_USE_CXX11_ABI=1)
endif()
message(STATUS "trine: LibTorch from ${TRINE_TORCH_DIR} (CUDA: ${TRINE_WITH_CUDA})")
