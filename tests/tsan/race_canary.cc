// Proves that a TSan run of moex can still see a race inside a parallel region: the
// wrappers of kernels_cpu/parallel.h announce the caller -> body and body -> caller edges,
// and scripts/tsan.supp silences TBB's own hand-off; neither may order two bodies.
//   race_canary clean   bodies write disjoint slots: TSan must stay silent (exit 0)
//   race_canary race    every body bumps one shared counter: TSan must report it (exit 66)
#include <chrono>
#include <cstdio>
#include <cstring>
#include <thread>
#include <vector>

#include "kernels_cpu/parallel.h"
#include "tbb/task_arena.h"

int main(int argc, char** argv) {
  const bool race = argc > 1 && std::strcmp(argv[1], "race") == 0;
  std::vector<long> input(64), slots(64, 0);
  for (size_t i = 0; i < input.size(); ++i) input[i] = static_cast<long>(i);  // caller writes
  long shared = 0;
  tbb::task_arena arena(2);
  moex::ArenaExecute(arena, [&] {
    moex::ParallelFor(tbb::blocked_range<size_t>(0, input.size(), 1),
                      [&](const tbb::blocked_range<size_t>& r) {
                        for (size_t i = r.begin(); i < r.end(); ++i) {
                          // Long enough that both threads of the arena take chunks.
                          std::this_thread::sleep_for(std::chrono::milliseconds(2));
                          slots[i] = input[i] * 2;
                          if (race) shared += 1;
                        }
                      });
  });
  long sum = 0;
  for (long v : slots) sum += v;  // caller reads what the bodies wrote
  std::printf("sum %ld shared %ld\n", sum, shared);
  return sum == 64 * 63 ? 0 : 1;
}
