#pragma once
// The one way moex enters a parallel region: every tbb::parallel_for, parallel_reduce and
// task_arena::execute of the library goes through these.
//
// Why a wrapper: Debian's libtbb is not built with -fsanitize=thread, so the atomics with
// which TBB hands a range to a worker and wakes the caller at the join are invisible to
// ThreadSanitizer, which then reports every buffer the caller filled before a loop and
// every output it reads after it as a race (docs/ROBUSTNESS.md). Under TSan these
// wrappers tell it about exactly those two edges: the caller's writes before the region
// happen before each body, and each body happens before the caller's return. Bodies are
// NOT ordered against one another, so two bodies writing the same bytes are still
// reported. Without TSan they are the plain TBB calls.
#include <utility>

#include "tbb/blocked_range.h"
#include "tbb/parallel_for.h"
#include "tbb/parallel_reduce.h"
#include "tbb/task_arena.h"

#if defined(__SANITIZE_THREAD__)
#define MOEX_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define MOEX_TSAN 1
#endif
#endif

#ifdef MOEX_TSAN
extern "C" void __tsan_acquire(void* addr);
extern "C" void __tsan_release(void* addr);
#endif

namespace moex {

// Tells TSan that what this thread did before HappensBefore(tag) happens before what
// another thread does after its HappensAfter(tag), for a hand-off made through
// synchronisation it cannot see (TBB's). No-ops without TSan.
#ifdef MOEX_TSAN
inline void HappensBefore(const void* tag) { __tsan_release(const_cast<void*>(tag)); }
inline void HappensAfter(const void* tag) { __tsan_acquire(const_cast<void*>(tag)); }
#else
inline void HappensBefore(const void*) {}
inline void HappensAfter(const void*) {}
#endif

namespace parallel_internal {

// The two happens-before edges of one region. Two addresses, not one: with a single one,
// a body that starts after another body ended would acquire that body's release and TSan
// would miss races between them.
class HandOff {
 public:
#ifdef MOEX_TSAN
  HandOff() { HappensBefore(&start_); }
  void Enter() { HappensAfter(&start_); }
  void Leave() { HappensBefore(&done_); }
  void Join() { HappensAfter(&done_); }

 private:
  char start_ = 0;
  char done_ = 0;
#else
  void Enter() {}
  void Leave() {}
  void Join() {}
#endif
};

// The function object handed to task_arena::execute. TBB keeps a reference to it, so the
// thread that runs it reaches it at its own address: announcing the hand-off on `this`
// reads nothing of the caller's memory first (a lambda capturing the hand-off by reference
// would, and TSan would report that read).
template <typename Func>
class ArenaCall {
 public:
  explicit ArenaCall(const Func& f) : f_(&f) { HappensBefore(this); }
  void operator()() const {
    HappensAfter(this);
    (*f_)();
    HappensBefore(&done_);
  }
  void Join() const { HappensAfter(&done_); }

 private:
  const Func* f_;
  char done_ = 0;
};

}  // namespace parallel_internal

// tbb::parallel_for(range, body).
template <typename Range, typename Body>
void ParallelFor(const Range& range, const Body& body) {
#ifdef MOEX_TSAN
  parallel_internal::HandOff h;
  tbb::parallel_for(range, [&](const Range& r) {
    h.Enter();
    body(r);
    h.Leave();
  });
  h.Join();
#else
  tbb::parallel_for(range, body);
#endif
}

// tbb::parallel_for(first, last, f): f(i) for every i in [first, last), split as TBB's
// own index form splits it (grain 1, auto partitioner). Written over the range form
// because TBB's index form keeps a reference to the caller's functor on the caller's
// stack, whose captures a worker would read before the hand-off is announced.
template <typename Index, typename Func>
void ParallelFor(Index first, Index last, const Func& f) {
  ParallelFor(tbb::blocked_range<Index>(first, last), [&f](const tbb::blocked_range<Index>& r) {
    for (Index i = r.begin(); i < r.end(); ++i) f(i);
  });
}

// tbb::parallel_reduce(range, identity, body, join) in its functional form.
template <typename Range, typename Value, typename Body, typename Join>
Value ParallelReduce(const Range& range, const Value& identity, const Body& body,
                     const Join& join) {
#ifdef MOEX_TSAN
  parallel_internal::HandOff h;
  Value v = tbb::parallel_reduce(
      range, identity,
      [&](const Range& r, Value acc) {
        h.Enter();
        Value out = body(r, std::move(acc));
        h.Leave();
        return out;
      },
      [&](Value a, Value b) {
        h.Enter();
        Value out = join(std::move(a), std::move(b));
        h.Leave();
        return out;
      });
  h.Join();
  return v;
#else
  return tbb::parallel_reduce(range, identity, body, join);
#endif
}

// arena.execute(f): f may run on another thread already in the arena (a delegated task)
// while the caller waits.
template <typename Func>
void ArenaExecute(tbb::task_arena& arena, const Func& f) {
  parallel_internal::ArenaCall<Func> call(f);
  arena.execute(call);
  call.Join();
}

}  // namespace moex
