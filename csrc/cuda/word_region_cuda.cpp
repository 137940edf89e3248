// CUDA implementations of the tgfr::word_region_* operators: checks, allocation and the stream;
// the kernels are in kernels/word_region.cu behind a torch-free launcher API.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>
#include <tuple>

#include "word_region.cuh"

namespace {

namespace kernels = tgfr::kernels;

kernels::ScalarType scalar_type(const at::Tensor& tensor) {
  switch (tensor.scalar_type()) {
    case at::kFloat: return kernels::ScalarType::kFloat32;
    case at::kBFloat16: return kernels::ScalarType::kBFloat16;
    case at::kHalf: return kernels::ScalarType::kFloat16;
    default:
      TORCH_CHECK_TYPE(false, "words must be float32, bfloat16 or float16 for backend 'cuda', got ",
                       tensor.scalar_type());
  }
}

// The dispatcher sends a call here when any argument is on CUDA, but the guard and the kernels
// take words' device for all: anything elsewhere (a CPU tensor, another GPU) would be read
// through a pointer the kernels cannot dereference. Checked before the guard, which cannot take
// a CPU device.
void check_devices(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions) {
  TORCH_CHECK_VALUE(words.is_cuda(), "words must be a CUDA tensor, got one on ", words.device());
  TORCH_CHECK_VALUE(lengths.device() == words.device(), "lengths must be on the device of words (", words.device(),
                    "), got ", lengths.device());
  TORCH_CHECK_VALUE(regions.device() == words.device(), "regions must be on the device of words (", words.device(),
                    "), got ", regions.device());
}

// Contiguous copies of the inputs (the kernels need a contiguous feature dimension) and the problem.
struct Problem {
  at::Tensor words, lengths, regions;
  kernels::WordRegionProblem view;
};

Problem make_problem(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions,
                     double gamma1, double gamma2, bool word_softmax) {
  TORCH_CHECK_VALUE(words.dim() == 3, "words must be (N, T, D), got shape ", words.sizes());
  TORCH_CHECK_VALUE(lengths.dim() == 1, "lengths must be (N,), got shape ", lengths.sizes());
  TORCH_CHECK_VALUE(regions.dim() == 3, "regions must be (M, R, D), got shape ", regions.sizes());
  TORCH_CHECK_VALUE(regions.size(2) == words.size(2), "regions must have the feature size D=", words.size(2),
                    " of words, got ", regions.size(2));
  TORCH_CHECK_VALUE(lengths.size(0) == words.size(0), "lengths must have one entry per caption");
  // As the CPU kernel's: a cast would take lengths 2.9 as 2 (and booleans) from a direct call.
  TORCH_CHECK_VALUE(lengths.scalar_type() == at::kLong, "lengths must be int64, got ", lengths.scalar_type());
  TORCH_CHECK_VALUE(words.size(0) >= 1 && regions.size(0) >= 1, "words and regions must not be empty, got shapes ",
                    words.sizes(), " and ", regions.sizes());
  TORCH_CHECK_VALUE(regions.size(1) >= 1, "regions must have R >= 1 regions per image, got shape ", regions.sizes());
  TORCH_CHECK_VALUE(words.size(2) >= 1, "words and regions must have D >= 1 features, got shape ", words.sizes());
  TORCH_CHECK_TYPE(regions.scalar_type() == words.scalar_type(), "regions must have the dtype of words");
  // The kernels take gammas in float32: past its range one is inf, and every score NaN.
  TORCH_CHECK_VALUE(gamma1 > 0 && gamma2 > 0 && std::isfinite(static_cast<float>(gamma1)) &&
                        std::isfinite(static_cast<float>(gamma2)),
                    "gamma1 and gamma2 must be finite and positive in the kernel's float32, got ", gamma1, " and ",
                    gamma2);
  // The kernels' grid limits (kernels/word_region.cuh), named here rather than reported by the
  // launcher as an anonymous invalid argument.
  TORCH_CHECK_VALUE(words.size(0) <= kernels::kMaxCaptions, "words must have at most ", kernels::kMaxCaptions,
                    " captions (N) for backend 'cuda', got N=", words.size(0));
  Problem problem{words.contiguous(), lengths.contiguous(), regions.contiguous(), {}};
  // Out-of-range lengths would make the kernels read outside words; the front end checks them
  // too, but the op can be called directly.
  const auto [shortest, longest] = at::aminmax(problem.lengths);
  TORCH_CHECK_VALUE(shortest.item<int64_t>() >= 1 && longest.item<int64_t>() <= words.size(1),
                    "lengths must lie in [1, T=", words.size(1), "]");
  problem.view = {scalar_type(words),
                  problem.words.data_ptr(),
                  problem.words.stride(0),
                  problem.words.stride(1),
                  problem.lengths.data_ptr<int64_t>(),
                  problem.regions.data_ptr(),
                  problem.regions.stride(0),
                  problem.regions.stride(1),
                  words.size(0),
                  regions.size(0),
                  words.size(1),
                  regions.size(1),
                  words.size(2),
                  static_cast<float>(gamma1),
                  static_cast<float>(gamma2),
                  word_softmax};
  return problem;
}

void check_launch(cudaError_t error, const kernels::WordRegionProblem& problem, bool backward) {
  TORCH_CHECK(error != cudaErrorInvalidConfiguration,
              "word-region CUDA kernel needs ", kernels::word_region_shared_memory_bytes(problem, backward),
              " bytes of shared memory per block for T=", problem.num_words, ", R=", problem.num_regions,
              ", D=", problem.dim, ", more than this GPU allows: use backend='auto' or 'triton'");
  TORCH_CHECK(error == cudaSuccess, "word-region CUDA kernel failed to launch: ", cudaGetErrorString(error));
}

// The forward and backward launch a block per caption and group of images (the attention, one per caption).
void check_images(const at::Tensor& regions) {
  TORCH_CHECK_VALUE(regions.size(0) <= kernels::kMaxImages, "regions must have at most ", kernels::kMaxImages,
                    " images (M) for backend 'cuda' (65535 groups of 4, CUDA's grid limit), got M=", regions.size(0),
                    ": split the images over several calls or use backend='triton'");
}

at::Tensor scores_cuda(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions,
                       double gamma1, double gamma2, bool word_softmax) {
  check_devices(words, lengths, regions);
  const c10::cuda::CUDAGuard guard(words.device());
  const Problem problem = make_problem(words, lengths, regions, gamma1, gamma2, word_softmax);
  check_images(regions);
  at::Tensor scores = at::empty({words.size(0), regions.size(0)}, words.options().dtype(at::kFloat));
  check_launch(kernels::word_region_scores_forward(problem.view, scores.data_ptr<float>(), scores.stride(0),
                                                   c10::cuda::getCurrentCUDAStream()),
               problem.view, false);
  return scores;
}

std::tuple<at::Tensor, at::Tensor> scores_backward_cuda(const at::Tensor& grad_scores, const at::Tensor& words,
                                                        const at::Tensor& lengths, const at::Tensor& regions,
                                                        double gamma1, double gamma2, bool word_softmax) {
  check_devices(words, lengths, regions);
  TORCH_CHECK_VALUE(grad_scores.device() == words.device(),
                    "grad_scores must be a CUDA tensor on the device of words (", words.device(), "), got one on ",
                    grad_scores.device());
  const c10::cuda::CUDAGuard guard(words.device());
  const Problem problem = make_problem(words, lengths, regions, gamma1, gamma2, word_softmax);
  check_images(regions);
  TORCH_CHECK_VALUE(grad_scores.sizes() == at::IntArrayRef({words.size(0), regions.size(0)}),
                    "grad_scores must have shape (N, M) = (", words.size(0), ", ", regions.size(0), ")");
  TORCH_CHECK_TYPE(at::isFloatingType(grad_scores.scalar_type()), "grad_scores must be floating point, got ",
                   grad_scores.scalar_type());
  const at::Tensor grad = grad_scores.to(at::kFloat).contiguous();
  at::Tensor grad_words = at::zeros(problem.words.sizes(), words.options().dtype(at::kFloat));
  at::Tensor grad_regions = at::zeros(problem.regions.sizes(), regions.options().dtype(at::kFloat));
  check_launch(kernels::word_region_scores_backward(problem.view, grad.data_ptr<float>(), grad.stride(0),
                                                    grad_words.data_ptr<float>(), grad_regions.data_ptr<float>(),
                                                    c10::cuda::getCurrentCUDAStream()),
               problem.view, true);
  return {grad_words.to(words.scalar_type()), grad_regions.to(regions.scalar_type())};
}

at::Tensor attention_cuda(const at::Tensor& words, const at::Tensor& lengths, const at::Tensor& regions,
                          double gamma1, bool word_softmax) {
  check_devices(words, lengths, regions);
  const c10::cuda::CUDAGuard guard(words.device());
  TORCH_CHECK_VALUE(regions.size(0) == words.size(0),
                    "word_region_attention pairs caption i with image i: regions must have N=", words.size(0),
                    " images, got ", regions.size(0));
  const Problem problem = make_problem(words, lengths, regions, gamma1, 1.0, word_softmax);
  at::Tensor alpha = at::empty({words.size(0), words.size(1), regions.size(1)}, words.options().dtype(at::kFloat));
  check_launch(kernels::word_region_attention(problem.view, alpha.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()),
               problem.view, false);
  return alpha;
}

}  // namespace

TORCH_LIBRARY_IMPL(tgfr, CUDA, m) {
  m.impl("word_region_scores", &scores_cuda);
  m.impl("word_region_scores_backward", &scores_backward_cuda);
  m.impl("word_region_attention", &attention_cuda);
}
