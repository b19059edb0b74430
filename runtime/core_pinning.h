// Pins the threads of a TBB arena one per physical core (hwloc), the CPU executor's
// threading model (DESIGN.md: "a TBB arena sized to the physical cores, pinned with
// hwloc"): a decode step is a run of short parallel regions that each stream a slice of
// the weights, and a thread the OS moves between cores (or onto a core's second hardware
// thread beside another worker) loses its place in that stream.
//
// Slot i of the arena (tbb::this_task_arena::current_thread_index) runs on core
// i mod cores. TBB's workers are shared between arenas, so a worker is unpinned (given
// back the process's own CPU set) when it leaves this arena, and a thread of the
// application that enters it (slot 0 of Model's calls) gets its own binding back when it
// leaves. Pinning is best effort: where the system refuses it (a container, a cgroup that
// does not own the cores) the threads run unpinned and pinned() says false.
// Thread-safety: the observer callbacks run on the threads being (un)pinned; the object
// must outlive the arena's use.
#ifndef MOEX_RUNTIME_CORE_PINNING_H_
#define MOEX_RUNTIME_CORE_PINNING_H_

#include <atomic>
#include <memory>

#include "tbb/task_arena.h"
#include "tbb/task_scheduler_observer.h"

namespace moex {

class CorePinning final : public tbb::task_scheduler_observer {
 public:
  // Starts observing `arena` at once.
  explicit CorePinning(tbb::task_arena& arena);
  ~CorePinning() override;
  CorePinning(const CorePinning&) = delete;
  CorePinning& operator=(const CorePinning&) = delete;

  int cores() const;    // physical cores found (0: hwloc found none; nothing is pinned)
  bool pinned() const;  // every binding asked for so far was granted

  void on_scheduler_entry(bool is_worker) override;
  void on_scheduler_exit(bool is_worker) override;

 private:
  struct Topology;
  void Enter(bool is_worker);
  void Exit(bool is_worker);

  std::unique_ptr<Topology> topo_;
  std::atomic<bool> ok_{true};
};

}  // namespace moex

#endif  // MOEX_RUNTIME_CORE_PINNING_H_
