// moex lrc: routing consistency of a trace (SRP, SCH), replayed cache policies and load
// statistics, as tables, JSON (docs/TRACE_FORMAT.md), CSV files and an SVG plot.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "moex/trace.h"
#include "tools/args.h"
#include "tools/commands.h"
#include "tools/trace_files.h"

namespace moex::cli {
namespace {

constexpr char kHelp[] =
    "usage: moex lrc TRACE... [--m 4,16,64,256] [--json] [--csv DIR] [--plot FILE.svg]\n"
    "                [--bootstrap N] [--experts N] [--format F] [--no-policies]\n"
    "  TRACE          trace files of the same model (moex trace, or imports: see --format);\n"
    "                 several are analysed as one trace with their sequences side by side\n"
    "  --m LIST       segment lengths for SRP and SCH                 (default: 4,16,64,256)\n"
    "  --format F     trace | csv ([seq,]token,layer,experts[,weights]) | mixtral-jsonl\n"
    "                 (default: by extension: .csv, .jsonl, else trace)\n"
    "  --experts N    expert count of an imported trace        (default: largest id + 1)\n"
    "  --bootstrap N  95% intervals from N resamples of the sequences        (default: 0)\n"
    "  --seed N       bootstrap seed                                          (default: 1)\n"
    "  --no-policies  skip the LRU / LFU / score / Belady replay\n"
    "  --no-predictors  skip the predictor accuracy (recorded guesses, previous-token,\n"
    "                 frequency)\n"
    "  --group LIST   token grouping for prefill: micro-batch sizes    (default: 16,64; 0: off)\n"
    "  --group-chunk N  prefill chunk the tokens are grouped within     (default: 1024)\n"
    "  --json         one JSON object on stdout (schema: docs/TRACE_FORMAT.md)\n"
    "  --csv DIR      srp.csv, sch.csv, policies.csv, load.csv, stats.csv,\n"
    "                 predictors.csv, token_grouping.csv into DIR\n"
    "  --plot F.svg   SRP by layer, SCH and policy hit rates against cache size, load map\n"
    "  -t N           threads                                        (default: all cores)\n";

std::string Num(double v) {
  if (std::isnan(v)) return "null";
  return absl::StrFormat("%.6g", v);
}

std::string Fmt(double v) { return std::isnan(v) ? "   -  " : absl::StrFormat("%.4f", v); }

// ---- JSON -------------------------------------------------------------------------------

void JsonFigures(const LrcReport& r, const LrcFigures& f, bool layer, std::string* o) {
  const auto& ms = r.segment_lengths;
  const int E = r.header.num_experts;
  const bool ci = r.bootstrap > 0;
  auto pair = [](const Estimate& e) { return absl::StrCat("[", Num(e.lo), ",", Num(e.hi), "]"); };
  absl::StrAppend(o, "{");
  if (layer) absl::StrAppend(o, "\"layer\":", f.layer, ",");
  std::vector<std::string> a, b, c, d;
  for (size_t i = 0; i < ms.size(); ++i) {
    a.push_back(absl::StrCat("\"", ms[i], "\":", Num(f.srp[i].value)));
    b.push_back(absl::StrCat("\"", ms[i], "\":", f.srp_threshold[i]));
    c.push_back(absl::StrCat("\"", ms[i], "\":", Num(f.srp_set_size[i])));
    d.push_back(absl::StrCat("\"", ms[i], "\":", pair(f.srp[i])));
  }
  absl::StrAppend(o, "\"srp\":{", absl::StrJoin(a, ","), "},\"srp_threshold\":{",
                  absl::StrJoin(b, ","), "},\"srp_set_size\":{", absl::StrJoin(c, ","), "},");
  if (ci) absl::StrAppend(o, "\"srp_ci\":{", absl::StrJoin(d, ","), "},");
  auto by_c = [&](const std::vector<Estimate>& v, bool interval) {
    std::vector<std::string> parts;
    for (int C = 1; C <= E; ++C) {
      parts.push_back(
          absl::StrCat("\"", C, "\":", interval ? pair(v[C - 1]) : Num(v[C - 1].value)));
    }
    return absl::StrCat("{", absl::StrJoin(parts, ","), "}");
  };
  for (int interval = 0; interval <= (ci ? 1 : 0); ++interval) {
    std::vector<std::string> parts;
    for (size_t i = 0; i < ms.size(); ++i) {
      parts.push_back(absl::StrCat("\"", ms[i], "\":", by_c(f.sch[i], interval)));
    }
    absl::StrAppend(o, interval ? "\"sch_ci\":{" : "\"sch\":{", absl::StrJoin(parts, ","), "},");
    parts.clear();
    for (size_t p = 0; p < f.policies.size(); ++p) {
      parts.push_back(absl::StrCat("\"", kPolicyNames[p], "\":", by_c(f.policies[p], interval)));
    }
    absl::StrAppend(o, interval ? "\"policies_ci\":{" : "\"policies\":{", absl::StrJoin(parts, ","),
                    "},");
  }
  if (layer) {
    std::vector<std::string> l;
    for (double v : f.load) l.push_back(Num(v));
    absl::StrAppend(o, "\"load\":[", absl::StrJoin(l, ","), "],");
  }
  absl::StrAppend(o, "\"load_max_over_mean\":", Num(f.load_max_over_mean),
                  ",\"load_entropy_bits\":", Num(f.load_entropy_bits),
                  ",\"load_entropy_norm\":", Num(f.load_entropy_norm),
                  ",\"reuse_prev_token\":", Num(f.reuse_prev_token),
                  ",\"coactivation_topk_share\":",
                  f.coactivation_topk_share < 0 ? "null" : Num(f.coactivation_topk_share));
  if (!f.predictors.empty()) {
    std::vector<std::string> preds;
    for (const PredictorFigures& p : f.predictors) {
      std::vector<std::string> ds;
      for (size_t d = 0; d < p.by_distance.size(); ++d) {
        const PredictorScore& sc = p.by_distance[d];
        ds.push_back(absl::StrCat("\"", d + 1, "\":{\"recall\":", Num(sc.recall), ",\"precision\":",
                                  Num(sc.precision), ",\"samples\":", sc.samples, "}"));
      }
      preds.push_back(absl::StrCat(JsonString(p.name), ":{", absl::StrJoin(ds, ","), "}"));
    }
    absl::StrAppend(o, ",\"predictors\":{", absl::StrJoin(preds, ","), "}");
  }
  absl::StrAppend(o, "}");
}

std::string Json(const LrcReport& r) {
  std::string o = absl::StrCat(
      "{\"model_name\":", JsonString(r.header.model), ",\"num_experts\":", r.header.num_experts,
      ",\"top_k\":", r.header.top_k, ",\"num_layers\":", r.header.num_layers,
      ",\"tokens\":", r.tokens, ",\"sequences\":", r.sequences, ",\"segment_lengths\":[",
      absl::StrJoin(r.segment_lengths, ","), "],\"bootstrap\":", r.bootstrap, ",\"model\":");
  JsonFigures(r, r.model, false, &o);
  o += ",\"layers\":[";
  for (size_t l = 0; l < r.layers.size(); ++l) {
    if (l) o += ",";
    JsonFigures(r, r.layers[l], true, &o);
  }
  o += "]";
  std::vector<std::string> recorded;
  for (const std::string& name : r.header.predictors) recorded.push_back(JsonString(name));
  absl::StrAppend(&o, ",\"recorded_predictors\":[", absl::StrJoin(recorded, ","),
                  "],\"predict_distance\":", r.header.predict_distance);
  std::vector<std::string> groups;
  for (const TokenGroupingFigures& g : r.token_grouping) {
    groups.push_back(absl::StrCat("\"", g.batch, "\":{\"before\":", Num(g.distinct_before),
                                  ",\"after\":", Num(g.distinct_after),
                                  ",\"micro_batches\":", g.micro_batches, ",\"tokens\":", g.tokens,
                                  ",\"chunks\":", g.chunks, "}"));
  }
  absl::StrAppend(&o, ",\"token_grouping\":{", absl::StrJoin(groups, ","), "}}\n");
  return o;
}

// ---- tables -----------------------------------------------------------------------------

// The cache sizes the tables show: k, 2k, 4k (those <= E).
std::vector<int> TableSizes(const LrcReport& r) {
  std::vector<int> cs;
  for (int mult : {1, 2, 4}) {
    if (r.header.top_k * mult <= r.header.num_experts) cs.push_back(r.header.top_k * mult);
  }
  return cs;
}

std::string Tables(const LrcReport& r) {
  const auto& ms = r.segment_lengths;
  const int k = r.header.top_k;
  const std::vector<int> cs = TableSizes(r);
  std::string o = absl::StrFormat(
      "model %s: %d layers, %d experts, top-%d; %d tokens in %d sequences\n\n", r.header.model,
      r.header.num_layers, r.header.num_experts, k, r.tokens, r.sequences);
  auto est = [&](const Estimate& e) {
    return r.bootstrap > 0 ? absl::StrFormat("%s [%s, %s]", Fmt(e.value), Fmt(e.lo), Fmt(e.hi))
                           : Fmt(e.value);
  };
  o += "whole model (counts of all layers pooled)\n";
  for (size_t i = 0; i < ms.size(); ++i) {
    absl::StrAppendFormat(&o, "  m=%-4d SRP %s (tau %d, fixed set %.2f experts)\n", ms[i],
                          est(r.model.srp[i]), r.model.srp_threshold[i], r.model.srp_set_size[i]);
    for (int C : cs) {
      absl::StrAppendFormat(&o, "         SCH C=%d (%dk) %s\n", C, C / k,
                            est(r.model.sch[i][C - 1]));
    }
  }
  for (size_t p = 0; p < r.model.policies.size(); ++p) {
    absl::StrAppendFormat(&o, "  %-7s", kPolicyNames[p]);
    for (int C : cs) {
      absl::StrAppendFormat(&o, " C=%d (%dk) %s", C, C / k, est(r.model.policies[p][C - 1]));
    }
    o += "\n";
  }
  absl::StrAppendFormat(&o,
                        "  load max/mean %.2f, entropy %.3f of the maximum; previous token's "
                        "experts reused %.3f; next-layer co-activation top-k share %.3f\n\n",
                        r.model.load_max_over_mean, r.model.load_entropy_norm,
                        r.model.reuse_prev_token, r.model.coactivation_topk_share);
  if (!r.model.predictors.empty()) {
    size_t dmax = 0;
    for (const PredictorFigures& p : r.model.predictors)
      dmax = std::max(dmax, p.by_distance.size());
    o += "predictors: recall@k / precision of the guesses for layer l made d layers before it\n";
    absl::StrAppendFormat(&o, "  %-24s", "predictor");
    for (size_t d = 1; d <= dmax; ++d) absl::StrAppendFormat(&o, "  %-15s", absl::StrCat("d=", d));
    o += "\n";
    for (const PredictorFigures& p : r.model.predictors) {
      absl::StrAppendFormat(&o, "  %-24s", absl::StrCat(p.name, p.recorded ? "" : " *"));
      for (const PredictorScore& sc : p.by_distance) {
        absl::StrAppendFormat(&o, "  %s / %s", Fmt(sc.recall), Fmt(sc.precision));
      }
      o += "\n";
    }
    o += "  (* computed from the routing; the others were recorded with the trace)\n\n";
  }
  if (!r.token_grouping.empty()) {
    absl::StrAppendFormat(&o,
                          "token grouping for prefill: mean distinct experts per micro-batch and "
                          "layer, %d tokens in %d chunks\n",
                          r.token_grouping[0].tokens, r.token_grouping[0].chunks);
    for (const TokenGroupingFigures& g : r.token_grouping) {
      absl::StrAppendFormat(
          &o, "  B=%-5d in order %7.3f  grouped %7.3f  (%+.1f%%)\n", g.batch, g.distinct_before,
          g.distinct_after,
          g.distinct_before > 0 ? 100 * (g.distinct_after / g.distinct_before - 1) : 0.0);
    }
    o += "\n";
  }
  // Per layer: SRP for each m; SCH at the second m (16 by default) and the policies at 2k.
  const size_t mi = ms.size() > 1 ? 1 : 0;
  const int c2 = std::min(2 * k, r.header.num_experts);
  o += "layer";
  for (int m : ms) absl::StrAppendFormat(&o, "  SRP%-4d", m);
  absl::StrAppendFormat(&o, "  SCH%d@%-3d", ms[mi], c2);
  for (size_t p = 0; p < r.model.policies.size(); ++p) {
    absl::StrAppendFormat(&o, " %6s@%-3d", kPolicyNames[p], c2);
  }
  o += "  max/mean  entropy  reuse\n";
  for (const LrcFigures& f : r.layers) {
    absl::StrAppendFormat(&o, "%5d", f.layer);
    for (size_t i = 0; i < ms.size(); ++i) absl::StrAppendFormat(&o, "  %-7s", Fmt(f.srp[i].value));
    absl::StrAppendFormat(&o, "  %-9s", Fmt(f.sch[mi][c2 - 1].value));
    for (size_t p = 0; p < f.policies.size(); ++p) {
      absl::StrAppendFormat(&o, " %-10s", Fmt(f.policies[p][c2 - 1].value));
    }
    absl::StrAppendFormat(&o, "  %8.2f  %7.3f  %5.3f\n", f.load_max_over_mean, f.load_entropy_norm,
                          f.reuse_prev_token);
  }
  return o;
}

// ---- CSV --------------------------------------------------------------------------------

bool WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
  return static_cast<bool>(out.flush());
}

bool WriteCsv(const LrcReport& r, const std::string& dir, std::string* err) {
  const int k = r.header.top_k, E = r.header.num_experts;
  std::string srp = "layer,m,srp,lo,hi,threshold,set_size\n";
  std::string sch = "layer,m,C,C_over_k,sch,lo,hi\n";
  std::string pol = "layer,policy,C,C_over_k,hit_rate,lo,hi\n";
  std::string load = "layer,expert,share\n";
  std::string stats =
      "layer,load_max_over_mean,load_entropy_bits,load_entropy_norm,reuse_prev_token,"
      "coactivation_topk_share\n";
  std::string preds = "layer,predictor,distance,recall,precision,samples\n";
  std::string groups = "batch,before,after,micro_batches,tokens,chunks\n";
  for (const TokenGroupingFigures& g : r.token_grouping) {
    absl::StrAppend(&groups, g.batch, ",", Num(g.distinct_before), ",", Num(g.distinct_after), ",",
                    g.micro_batches, ",", g.tokens, ",", g.chunks, "\n");
  }
  auto add = [&](const LrcFigures& f, const std::string& name) {
    for (size_t i = 0; i < r.segment_lengths.size(); ++i) {
      const int m = r.segment_lengths[i];
      absl::StrAppend(&srp, name, ",", m, ",", Num(f.srp[i].value), ",", Num(f.srp[i].lo), ",",
                      Num(f.srp[i].hi), ",", f.srp_threshold[i], ",", Num(f.srp_set_size[i]), "\n");
      for (int C = 1; C <= E; ++C) {
        const Estimate& e = f.sch[i][C - 1];
        absl::StrAppend(&sch, name, ",", m, ",", C, ",", Num(double(C) / k), ",", Num(e.value), ",",
                        Num(e.lo), ",", Num(e.hi), "\n");
      }
    }
    for (size_t p = 0; p < f.policies.size(); ++p) {
      for (int C = 1; C <= E; ++C) {
        const Estimate& e = f.policies[p][C - 1];
        absl::StrAppend(&pol, name, ",", kPolicyNames[p], ",", C, ",", Num(double(C) / k), ",",
                        Num(e.value), ",", Num(e.lo), ",", Num(e.hi), "\n");
      }
    }
    for (size_t e = 0; e < f.load.size(); ++e) {
      absl::StrAppend(&load, name, ",", e, ",", Num(f.load[e]), "\n");
    }
    absl::StrAppend(&stats, name, ",", Num(f.load_max_over_mean), ",", Num(f.load_entropy_bits),
                    ",", Num(f.load_entropy_norm), ",", Num(f.reuse_prev_token), ",",
                    f.coactivation_topk_share < 0 ? "" : Num(f.coactivation_topk_share), "\n");
    for (const PredictorFigures& p : f.predictors) {
      for (size_t d = 0; d < p.by_distance.size(); ++d) {
        const PredictorScore& sc = p.by_distance[d];
        absl::StrAppend(&preds, name, ",", p.name, ",", d + 1, ",", Num(sc.recall), ",",
                        Num(sc.precision), ",", sc.samples, "\n");
      }
    }
  };
  add(r.model, "model");
  for (const LrcFigures& f : r.layers) add(f, std::to_string(f.layer));
  for (const auto& [name, data] :
       std::vector<std::pair<std::string, std::string>>{{"srp.csv", srp},
                                                        {"sch.csv", sch},
                                                        {"policies.csv", pol},
                                                        {"load.csv", load},
                                                        {"stats.csv", stats},
                                                        {"predictors.csv", preds},
                                                        {"token_grouping.csv", groups}}) {
    if (!WriteFile(dir + "/" + name, data)) {
      *err = absl::StrCat("cannot write ", dir, "/", name, " (does the directory exist?)");
      return false;
    }
  }
  return true;
}

// ---- SVG --------------------------------------------------------------------------------

constexpr const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                   "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};

std::string Esc(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '<')
      o += "&lt;";
    else if (c == '>')
      o += "&gt;";
    else if (c == '&')
      o += "&amp;";
    else if (c == '"')
      o += "&quot;";
    else
      o += c;
  }
  return o;
}

