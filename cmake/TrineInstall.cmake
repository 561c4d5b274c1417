# `cmake --install build --prefix PREFIX` puts trine's libraries (frontend,
# partitioner, tensor_parallel, schedules, recompute, runtime), their headers,
# the `trine` command and a CMake package config into PREFIX, so that another
# project can say
#   find_package(trine REQUIRED)          # CMAKE_PREFIX_PATH=PREFIX
#   target_link_libraries(app PRIVATE trine::runtime)
# The package records the LibTorch it was built against (the torch wheel's
# folder) and finds it, MPI and nlohmann_json again in the consumer.
include(CMakePackageConfigHelpers)
include(GNUInstallDirs)

set(_trine_parts common frontend partitioner tensor_parallel schedules recompute runtime)
foreach(part ${_trine_parts})
  set_target_properties(trine_${part} PROPERTIES EXPORT_NAME ${part})
  install(DIRECTORY ${CMAKE_SOURCE_DIR}/${part}/include/ DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
endforeach()
set_target_properties(trine_torch PROPERTIES EXPORT_NAME torch)
set_target_properties(trine_metis PROPERTIES EXPORT_NAME metis)
install(TARGETS trine_common trine_frontend trine_partitioner trine_tensor_parallel trine_schedules trine_recompute trine_runtime
                trine_torch trine_metis
        EXPORT trineTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR})
install(TARGETS trine RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
install(EXPORT trineTargets NAMESPACE trine:: DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/trine)
configure_package_config_file(${CMAKE_SOURCE_DIR}/cmake/trineConfig.cmake.in
  ${CMAKE_BINARY_DIR}/trineConfig.cmake INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/trine)
write_basic_package_version_file(${CMAKE_BINARY_DIR}/trineConfigVersion.cmake COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_BINARY_DIR}/trineConfig.cmake ${CMAKE_BINARY_DIR}/trineConfigVersion.cmake
        DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/trine)
