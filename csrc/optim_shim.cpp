// libtorch's fused Adam (`at::_fused_adam_` / `at::_fused_adamw_`) for Rust: tch 0.24 does not
// bind the `_fused_*` ops. One call updates every parameter, its two moments and (Adam's L2 or
// AdamW's decoupled) weight decay in a single pass over each tensor (CPU: vectorised and
// parallel; CUDA: multi-tensor kernels), instead of the ~7 passes of separate ops.
//
// Tensors arrive as tch's `C_tensor*`, i.e. `at::Tensor*` (libtch's torch_api.h). Errors come
// back as a malloc'ed string (freed with msd_free_str, defined in dist_shim.cpp); no C++ exception
// crosses into Rust.
#include <ATen/ATen.h>

#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace {

char* dup_str(const std::string& s) {
  char* p = static_cast<char*>(std::malloc(s.size() + 1));
  if (p != nullptr) std::memcpy(p, s.c_str(), s.size() + 1);
  return p;
}

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
  try {
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
    return 0;
  } catch (const c10::Error& e) {
    *err = dup_str(e.what_without_backtrace());
  } catch (const std::exception& e) {
    *err = dup_str(e.what());
  } catch (...) {
    *err = dup_str("unknown C++ exception");
  }
  return 1;
}

}  // extern "C"
