// The owner of a shared precompiled header (attnd_precompile in CMakeLists.txt): CMake builds the
// PCH as part of this target and the targets that use the PCH reuse it (REUSE_FROM). An owner of
// a PCH for executables is an executable itself (-fPIE), hence a main; in a library it is unused.
int main() { return 0; }
