// ftexp's bridge to PyTorch's own distributed engine (c10d), compiled by build.rs against the torch
// wheel's headers. A process group over a TCPStore with the Gloo backend (CPU, when built with
// FTEXP_GLOO) or NCCL (CUDA, when built with FTEXP_NCCL), allreduce (sum), broadcast and barrier on
// tch tensors, and the CUDA caching allocator's byte counts. No exception crosses into Rust: each call
// returns 0 or writes its message into `err` and returns -1 (or a null group).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include <ATen/ATen.h>
#include <torch/csrc/distributed/c10d/Backend.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#ifdef FTEXP_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef FTEXP_NCCL
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

namespace {

struct Group {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

void set_error(char* err, size_t len, const std::string& message) {
  if (err == nullptr || len == 0) return;
  std::snprintf(err, len, "%s", message.c_str());
}

// The first line of a c10d message: the rest is a C++ backtrace.
std::string first_line(const char* what) {
  std::string s(what);
  auto end = s.find('\n');
  return end == std::string::npos ? s : s.substr(0, end);
}

template <typename F>
int guarded(char* err, size_t len, F&& body) {
  try {
    body();
    return 0;
  } catch (const std::exception& e) {
    set_error(err, len, first_line(e.what()));
  } catch (...) {
    set_error(err, len, "unknown C++ exception");
  }
  return -1;
}

bool is_loopback(const std::string& addr) {
  return addr == "localhost" || addr.rfind("127.", 0) == 0 || addr == "::1";
}

}  // namespace

extern "C" {

// Which backends this build has: "gloo", "nccl".
int ftexp_dist_has(const char* backend) {
  std::string b(backend);
#ifdef FTEXP_GLOO
  if (b == "gloo") return 1;
#endif
#ifdef FTEXP_NCCL
  if (b == "nccl") return 1;
#endif
  return 0;
}

// A process group of `world` processes joined through the TCPStore that rank 0 serves at
// `addr:port`. `iface`, when not empty, is the network interface Gloo binds to; `gpu` is this
// process's CUDA device for NCCL (one GPU per process).
void* ftexp_dist_new(const char* backend, const char* addr, int port, int rank, int world,
                     int64_t timeout_ms, const char* iface, int gpu, char* err, size_t err_len) {
  Group* out = nullptr;
  guarded(err, err_len, [&] {
    std::string b(backend), host(addr), interface(iface);
    auto timeout = std::chrono::milliseconds(timeout_ms);
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = rank == 0;
    opts.numWorkers = world;
    opts.waitWorkers = true;
    opts.timeout = timeout;
    auto store = c10::make_intrusive<c10d::TCPStore>(host, opts);
    c10::intrusive_ptr<c10d::Backend> pg;
    if (b == "gloo") {
#ifdef FTEXP_GLOO
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      if (!interface.empty()) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
      } else if (is_loopback(host)) {
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      pg = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
#else
      throw std::runtime_error("this ftexp was built without Gloo (the libgloo-dev headers were missing)");
#endif
    } else if (b == "nccl") {
#ifdef FTEXP_NCCL
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(gpu));
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(store, rank, world, options);
#else
      (void)gpu;
      throw std::runtime_error("this ftexp was built without NCCL (its headers were missing at build time)");
#endif
    } else {
      throw std::runtime_error("unknown backend " + b);
    }
    out = new Group{store, pg, timeout};
  });
  return out;
}

void ftexp_dist_free(void* group) { delete static_cast<Group*>(group); }

int ftexp_dist_allreduce_sum(void* group, at::Tensor* tensor, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::AllreduceOptions opts;
    opts.reduceOp = c10d::ReduceOp::SUM;
    g->backend->allreduce(tensors, opts)->wait(g->timeout);
  });
}

int ftexp_dist_broadcast(void* group, at::Tensor* tensor, int root, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<Group*>(group);
    std::vector<at::Tensor> tensors{*tensor};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    g->backend->broadcast(tensors, opts)->wait(g->timeout);
  });
}

int ftexp_dist_barrier(void* group, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
    auto g = static_cast<Group*>(group);
    g->backend->barrier(c10d::BarrierOptions())->wait(g->timeout);
  });
}

// Bytes the CUDA caching allocator has allocated on `device` now and at its peak.
int ftexp_cuda_memory(int device, int64_t* current, int64_t* peak, char* err, size_t err_len) {
  return guarded(err, err_len, [&] {
#ifdef FTEXP_NCCL
    auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(static_cast<c10::DeviceIndex>(device));
    auto all = static_cast<size_t>(c10::CachingAllocator::StatType::AGGREGATE);
    *current = stats.allocated_bytes[all].current;
    *peak = stats.allocated_bytes[all].peak;
#else
    (void)device;
    (void)current;
    (void)peak;
    throw std::runtime_error("this ftexp was built without the CUDA headers");
#endif
  });
}

}  // extern "C"