// A line chart in the box (x0, y0, w, h): x from xmin to xmax, y from 0 to 1.
struct Chart {
  double x0, y0, w, h, xmin, xmax;
  double X(double x) const { return x0 + (xmax > xmin ? (x - xmin) / (xmax - xmin) : 0.5) * w; }
  double Y(double y) const { return y0 + h - y * h; }
};

void Axes(const Chart& c, const std::string& title, const std::string& xlabel,
          const std::vector<std::pair<double, std::string>>& xticks, std::string* o) {
  absl::StrAppendFormat(o,
                        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                        "fill=\"none\" stroke=\"#444\"/>\n",
                        c.x0, c.y0, c.w, c.h);
  absl::StrAppendFormat(o,
                        "<text x=\"%.1f\" y=\"%.1f\" font-size=\"15\" font-weight=\"bold\">"
                        "%s</text>\n",
                        c.x0, c.y0 - 10, Esc(title));
  for (int i = 0; i <= 5; ++i) {
    const double y = c.Y(i / 5.0);
    absl::StrAppendFormat(o,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                          "stroke=\"#ddd\"/>\n",
                          c.x0, y, c.x0 + c.w, y);
    absl::StrAppendFormat(o,
                          "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" "
                          "text-anchor=\"end\">%.1f</text>\n",
                          c.x0 - 5, y + 4, i / 5.0);
  }
  for (const auto& [x, label] : xticks) {
    absl::StrAppendFormat(o,
                          "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\" "
                          "text-anchor=\"middle\">%s</text>\n",
                          c.X(x), c.y0 + c.h + 15, Esc(label));
  }
  absl::StrAppendFormat(o,
                        "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" "
                        "text-anchor=\"middle\">%s</text>\n",
                        c.x0 + c.w / 2, c.y0 + c.h + 32, Esc(xlabel));
}

