// Work split of the fused CPU backwards (and the contrastive forward) that accumulate into the
// rows of both operands: rows and columns are cut into P groups each, and in step s task k
// takes row group k against column group (k + s) mod P. Within a step no two tasks share a row
// group or a column group, so each writes its own rows of both results without atomics or
// per-thread copies, and after P steps every (row group, column group) pair was visited once.
#pragma once

#include <cstdint>
#include <vector>

namespace tgfr::cpu {

// Splits [0, count) into `parts` nearly equal ranges; returns the parts + 1 boundaries.
inline std::vector<int64_t> even_split(int64_t count, int64_t parts) {
  std::vector<int64_t> bounds(parts + 1);
  for (int64_t p = 0; p <= parts; ++p) bounds[p] = count * p / parts;
  return bounds;
}

// Column group that row group `row_group` works on in step `step`.
inline int64_t rotated_group(int64_t row_group, int64_t step, int64_t parts) { return (row_group + step) % parts; }

}  // namespace tgfr::cpu
