// Prints word_region_shared_memory_bytes for the shapes given on the command line, one
// "T R D dtype backward" group of five arguments each (dtype: f32, bf16 or f16; backward: 0 or 1),
// one number per line. Host code only, so it runs without a GPU: tests/test_kernels_build.py compares
// it with the mirror of the layout that tgfr/ops/backends.py uses to choose a backend.
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "word_region.cuh"

int main(int argc, char** argv) {
  using tgfr::kernels::ScalarType;
  if ((argc - 1) % 5 != 0) {
    std::fprintf(stderr, "usage: %s [T R D f32|bf16|f16 0|1]...\n", argv[0]);
    return 2;
  }
  for (int i = 1; i < argc; i += 5) {
    tgfr::kernels::WordRegionProblem problem{};
    problem.num_words = std::atoll(argv[i]);
    problem.num_regions = std::atoll(argv[i + 1]);
    problem.dim = std::atoll(argv[i + 2]);
    const char* dtype = argv[i + 3];
    problem.dtype = std::strcmp(dtype, "f32") == 0    ? ScalarType::kFloat32
                    : std::strcmp(dtype, "bf16") == 0 ? ScalarType::kBFloat16
                                                      : ScalarType::kFloat16;
    std::printf("%zu\n", tgfr::kernels::word_region_shared_memory_bytes(problem, argv[i + 4][0] == '1'));
  }
  return 0;
}
