#include "runtime/core_pinning.h"

#include <hwloc.h>

#include <vector>

#include "kernels_cpu/parallel.h"

namespace moex {

struct CorePinning::Topology {
  hwloc_topology_t topo = nullptr;
  std::vector<hwloc_bitmap_t> cores;  // the cpuset of each physical core
  hwloc_bitmap_t process = nullptr;   // the process's binding at start: what workers get back

  ~Topology() {
    for (hwloc_bitmap_t c : cores) hwloc_bitmap_free(c);
    if (process) hwloc_bitmap_free(process);
    if (topo) hwloc_topology_destroy(topo);
  }
};

namespace {

// The binding an application thread had when it entered the arena (restored on exit),
// freed with the thread.
struct SavedBinding {
  hwloc_bitmap_t set = nullptr;
  ~SavedBinding() {
    if (set) hwloc_bitmap_free(set);
  }
};
thread_local SavedBinding t_saved;

}  // namespace

CorePinning::CorePinning(tbb::task_arena& arena)
    : tbb::task_scheduler_observer(arena), topo_(std::make_unique<Topology>()) {
  Topology& t = *topo_;
  if (hwloc_topology_init(&t.topo) != 0) {
    t.topo = nullptr;
  } else if (hwloc_topology_load(t.topo) == 0) {
    t.process = hwloc_bitmap_alloc();
    if (hwloc_get_cpubind(t.topo, t.process, HWLOC_CPUBIND_PROCESS) != 0) {
      hwloc_bitmap_copy(t.process, hwloc_topology_get_allowed_cpuset(t.topo));
    }
    const int n = hwloc_get_nbobjs_by_type(t.topo, HWLOC_OBJ_CORE);
    for (int i = 0; i < n; ++i) {
      hwloc_obj_t core = hwloc_get_obj_by_type(t.topo, HWLOC_OBJ_CORE, static_cast<unsigned>(i));
      // Only the cores this process may use (a cgroup or taskset may allow fewer).
      if (core == nullptr || !hwloc_bitmap_intersects(core->cpuset, t.process)) continue;
      hwloc_bitmap_t set = hwloc_bitmap_dup(core->cpuset);
      hwloc_bitmap_and(set, set, t.process);
      t.cores.push_back(set);
    }
  }
  // TBB orders the callbacks after observe(true) and observe(false) after the last callback,
  // through synchronisation TSan does not see (Debian's libtbb is not instrumented).
  HappensBefore(&topo_);
  observe(true);
}

CorePinning::~CorePinning() {
  observe(false);
  HappensAfter(&ok_);
}

int CorePinning::cores() const { return static_cast<int>(topo_->cores.size()); }

bool CorePinning::pinned() const { return ok_.load() && cores() > 0; }

void CorePinning::on_scheduler_entry(bool is_worker) {
  HappensAfter(&topo_);
  Enter(is_worker);
  HappensBefore(&ok_);
}

void CorePinning::on_scheduler_exit(bool is_worker) {
  HappensAfter(&topo_);
  Exit(is_worker);
  HappensBefore(&ok_);
}

void CorePinning::Enter(bool is_worker) {
  const Topology& t = *topo_;
  const int slot = tbb::this_task_arena::current_thread_index();
  if (t.cores.empty() || slot < 0) return;
  if (!is_worker) {
    if (t_saved.set == nullptr) t_saved.set = hwloc_bitmap_alloc();
    if (hwloc_get_cpubind(t.topo, t_saved.set, HWLOC_CPUBIND_THREAD) != 0) {
      hwloc_bitmap_copy(t_saved.set, t.process);
    }
  }
  const hwloc_bitmap_t core = t.cores[static_cast<size_t>(slot) % t.cores.size()];
  if (hwloc_set_cpubind(t.topo, core, HWLOC_CPUBIND_THREAD) != 0) ok_ = false;
}

void CorePinning::Exit(bool is_worker) {
  const Topology& t = *topo_;
  if (t.cores.empty()) return;
  const hwloc_bitmap_t back = is_worker || t_saved.set == nullptr ? t.process : t_saved.set;
  hwloc_set_cpubind(t.topo, back, HWLOC_CPUBIND_THREAD);
}

}  // namespace moex
