# Dependencies from Debian's packages (scripts/setup.sh installs them).
find_package(nlohmann_json 3.10 REQUIRED)
find_package(CLI11 REQUIRED)   # libcli11-dev: subcommands, typed options and help text for `trine`
find_package(MPI REQUIRED COMPONENTS CXX)

find_path(METIS_INCLUDE_DIR metis.h PATHS /usr/include)
find_library(METIS_LIBRARY metis)
if(NOT METIS_INCLUDE_DIR OR NOT METIS_LIBRARY)
  message(FATAL_ERROR "trine: METIS not found; install libmetis-dev (scripts/setup.sh does)")
endif()
add_library(trine_metis INTERFACE)
add_library(trine::metis ALIAS trine_metis)
target_include_directories(trine_metis SYSTEM INTERFACE ${METIS_INCLUDE_DIR})
target_link_libraries(trine_metis INTERFACE ${METIS_LIBRARY})

# Gloo's headers: the torch wheel ships Gloo's code inside libtorch_cpu but not
# the headers that c10d/ProcessGroupGloo.hpp includes. Debian's libgloo-dev
# provides them; only runtime/src/backend_factory.cpp includes them, and it
# uses no more of Gloo than the types c10d's header names (tested by the
# runtime's multi-process tests, which fail at once on a mismatch).
find_path(GLOO_INCLUDE_DIR gloo/context.h PATHS /usr/include)
if(NOT GLOO_INCLUDE_DIR)
  message(FATAL_ERROR "trine: Gloo headers not found; install libgloo-dev (scripts/setup.sh does)")
endif()
