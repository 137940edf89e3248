// Schemas of every tgfr operator. Implementations live in one file per device
// (word_region_cpu.cpp, cuda/*.cpp) and register with TORCH_LIBRARY_IMPL.
#include <Python.h>
#include <torch/library.h>

#include "bf16_products.h"
// Generated in the build folder by setup.py or CMakeLists.txt (see tgfr/_source_hash.py).
#include "tgfr_source_hash.h"

extern "C" {
// `import tgfr._C` loads this library, which runs the registrations below.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
  // tgfr/ops/_library.py compares it with the checkout's sources to catch a stale build.
  if (module != nullptr && PyModule_AddStringConstant(module, "source_hash", TGFR_SOURCE_HASH) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  // 1 where bf16 inputs of the CPU word-region kernel take bf16 products (bf16_products.h): tests
  // say where they do not, rather than run the fp32 products twice under two names.
  if (module != nullptr &&
      PyModule_AddIntConstant(module, "cpu_bf16_products", tgfr::cpu::bf16_products_supported() ? 1 : 0) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

TORCH_LIBRARY(tgfr, m) {
  // scores[i, j] = log sum_{t < lengths[i]} exp(gamma2 * cos(c_ijt, w_it)); see SPEC.md section 2.
  m.def(
      "word_region_scores(Tensor words, Tensor lengths, Tensor regions, float gamma1, "
      "float gamma2, bool word_softmax) -> Tensor");
  m.def(
      "word_region_scores_backward(Tensor grad_scores, Tensor words, Tensor lengths, "
      "Tensor regions, float gamma1, float gamma2, bool word_softmax) -> (Tensor, Tensor)");
  // alpha of the pairs (i, i): (N, T, R), zeros at padded words.
  m.def(
      "word_region_attention(Tensor words, Tensor lengths, Tensor regions, float gamma1, "
      "bool word_softmax) -> Tensor");
  // Fused contrastive cross-entropy (SPEC section 3): logits = scale * (<x_i, y_j> - margin on
  // the diagonal j == i + offset), same-identity entries handled by `same_identity`. Returns the
  // per-row and per-column cross-entropies ((0,) when that direction is off) and their
  // log-sum-exps (saved for the backward); O(N + M) memory.
  m.def(
      "contrastive_forward(Tensor x, Tensor y, Tensor? labels_x, Tensor? labels_y, float scale, "
      "float margin, str same_identity, int offset, bool rows, bool columns) "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  m.def(
      "contrastive_backward(Tensor grad_row_loss, Tensor grad_col_loss, Tensor x, Tensor y, "
      "Tensor? labels_x, Tensor? labels_y, Tensor row_lse, Tensor col_lse, float scale, float margin, "
      "str same_identity, int offset, bool rows, bool columns) -> (Tensor, Tensor)");
  // max over j != i + offset of the masked similarity of row i (CoReFace's hardest negative).
  m.def(
      "contrastive_row_max(Tensor x, Tensor y, Tensor? labels_x, Tensor? labels_y, "
      "str same_identity, int offset) -> Tensor");
}
