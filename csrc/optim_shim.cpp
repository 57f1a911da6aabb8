// libtorch's fused Adam (`at::_fused_adam_` / `at::_fused_adamw_`) for Rust: tch 0.24 does not
// bind the `_fused_*` ops. One call updates every parameter, its two moments and (Adam's L2 or
// AdamW's decoupled) weight decay in a single pass over each tensor (CPU: vectorised and
// parallel; CUDA: multi-tensor kernels), instead of the ~7 passes of separate ops.
//
// Tensors arrive as tch's `C_tensor*`, i.e. `at::Tensor*` (libtch's torch_api.h). Errors as in
// every shim (shim.h).
#include "shim.h"

#include <ATen/ATen.h>

#include <optional>
#include <vector>

namespace {

std::vector<at::Tensor> list(void* const* ts, int n) {
  std::vector<at::Tensor> v;
  v.reserve(n);
  for (int i = 0; i < n; ++i) v.push_back(*static_cast<at::Tensor*>(ts[i]));
  return v;
}

}  // namespace

extern "C" {

// One Adam step over n parameters. `steps[i]` is a 0-d float tensor holding parameter i's step
// count after this step (the kernel reads it for the bias corrections; it does not advance it).
// `grad_scale` (nullable) is a 0-d float tensor by which every gradient is divided (the caller's
// gradient clipping). `adamw` != 0 selects decoupled weight decay.
int msd_fused_adam(void* const* params, void* const* grads, void* const* exp_avgs, void* const* exp_avg_sqs,
                   void* const* steps, int n, double lr, double beta1, double beta2, double weight_decay,
                   double eps, int adamw, void* grad_scale, char** err) {
  return msd::guard(err, [&] {
    auto p = list(params, n), g = list(grads, n), m = list(exp_avgs, n), v = list(exp_avg_sqs, n),
         s = list(steps, n);
    // The CPU kernel walks raw memory: gradients must be dense (autograd's nearly always are).
    for (auto& t : g) t = t.contiguous();
    std::optional<at::Tensor> scale;
    if (grad_scale != nullptr) scale = *static_cast<at::Tensor*>(grad_scale);
    if (adamw != 0) {
      at::_fused_adamw_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, false, false, scale, std::nullopt);
    } else {
      at::_fused_adam_(p, g, m, v, {}, s, lr, beta1, beta2, weight_decay, eps, false, false, scale, std::nullopt);
    }
  });
}

}  // extern "C"