void Line(const Chart& c, const std::vector<std::pair<double, double>>& pts, const char* color,
          bool dashed, std::string* o) {
  std::string d;
  bool pen = false;
  for (const auto& [x, y] : pts) {
    if (std::isnan(y)) {
      pen = false;
      continue;
    }
    absl::StrAppendFormat(&d, "%s%.1f,%.1f ", pen ? "L" : "M", c.X(x), c.Y(y));
    pen = true;
  }
  absl::StrAppendFormat(o, "<path d=\"%s\" fill=\"none\" stroke=\"%s\" stroke-width=\"2\"%s/>\n", d,
                        color, dashed ? " stroke-dasharray=\"6,4\"" : "");
}

void Legend(double x, double y, const std::vector<std::pair<std::string, std::string>>& items,
            const std::vector<bool>& dashed, std::string* o) {
  for (size_t i = 0; i < items.size(); ++i) {
    const double yy = y + 16 * i;
    absl::StrAppendFormat(o,
                          "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" "
                          "stroke=\"%s\" stroke-width=\"2\"%s/>\n",
                          x, yy, x + 24, yy, items[i].second,
                          dashed[i] ? " stroke-dasharray=\"6,4\"" : "");
    absl::StrAppendFormat(o, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"11\">%s</text>\n", x + 30,
                          yy + 4, Esc(items[i].first));
  }
}

