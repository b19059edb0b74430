#include "tools/args.h"

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>

#include "moex/device.h"

namespace moex::cli {
namespace {

const std::map<std::string, std::string>& ShortFlags() {
  static const auto* m = new std::map<std::string, std::string>{
      {"m", "model"},    {"p", "prompt"}, {"n", "n-predict"}, {"t", "threads"},
      {"c", "ctx-size"}, {"o", "output"}, {"s", "seed"}};
  return *m;
}

}  // namespace

bool Args::Parse(int argc, char** argv, const std::set<std::string>& flags,
                 const std::set<std::string>& switches, std::string* error) {
  for (int i = 0; i < argc; ++i) {
    std::string a = argv[i];
    if (a.size() < 2 || a[0] != '-' || (a[1] >= '0' && a[1] <= '9')) {
      positionals_.push_back(a);
      continue;
    }
    std::string name, value;
    bool has_value = false;
    if (a[1] == '-') {
      name = a.substr(2);
      if (auto eq = name.find('='); eq != std::string::npos) {
        value = name.substr(eq + 1);
        name = name.substr(0, eq);
        has_value = true;
      }
    } else {
      auto it = ShortFlags().find(a.substr(1));
      if (it == ShortFlags().end()) {
        *error = "unknown flag " + a;
        return false;
      }
      name = it->second;
    }
    if (!flags.count(name) && !switches.count(name)) {
      *error = "unknown flag " + a;
      return false;
    }
    if (switches.count(name)) {
      values_[name] = has_value ? value : "true";
      continue;
    }
    if (!has_value) {
      if (i + 1 >= argc) {
        *error = "flag " + a + " needs a value";
        return false;
      }
      value = argv[++i];
    }
    values_[name] = value;
  }
  return true;
}

std::string Args::Str(const std::string& name, const std::string& fallback) const {
  auto it = values_.find(name);
  return it == values_.end() ? fallback : it->second;
}

int64_t Args::Int(const std::string& name, int64_t fallback, std::string* error) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  char* end = nullptr;
  errno = 0;
  const long long v = std::strtoll(it->second.c_str(), &end, 10);
  if (errno != 0 || end == it->second.c_str() || *end != '\0') {
    *error = "--" + name + " expects an integer, got '" + it->second + "'";
    return fallback;
  }
  return v;
}

double Args::Float(const std::string& name, double fallback, std::string* error) const {
  auto it = values_.find(name);
  if (it == values_.end()) return fallback;
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(it->second.c_str(), &end);
  if (errno != 0 || end == it->second.c_str() || *end != '\0') {
    *error = "--" + name + " expects a number, got '" + it->second + "'";
    return fallback;
  }
  return v;
}

bool ParseIdList(const std::string& s, std::vector<int32_t>* out) {
  out->clear();
  size_t i = 0;
  while (i < s.size()) {
    size_t j = s.find_first_of(", ", i);
    if (j == std::string::npos) j = s.size();
    if (j > i) {
      const std::string tok = s.substr(i, j - i);
      char* end = nullptr;
      errno = 0;
      const long v = std::strtol(tok.c_str(), &end, 10);
      if (errno != 0 || *end != '\0' || v < INT32_MIN || v > INT32_MAX) return false;
      out->push_back(static_cast<int32_t>(v));
    }
    i = j + 1;
  }
  return !out->empty();
}

namespace {
// Length of the valid UTF-8 sequence at s[i], or 0 when it is not valid.
size_t Utf8Length(const std::string& s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
  if (len == 0 || i + len > s.size()) return 0;
  for (size_t k = 1; k < len; ++k) {
    if ((static_cast<unsigned char>(s[i + k]) & 0xC0) != 0x80) return 0;
  }
  return len;
}
}  // namespace

std::string JsonString(const std::string& s) {
  std::string o = "\"";
  for (size_t i = 0; i < s.size(); ++i) {
    const auto c = static_cast<unsigned char>(s[i]);
    if (c >= 0x80) {
      // Model output may hold partial UTF-8 (byte tokens); JSON must stay valid.
      const size_t len = Utf8Length(s, i);
      if (len == 0) {
        o += "\\ufffd";
      } else {
        o.append(s, i, len);
        i += len - 1;
      }
      continue;
    }
    switch (c) {
      case '"':
        o += "\\\"";
        break;
      case '\\':
        o += "\\\\";
        break;
      case '\n':
        o += "\\n";
        break;
      case '\r':
        o += "\\r";
        break;
      case '\t':
        o += "\\t";
        break;
      default:
        if (c < 0x20) {
          char buf[8];
          std::snprintf(buf, sizeof(buf), "\\u%04x", c);
          o += buf;
        } else {
          o.push_back(static_cast<char>(c));
        }
    }
  }
  return o + "\"";
}

