// Tensor operations ftexp needs that tch 0.24 does not wrap: libtorch's fused AdamW (one pass over each
// tensor, vectorised and multi-threaded, instead of a dozen full-size temporaries), and setting a
// tensor's `.grad` to a given tensor (a view into a flat buffer that c10d adds up in place). Errors come
// back as strings, never as exceptions across the FFI.
#include <ATen/ATen.h>

#include <cstdio>
#include <exception>
#include <string>
#include <vector>

namespace {

int fail(char* err, size_t len, const char* what) {
  if (err != nullptr && len > 0) {
    std::string s(what);
    std::snprintf(err, len, "%s", s.substr(0, s.find('\n')).c_str());
  }
  return -1;
}

std::vector<at::Tensor> list(at::Tensor** tensors, size_t n) {
  std::vector<at::Tensor> out;
  out.reserve(n);
  for (size_t i = 0; i < n; i++) out.push_back(*tensors[i]);
  return out;
}

}  // namespace

extern "C" {

// One AdamW update of `n` tensors in place (decoupled weight decay), at optimizer step `step` (1 for the
// first update), which sets the bias corrections.
int ftexp_fused_adamw(at::Tensor** params, at::Tensor** grads, at::Tensor** exp_avgs, at::Tensor** exp_avg_sqs,
                      size_t n, double step, double lr, double beta1, double beta2, double weight_decay,
                      double eps, char* err, size_t err_len) {
  if (n == 0) return 0;
  try {
    auto p = list(params, n);
    auto steps = std::vector<at::Tensor>(
        n, at::full({}, step, at::TensorOptions().dtype(at::kFloat).device(p[0].device())));
    at::_fused_adamw_(p, list(grads, n), list(exp_avgs, n), list(exp_avg_sqs, n), {}, steps, lr, beta1, beta2,
                      weight_decay, eps, /*amsgrad=*/false, /*maximize=*/false);
    return 0;
  } catch (const std::exception& e) {
    return fail(err, err_len, e.what());
  } catch (...) {
    return fail(err, err_len, "unknown C++ exception");
  }
}

// Makes `grad` the `.grad` of `tensor`: backward passes then add into it in place.
int ftexp_set_grad(at::Tensor* tensor, at::Tensor* grad, char* err, size_t err_len) {
  try {
    tensor->mutable_grad() = *grad;
    return 0;
  } catch (const std::exception& e) {
    return fail(err, err_len, e.what());
  }
}

}  // extern "C"
