// Which experts a model uses on a text: the router's decisions observed through
// Session::SetRoutingCallback, counted per layer and printed as a table.
//   moex_example_routing MODEL.gguf "some text"
#include <algorithm>
#include <cstdio>
#include <vector>

#include "moex/moex.h"
#include "moex/tokenizer.h"

int main(int argc, char** argv) {
  if (argc != 3) return std::fprintf(stderr, "usage: %s MODEL.gguf TEXT\n", argv[0]), 2;
  auto model = moex::Model::Open(argv[1], {});
  if (!model.ok()) return std::fprintf(stderr, "%s\n", model.status().ToString().c_str()), 1;
  const moex::ModelInfo& info = (*model)->info();
  if (info.n_expert == 0 || (*model)->tokenizer() == nullptr) {
    return std::fprintf(stderr, "need an MoE model with a tokenizer\n"), 1;
  }
  auto ids = (*model)->tokenizer()->Encode(argv[2], {});
  auto session = (*model)->NewSession({});
  if (!ids.ok() || !session.ok()) return std::fprintf(stderr, "cannot start\n"), 1;

  // counts[layer][expert]: how many tokens chose the expert.
  std::vector<std::vector<int>> counts(info.n_layer, std::vector<int>(info.n_expert, 0));
  (*session)->SetRoutingCallback([&](const moex::RoutingEvent& e) {
    for (int i = 0; i < e.n_tokens * e.k; ++i) ++counts[e.layer][e.experts[i]];
  });
  auto logits = (*session)->Evaluate(*ids);
  if (!logits.ok()) return std::fprintf(stderr, "%s\n", logits.status().ToString().c_str()), 1;

  std::printf("%zu tokens, top-%lld of %lld experts\nlayer  most used experts (tokens)\n",
              ids->size(), static_cast<long long>(info.n_expert_used),
              static_cast<long long>(info.n_expert));
  for (int64_t l = 0; l < info.n_layer; ++l) {
    std::vector<int> order(info.n_expert);
    for (int e = 0; e < info.n_expert; ++e) order[e] = e;
    std::sort(order.begin(), order.end(),
              [&](int a, int b) { return counts[l][a] > counts[l][b]; });
    std::printf("%5lld ", static_cast<long long>(l));
    for (int j = 0; j < std::min<int>(4, info.n_expert); ++j) {
      std::printf(" e%-3d(%d)", order[j], counts[l][order[j]]);
    }
    std::printf("\n");
  }
  return 0;
}
