// CorePinning: inside the arena every thread runs on one core of its own (slot i on core
// i mod cores), the caller's binding comes back when the call returns, and a worker that
// leaves the arena is unpinned. Read back with sched_getaffinity, independently of hwloc.
#include "runtime/core_pinning.h"

#include <sched.h>

#include <iostream>
#include <mutex>
#include <set>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "kernels_cpu/parallel.h"
#include "tbb/task_arena.h"

namespace moex {
namespace {

cpu_set_t Affinity() {
  cpu_set_t set;
  CPU_ZERO(&set);
  EXPECT_EQ(sched_getaffinity(0, sizeof(set), &set), 0);
  return set;
}

TEST(CorePinningTest, EachSlotRunsOnItsOwnCore) {
  const int hw = static_cast<int>(std::thread::hardware_concurrency());
  tbb::task_arena arena(2);
  CorePinning pinning(arena);
  if (pinning.cores() < 2 || hw < 2) {
    GTEST_SKIP() << "needs two cores (hwloc found " << pinning.cores() << ")";
  }
  const cpu_set_t before = Affinity();
  std::mutex mu;
  std::set<int> slots;
  std::vector<cpu_set_t> seen;
  // Through the library's wrappers, so that TSan sees the hand-offs (kernels_cpu/parallel.h).
  ArenaExecute(arena, [&] {
    ParallelFor(0, 2000, [&](int) {
      const cpu_set_t s = Affinity();
      volatile double x = 0;
      for (int i = 0; i < 2000; ++i) x = x + i;  // long enough for both slots to join
      std::lock_guard<std::mutex> lock(mu);
      slots.insert(tbb::this_task_arena::current_thread_index());
      seen.push_back(s);
    });
  });
  ASSERT_TRUE(pinning.pinned()) << "the system refused the binding";
  // Every task ran on a thread bound to the CPUs of one core: with one hardware thread a
  // core, exactly one CPU.
  std::set<std::vector<int>> distinct;
  for (const cpu_set_t& s : seen) {
    std::vector<int> cpus;
    for (int c = 0; c < CPU_SETSIZE; ++c) {
      if (CPU_ISSET(c, &s)) cpus.push_back(c);
    }
    ASSERT_FALSE(cpus.empty());
    ASSERT_LE(static_cast<int>(cpus.size()), hw / pinning.cores()) << "not one core's CPUs";
    distinct.insert(cpus);
  }
  std::cout << "[ pinned   ] " << slots.size() << " slots on " << distinct.size() << " core(s)\n";
  // Two slots ran, on two different cores.
  if (slots.size() == 2) {
    EXPECT_EQ(distinct.size(), 2u);
  }
  // The calling thread has its own binding back.
  const cpu_set_t after = Affinity();
  EXPECT_TRUE(CPU_EQUAL(&before, &after));
}

TEST(CorePinningTest, NothingIsPinnedWithoutTheObserver) {
  tbb::task_arena arena(2);
  const cpu_set_t before = Affinity();
  int wide = 0;
  ArenaExecute(arena, [&] {
    const cpu_set_t s = Affinity();
    wide = CPU_COUNT(&s);
  });
  EXPECT_EQ(wide, CPU_COUNT(&before));
}

}  // namespace
}  // namespace moex
