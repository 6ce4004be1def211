# One warning set for every target (issue 11). The top-level CMakeLists.txt includes this file
# and, after all add_subdirectory() calls, runs attnd_warnings_everywhere(): each library and
# executable defined in the tree (tests, benchmarks and fuzz harnesses included) gets the set,
# so no CMakeLists.txt below needs -Wall/-Wextra of its own. attnd_target_warnings(<target>) can
# also be called directly (it is idempotent).
#
#   C++ (gcc, clang)   -Wall -Wextra -Wnon-virtual-dtor -Wimplicit-fallthrough -Woverloaded-virtual
#                      -Wsuggest-override -Wformat=2 -Wextra-semi -Wcast-qual; gcc also
#                      -Wduplicated-cond -Wlogical-op (all clean on the tree in Dec 2026; not
#                      taken: -Wshadow 9 findings, -Wuseless-cast 27, -Wmissing-declarations fires
#                      on protoc's generated .pb.cc, -Wpedantic)
#   CUDA (nvcc)        nvcc's own diagnostics (on by default) and -Xcompiler=-Wall,-Wextra for the
#                      host compiler
#   ATTND_WERROR=ON    C++ -Werror; CUDA -Werror=all-warnings -Xcompiler=-Werror
#                      (scripts/build.sh turns it on when CI=true)
#
# Third-party headers (gRPC, Protobuf, Abseil, GoogleTest, spdlog, CUDA, cpp-httplib, the
# generated attnd.pb.h) come in through imported targets or SYSTEM include directories, so
# their warnings are not ours.
option(ATTND_WERROR "Treat compiler warnings as errors (scripts/build.sh: ON when CI=true)" OFF)

set(ATTND_CXX_WARNINGS -Wall -Wextra -Wnon-virtual-dtor -Wimplicit-fallthrough -Woverloaded-virtual
    -Wsuggest-override -Wformat=2 -Wextra-semi -Wcast-qual)
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
  list(APPEND ATTND_CXX_WARNINGS -Wduplicated-cond -Wlogical-op)
endif()
set(ATTND_CUDA_WARNINGS -Xcompiler=-Wall,-Wextra)
if(ATTND_WERROR)
  list(APPEND ATTND_CXX_WARNINGS -Werror)
  list(APPEND ATTND_CUDA_WARNINGS -Werror=all-warnings -Xcompiler=-Werror)
endif()

function(attnd_target_warnings target)
  get_target_property(type ${target} TYPE)
  get_target_property(imported ${target} IMPORTED)
  get_target_property(aliased ${target} ALIASED_TARGET)
  get_target_property(done ${target} ATTND_WARNINGS)
  if(imported OR aliased OR done OR NOT type MATCHES "^(STATIC_LIBRARY|SHARED_LIBRARY|MODULE_LIBRARY|OBJECT_LIBRARY|EXECUTABLE)$")
    return()
  endif()
  target_compile_options(${target} PRIVATE
    "$<$<COMPILE_LANGUAGE:CXX>:${ATTND_CXX_WARNINGS}>"
    "$<$<COMPILE_LANGUAGE:CUDA>:${ATTND_CUDA_WARNINGS}>")
  set_target_properties(${target} PROPERTIES ATTND_WARNINGS ON)
endfunction()

# attnd_warnings_everywhere([DIR]): attnd_target_warnings() on every target defined in DIR
# (default: the current source directory) and the directories below it.
function(attnd_warnings_everywhere)
  set(dir ${CMAKE_CURRENT_SOURCE_DIR})
  if(ARGC GREATER 0)
    set(dir ${ARGV0})
  endif()
  get_directory_property(targets DIRECTORY ${dir} BUILDSYSTEM_TARGETS)
  foreach(t IN LISTS targets)
    attnd_target_warnings(${t})
  endforeach()
  get_directory_property(subdirs DIRECTORY ${dir} SUBDIRECTORIES)
  foreach(sub IN LISTS subdirs)
    attnd_warnings_everywhere(${sub})
  endforeach()
endfunction()