std::string Svg(const LrcReport& r) {
  const int L = r.header.num_layers, E = r.header.num_experts, k = r.header.top_k;
  const auto& ms = r.segment_lengths;
  const double W = 1100, left = 70, pw = 760;
  const double heat_cell_h = std::clamp(360.0 / L, 4.0, 18.0);
  const double heat_h = heat_cell_h * L;
  const double H = 40 + 300 + 80 + 300 + 80 + heat_h + 70;
  std::string o = absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
      "font-family=\"sans-serif\">\n<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n",
      W, H);
  absl::StrAppendFormat(&o,
                        "<text x=\"%.1f\" y=\"22\" font-size=\"17\">%s: %d layers, %d "
                        "experts, top-%d, %d tokens</text>\n",
                        left, Esc(r.header.model), L, E, k, r.tokens);
  // 1. SRP by layer.
  Chart c1{left, 60, pw, 280, 0, static_cast<double>(std::max(L - 1, 1))};
  std::vector<std::pair<double, std::string>> ticks;
  const int step = std::max(1, L / 16);
  for (int l = 0; l < L; l += step) ticks.emplace_back(l, std::to_string(l));
  Axes(c1, "SRP by layer", "layer", ticks, &o);
  std::vector<std::pair<std::string, std::string>> leg;
  std::vector<bool> dashed;
  for (size_t i = 0; i < ms.size(); ++i) {
    std::vector<std::pair<double, double>> pts;
    for (const LrcFigures& f : r.layers) pts.emplace_back(f.layer, f.srp[i].value);
    Line(c1, pts, kColors[i % 8], false, &o);
    leg.emplace_back(absl::StrCat("m=", ms[i], " (model ", Fmt(r.model.srp[i].value), ")"),
                     kColors[i % 8]);
    dashed.push_back(false);
  }
  Legend(left + pw + 20, 80, leg, dashed, &o);
  // 2. SCH and policies against the cache size.
  Chart c2{left, 60 + 280 + 80, pw, 280, 1, static_cast<double>(E)};
  ticks.clear();
  for (int C = k; C <= E; C *= 2) ticks.emplace_back(C, absl::StrCat(C, " (", C / k, "k)"));
  Axes(c2, "SCH and cache-policy hit rate (model)", "cache size C, experts per layer", ticks, &o);
  leg.clear();
  dashed.clear();
  for (size_t i = 0; i < ms.size(); ++i) {
    std::vector<std::pair<double, double>> pts;
    for (int C = 1; C <= E; ++C) pts.emplace_back(C, r.model.sch[i][C - 1].value);
    Line(c2, pts, kColors[i % 8], false, &o);
    leg.emplace_back(absl::StrCat("SCH m=", ms[i]), kColors[i % 8]);
    dashed.push_back(false);
  }
  for (size_t p = 0; p < r.model.policies.size(); ++p) {
    std::vector<std::pair<double, double>> pts;
    for (int C = 1; C <= E; ++C) pts.emplace_back(C, r.model.policies[p][C - 1].value);
    const char* color = kColors[(ms.size() + p) % 8];
    Line(c2, pts, color, true, &o);
    leg.emplace_back(kPolicyNames[p], color);
    dashed.push_back(true);
  }
  Legend(left + pw + 20, 60 + 280 + 100, leg, dashed, &o);
  // 3. Load heat map: share of each expert relative to the uniform 1/E.
  const double y3 = 60 + 2 * (280 + 80);
  absl::StrAppendFormat(&o,
                        "<text x=\"%.1f\" y=\"%.1f\" font-size=\"15\" font-weight=\"bold\">"
                        "Expert load by layer (blue: unused, white: uniform share 1/E, "
                        "red: %s x uniform)"
                        "</text>\n",
                        left, y3 - 10, ">= 4");
  const double cw = pw / E;
  for (const LrcFigures& f : r.layers) {
    for (int e = 0; e < E; ++e) {
      const double rel = f.load.empty() ? 0 : f.load[e] * E;
      int rr, gg, bb;
      if (rel <= 1) {  // blue (unused) to white (the uniform share)
        rr = gg = static_cast<int>(55 + 200 * rel);
        bb = 255;
      } else {  // white to red (4x the uniform share or more)
        const double t = std::min(1.0, (rel - 1) / 3);
        rr = 255;
        gg = bb = static_cast<int>(255 - 200 * t);
      }
      absl::StrAppendFormat(&o,
                            "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
                            "fill=\"rgb(%d,%d,%d)\"/>\n",
                            left + e * cw, y3 + f.layer * heat_cell_h, cw + 0.05,
                            heat_cell_h + 0.05, rr, gg, bb);
    }
  }
  absl::StrAppendFormat(&o,
                        "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" "
                        "fill=\"none\" stroke=\"#444\"/>\n",
                        left, y3, pw, heat_h);
  for (int l = 0; l < L; l += step) {
    absl::StrAppendFormat(&o,
                          "<text x=\"%.1f\" y=\"%.1f\" font-size=\"10\" "
                          "text-anchor=\"end\">%d</text>\n",
                          left - 5, y3 + (l + 0.5) * heat_cell_h + 3, l);
  }
  absl::StrAppendFormat(&o,
                        "<text x=\"%.1f\" y=\"%.1f\" font-size=\"12\" "
                        "text-anchor=\"middle\">expert (0..%d); rows: layers</text>\n",
                        left + pw / 2, y3 + heat_h + 20, E - 1);
  o += "</svg>\n";
  return o;
}

}  // namespace

