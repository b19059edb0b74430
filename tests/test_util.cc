#include "tests/test_util.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <vector>

namespace moex::testing {

std::string TestDataDir() {
  if (const char* env = std::getenv("MOEX_TESTDATA")) return env;
  struct stat st;
  if (stat(MOEX_TESTDATA_DIR, &st) == 0 && S_ISDIR(st.st_mode)) return MOEX_TESTDATA_DIR;
  return "";
}

namespace {

// The directories MakeTempDir made in this process, removed when it exits.
std::vector<std::string>& MadeDirs() {
  static auto* dirs = new std::vector<std::string>();
  return *dirs;
}

pid_t g_maker = 0;  // the process that made them (a forked child must not remove them)

void RemoveMadeDirs() {
  if (getpid() != g_maker) return;
  for (const std::string& d : MadeDirs()) {
    std::error_code ec;
    std::filesystem::remove_all(d, ec);  // best effort: a test may have left it read-only
  }
}

}  // namespace

std::string MakeTempDir() {
  const char* base = std::getenv("TMPDIR");
  std::string tmpl =
      std::string(base != nullptr && base[0] == '/' ? base : "/tmp") + "/moex_test_XXXXXX";
  if (mkdtemp(tmpl.data()) == nullptr) {
    // Never fall back to a shared directory: callers write into it and delete it whole.
    std::fprintf(stderr, "MakeTempDir: mkdtemp(%s): %s\n", tmpl.c_str(), std::strerror(errno));
    std::abort();
  }
  if (MadeDirs().empty()) {
    g_maker = getpid();
    std::atexit(RemoveMadeDirs);
  }
  MadeDirs().push_back(tmpl);
  return tmpl;
}

std::string BinaryPath(const std::string& relative) {
  return std::string(MOEX_BINARY_DIR) + "/" + relative;
}

bool ReadLogitsFile(const std::string& path, Logits* out, std::string* error) {
  std::ifstream f(path, std::ios::binary);
  if (!f) {
    *error = "cannot open " + path;
    return false;
  }
  f.read(reinterpret_cast<char*>(&out->n_tokens), 4);
  f.read(reinterpret_cast<char*>(&out->n_vocab), 4);
  if (!f || out->n_tokens <= 0 || out->n_vocab <= 0) {
    *error = "bad header in " + path;
    return false;
  }
  out->data.resize(static_cast<size_t>(out->n_tokens) * out->n_vocab);
  f.read(reinterpret_cast<char*>(out->data.data()), out->data.size() * sizeof(float));
  if (!f) {
    *error = "truncated logits in " + path;
    return false;
  }
  return true;
}

std::vector<float> RandomNormal(std::mt19937_64& rng, size_t n) {
  std::normal_distribution<float> d(0, 1);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

int RunCommand(const std::string& command, std::string* output) {
  output->clear();
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) return -1;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) output->append(buf.data(), n);
  int rc = pclose(p);
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : 128 + WTERMSIG(rc);
}

double JsonNumber(const std::string& json, const std::string& key) {
  const std::string k = "\"" + key + "\":";
  const size_t at = json.find(k);
  if (at == std::string::npos) return std::nan("");
  const char* begin = json.c_str() + at + k.size();
  char* end = nullptr;
  const double v = std::strtod(begin, &end);
  return end == begin ? std::nan("") : v;
}

}  // namespace moex::testing
