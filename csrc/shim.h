// What every msdiff C++ shim shares: no C++ exception crosses into Rust. A shim function runs its
// body under `msd::guard`, returns 0, or 1 with `*err` set to a malloc'ed message (freed by Rust
// with msd_free_str, defined in dist_shim.cpp; src/shim.rs turns the pair into a Result).
#pragma once

#include <c10/util/Exception.h>

#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>

namespace msd {

inline char* dup(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) {
    std::memcpy(p, s.c_str(), s.size() + 1);
  }
  return p;
}

// c10 errors carry a long C++ backtrace after the message: keep the message.
inline std::string first_lines(const char* what) {
  std::string s(what);
  auto pos = s.find("\nException raised from");
  if (pos != std::string::npos) s = s.substr(0, pos);
  pos = s.find("\nframe #");
  if (pos != std::string::npos) s = s.substr(0, pos);
  return s;
}

template <typename F>
int guard(char** err, F&& f) {
  try {
    f();
    return 0;
  } catch (const c10::Error& e) {
    *err = dup(first_lines(e.what_without_backtrace()));
  } catch (const std::exception& e) {
    *err = dup(first_lines(e.what()));
  } catch (...) {
    *err = dup("unknown C++ exception");
  }
  return 1;
}

}  // namespace msd