int CmdLrc(int argc, char** argv) {
  Args a;
  std::string err;
  if (!a.Parse(argc, argv,
               {"m", "csv", "plot", "bootstrap", "experts", "format", "seed", "threads", "group",
                "group-chunk"},
               {"help", "json", "no-policies", "no-predictors"}, &err)) {
    return Usage("lrc", err);
  }
  if (a.Has("help")) {
    std::fputs(kHelp, stdout);
    return 0;
  }
  if (a.positionals().empty()) return Usage("lrc", "no trace file given");
  LrcOptions opt;
  if (a.Has("m")) {
    opt.segment_lengths.clear();
    std::vector<int32_t> ms;
    if (!ParseIdList(a.Str("m"), &ms) || ms.empty()) {
      return Usage("lrc", "--m needs a comma-separated list of segment lengths");
    }
    for (int32_t m : ms) {
      if (m < 1 || m > 65536)
        return Usage("lrc", absl::StrCat("segment length ", m, " not in 1..65536"));
      opt.segment_lengths.push_back(m);
    }
  }
  if (a.Has("group")) {
    opt.group_sizes.clear();
    std::vector<int32_t> bs;
    if (!ParseIdList(a.Str("group"), &bs) || bs.empty()) {
      return Usage("lrc", "--group needs a comma-separated list of micro-batch sizes");
    }
    for (int32_t b : bs) {
      if (b < 0 || b > 65536) return Usage("lrc", absl::StrCat("micro-batch size ", b));
      if (b > 0) opt.group_sizes.push_back(b);
    }
  }
  const int64_t group_chunk = a.Int("group-chunk", 1024, &err);
  const int64_t boot = a.Int("bootstrap", 0, &err);
  const int64_t experts = a.Int("experts", 0, &err);
  opt.seed = a.Int("seed", 1, &err);
  opt.threads = static_cast<int>(a.Int("threads", 0, &err));
  if (!err.empty()) return Usage("lrc", err);
  if (boot < 0 || boot > 100000) return Usage("lrc", "--bootstrap must be in 0..100000");
  if (experts < 0 || experts > 65535) return Usage("lrc", "--experts must be in 1..65535");
  opt.bootstrap = boot;
  opt.policies = !a.Has("no-policies");
  opt.predictors = !a.Has("no-predictors");
  if (group_chunk < 1 || group_chunk > 65536)
    return Usage("lrc", "--group-chunk must be in 1..65536");
  opt.group_chunk = static_cast<int32_t>(group_chunk);
  const auto t0 = std::chrono::steady_clock::now();
  Trace merged;
  if (!LoadTraces(a.positionals(), a.Str("format"), experts, /*load_probs=*/true, &merged, &err)) {
    return err.rfind("unknown --format", 0) == 0 || err.rfind("--experts", 0) == 0
               ? Usage("lrc", err)
               : Fail("lrc", err);
  }
  absl::StatusOr<Trace> trace = std::move(merged);
  const auto t1 = std::chrono::steady_clock::now();
  absl::StatusOr<LrcReport> rep = AnalyzeTrace(*trace, opt);
  if (!rep.ok()) return Fail("lrc", std::string(rep.status().message()));
  const auto t2 = std::chrono::steady_clock::now();
  std::fprintf(stderr, "read %.2f s, analysed %.2f s (%lld tokens x %d layers)\n",
               std::chrono::duration<double>(t1 - t0).count(),
               std::chrono::duration<double>(t2 - t1).count(), static_cast<long long>(rep->tokens),
               rep->header.num_layers);

  if (a.Has("csv") && !WriteCsv(*rep, a.Str("csv"), &err)) return Fail("lrc", err);
  if (a.Has("plot") && !WriteFile(a.Str("plot"), Svg(*rep))) {
    return Fail("lrc", absl::StrCat("cannot write ", a.Str("plot")));
  }
  const std::string out = a.Has("json") ? Json(*rep) : Tables(*rep);
  std::fwrite(out.data(), 1, out.size(), stdout);
  return 0;
}

}  // namespace moex::cli
