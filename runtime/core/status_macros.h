// Status helpers. Debian's Abseil (20220623) has no ABSL_RETURN_IF_ERROR, so moex
// defines its own, once, here.
#ifndef MOEX_RUNTIME_CORE_STATUS_MACROS_H_
#define MOEX_RUNTIME_CORE_STATUS_MACROS_H_

#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define MOEX_STATUS_CONCAT_INNER_(a, b) a##b
#define MOEX_STATUS_CONCAT_(a, b) MOEX_STATUS_CONCAT_INNER_(a, b)

// Returns from the enclosing function when `expr` (an absl::Status) is not OK.
#define MOEX_RETURN_IF_ERROR(expr)               \
  do {                                           \
    ::absl::Status moex_status_ = (expr);        \
    if (!moex_status_.ok()) return moex_status_; \
  } while (0)

// `MOEX_ASSIGN_OR_RETURN(auto x, Foo());` assigns the value of a StatusOr, or returns
// its error from the enclosing function.
#define MOEX_ASSIGN_OR_RETURN(lhs, expr) \
  MOEX_ASSIGN_OR_RETURN_IMPL_(MOEX_STATUS_CONCAT_(moex_statusor_, __LINE__), lhs, expr)
#define MOEX_ASSIGN_OR_RETURN_IMPL_(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return std::move(tmp).status();    \
  lhs = std::move(tmp).value()

#endif  // MOEX_RUNTIME_CORE_STATUS_MACROS_H_
