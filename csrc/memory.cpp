// A counting CPU allocator for ftexp: libtorch's own CPU allocation (c10::alloc_cpu) with the bytes in
// use and their peak counted, and an optional limit past which an allocation fails with libtorch's
// out-of-memory error — `model.device_memory` enforced on the CPU, and the exact tensor memory that
// `ftexp bench` compares with the memory plan.
#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/util/Exception.h>

#include <atomic>
#include <cstdint>

// libc10 exports these (what its default CPU allocator uses) but the wheel ships no header for them.
namespace c10 {
C10_API void* alloc_cpu(size_t nbytes);
C10_API void free_cpu(void* data);
}  // namespace c10

namespace {

// Each block starts with its size; 64 bytes keep the data as aligned as alloc_cpu's.
constexpr size_t kHeader = 64;
std::atomic<int64_t> g_current{0};
std::atomic<int64_t> g_peak{0};
std::atomic<int64_t> g_limit{0};

double mib(int64_t bytes) { return static_cast<double>(bytes) / 1048576.0; }

void release(void* data) {
  if (data == nullptr) return;
  char* base = static_cast<char*>(data) - kHeader;
  g_current.fetch_sub(*reinterpret_cast<int64_t*>(base));
  c10::free_cpu(base);
}

void nothing(void*) {}

struct CountingAllocator final : c10::Allocator {
  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    if (n == 0) return {nullptr, nullptr, &nothing, cpu};
    const int64_t size = static_cast<int64_t>(n);
    const int64_t now = g_current.fetch_add(size) + size;
    const int64_t limit = g_limit.load();
    if (limit > 0 && now > limit) {
      g_current.fetch_sub(size);
      TORCH_CHECK_WITH(OutOfMemoryError, false, "CPU out of memory: tried to allocate ", mib(size), " MiB with ",
                       mib(now - size), " MiB of the ", mib(limit), " MiB allowed (model.device_memory) in use");
    }
    int64_t peak = g_peak.load();
    while (now > peak && !g_peak.compare_exchange_weak(peak, now)) {
    }
    void* base;
    try {
      base = c10::alloc_cpu(n + kHeader);
    } catch (...) {
      g_current.fetch_sub(size);
      throw;
    }
    *static_cast<int64_t*>(base) = size;
    void* data = static_cast<char*>(base) + kHeader;
    return {data, data, &release, cpu};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &release; }

  void copy_data(void* dest, const void* src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }
};

CountingAllocator g_allocator;

}  // namespace

// Counts CPU tensor memory from now on, failing allocations past `limit` bytes (0: no limit).
extern "C" void ftexp_cpu_memory_count(int64_t limit) {
  static const bool installed = (c10::SetCPUAllocator(&g_allocator, /*priority=*/100), true);
  (void)installed;
  g_limit.store(limit);
}

// Bytes of CPU tensors allocated since counting began that are still in use, and their peak.
extern "C" void ftexp_cpu_memory(int64_t* current, int64_t* peak) {
  *current = g_current.load();
  *peak = g_peak.load();
}

extern "C" void ftexp_cpu_memory_reset_peak() { g_peak.store(g_current.load()); }