bool ReadFile(const std::string& path, std::string* out) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return false;
  std::stringstream ss;
  ss << f.rdbuf();
  *out = ss.str();
  return !f.bad();
}

std::vector<std::vector<int32_t>> TextWindows(const std::vector<int32_t>& ids, int32_t bos,
                                              int64_t ctx, int64_t stride, int64_t max_windows) {
  const int64_t body = ctx - (bos >= 0 ? 1 : 0);
  std::vector<std::vector<int32_t>> out;
  for (int64_t start = 0; start + body <= static_cast<int64_t>(ids.size()); start += stride) {
    if (max_windows >= 0 && static_cast<int64_t>(out.size()) >= max_windows) break;
    std::vector<int32_t>& w = out.emplace_back();
    if (bos >= 0) w.push_back(bos);
    w.insert(w.end(), ids.begin() + start, ids.begin() + start + body);
  }
  return out;
}

int Fail(const char* cmd, const std::string& msg) {
  std::fprintf(stderr, "moex %s: %s\n", cmd, msg.c_str());
  return 1;
}

int Usage(const char* cmd, const std::string& msg) {
  std::fprintf(stderr, "moex %s: %s (see `moex %s --help`)\n", cmd, msg.c_str(), cmd);
  return 2;
}

std::set<std::string> WithSampling(std::set<std::string> flags) {
  for (const char* f : kSamplingFlags) flags.insert(f);
  flags.insert("kv-policy");
  flags.insert("kv-type");
  return flags;
}

void ParseKv(const Args& a, SessionOptions* s) {
  s->kv_policy = a.Str("kv-policy", s->kv_policy);
  s->kv_type = a.Str("kv-type", s->kv_type);
}

std::set<std::string> WithDevice(std::set<std::string> flags) {
  for (const char* f :
       {"device", "cpu-profile", "gpu-mem", "moe-policy", "cache-policy", "prefetch", "profiles"}) {
    flags.insert(f);
  }
  return flags;
}

std::string LoadProfilesFlag(const Args& a) {
  if (!a.Has("profiles")) return "";
  const absl::Status st = LoadProfiles(a.Str("profiles"));
  return st.ok() ? "" : std::string(st.message());
}

std::string ParseDevice(const Args& a, SessionOptions* s) {
  // The command line's default is the GPU when there is one (the library's is cpu).
  s->device = a.Str("device", "auto");
  s->cpu_profile = a.Str("cpu-profile", s->cpu_profile);
  s->gpu_mem = a.Str("gpu-mem", s->gpu_mem);
  s->moe_policy = a.Str("moe-policy", s->moe_policy);
  s->cache_policy = a.Str("cache-policy", s->cache_policy);
  s->prefetch = a.Str("prefetch", s->prefetch);
  return LoadProfilesFlag(a);
}

const char kDeviceHelp[] =
    "  --device D       auto (default: cuda when a GPU is present and the model runs there,\n"
    "                   else cpu) | cpu | cuda[:N]: the GPU runs attention, norms, routers, "
    "shared\n"
    "                   experts, the head and the experts of the deepest layers that fit, the\n"
    "                   CPU the other layers' experts | sim:PROFILE: a simulated GPU beside\n"
    "                   this CPU (same tokens; reports the GPU's time; profiles: moex calibrate\n"
    "                   --list-profiles)\n"
    "  --cpu-profile C  sim: the CPU side, host (measured, default) or a profile name\n"
    "  --gpu-mem SIZE   GPU memory for experts: 6GiB, 512MiB, 25% (default: all left); cuda\n"
    "                   places whole layers\n"
    "  --moe-policy P   hybrid (default), static-layers, lru-ondemand, cpu-only, gpu-only\n"
    "  --cache-policy C score, lru, lfu (default: the policy's)\n"
    "  --prefetch M     impact, score-rank, none (default: the policy's)\n"
    "  --profiles F     extra GPU/CPU profiles (moex calibrate --save-profile) for sim:NAME\n";

void ParseSampling(const Args& a, SamplingOptions* s, std::string* err) {
  s->temperature = static_cast<float>(a.Float("temp", s->temperature, err));
  s->top_k = static_cast<int32_t>(a.Int("top-k", s->top_k, err));
  s->top_p = static_cast<float>(a.Float("top-p", s->top_p, err));
  s->min_p = static_cast<float>(a.Float("min-p", s->min_p, err));
  s->repeat_penalty = static_cast<float>(a.Float("repeat-penalty", s->repeat_penalty, err));
  s->repeat_last_n = static_cast<int32_t>(a.Int("repeat-last-n", s->repeat_last_n, err));
  s->seed = static_cast<uint64_t>(a.Int("seed", static_cast<int64_t>(s->seed), err));
}

}  // namespace moex::cli
