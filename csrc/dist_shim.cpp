// msdiff's bridge to libtorch's distributed engine (c10d): TCPStore, ProcessGroupGloo and,
// when compiled with MSDIFF_NCCL, ProcessGroupNCCL. Plain C functions for Rust's FFI.
//
// Every function catches C++ exceptions and returns them as an error string (malloc'ed; freed
// with msd_free_str): no exception crosses into Rust. Tensors arrive as tch's `C_tensor*`,
// which is an `at::Tensor*` (libtch's torch_api.h: `typedef torch::Tensor *tensor`); the
// collectives run in place on a copy of the handle, which shares the storage.
#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef MSDIFF_NCCL
#include <c10/cuda/CUDAFunctions.h>
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include "shim.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

namespace {

using msd::dup;
using msd::guard;

struct Store {
  c10::intrusive_ptr<c10d::Store> store;
};

struct Group {
  c10::intrusive_ptr<c10d::Backend> backend;
  std::chrono::milliseconds timeout;
};

std::vector<std::string> split_commas(const char* s) {
  std::vector<std::string> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

void run(Group* g, c10::intrusive_ptr<c10d::Work> work) {
  if (!work->wait(g->timeout)) {
    TORCH_CHECK(false, "collective timed out after ", g->timeout.count(), " ms");
  }
}

}  // namespace

extern "C" {

void msd_free_str(char* s) { std::free(s); }

int msd_has_nccl() {
#ifdef MSDIFF_NCCL
  return 1;
#else
  return 0;
#endif
}

// Connect to (or, with is_server, host) the TCPStore at host:port for `world` processes.
int msd_store_new(const char* host, int port, int world, int is_server, long long timeout_ms, void** out,
                  char** err) {
  return guard(err, [&] {
    c10d::TCPStoreOptions opts;
    opts.port = static_cast<std::uint16_t>(port);
    opts.isServer = is_server != 0;
    opts.numWorkers = static_cast<std::size_t>(world);
    opts.waitWorkers = false;
    opts.timeout = std::chrono::milliseconds(timeout_ms);
    auto tcp = c10::make_intrusive<c10d::TCPStore>(std::string(host), opts);
    *out = new Store{tcp};
  });
}

void msd_store_free(void* s) { delete static_cast<Store*>(s); }

// Create the Gloo process group on `store` (under the key prefix `prefix`). `ifnames`: a
// comma-separated list of network interfaces (GLOO_SOCKET_IFNAME), or empty for the default.
int msd_gloo_new(void* store, const char* prefix, int rank, int world, long long timeout_ms, const char* ifnames,
                 void** out, char** err) {
  return guard(err, [&] {
    auto* s = static_cast<Store*>(store);
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
    auto names = split_commas(ifnames);
    if (names.empty()) {
      opts->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    } else {
      for (const auto& n : names) opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(n));
    }
    auto ps = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), s->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupGloo>(ps, rank, world, opts);
    *out = new Group{pg, timeout};
  });
}

// Create the NCCL process group (one GPU per process: the current device is set to `device`).
int msd_nccl_new(void* store, const char* prefix, int rank, int world, long long timeout_ms, int device, void** out,
                 char** err) {
#ifdef MSDIFF_NCCL
  return guard(err, [&] {
    auto* s = static_cast<Store*>(store);
    c10::cuda::set_device(static_cast<c10::DeviceIndex>(device));
    auto timeout = std::chrono::milliseconds(timeout_ms);
    auto opts = c10d::ProcessGroupNCCL::Options::create();
    opts->timeout = timeout;
    auto ps = c10::make_intrusive<c10d::PrefixStore>(std::string(prefix), s->store);
    auto pg = c10::make_intrusive<c10d::ProcessGroupNCCL>(ps, rank, world, opts);
    *out = new Group{pg, timeout};
  });
#else
  (void)store; (void)prefix; (void)rank; (void)world; (void)timeout_ms; (void)device; (void)out;
  *err = dup("this msdiff was built without NCCL (its libtorch has no CUDA, or the CUDA/NCCL headers were missing); use --dist-backend gloo");
  return 1;
#endif
}

// Shut the process group down (NCCL: destroys its communicators; PyTorch asks for it before exit),
// or, with abort set (after a failure), abort it without waiting for other ranks.
int msd_group_shutdown(void* g, int abort, char** err) {
  return guard(err, [&] {
    auto* group = static_cast<Group*>(g);
    if (abort != 0) {
      group->backend->abort();
    } else {
      group->backend->shutdown();
    }
  });
}

void msd_group_free(void* g) {
  delete static_cast<Group*>(g);
}

// In-place all-reduce of one tensor; op 0 = sum, 1 = average.
int msd_allreduce(void* g, void* tensor, int op, char** err) {
  return guard(err, [&] {
    auto* group = static_cast<Group*>(g);
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    c10d::AllreduceOptions opts;
    opts.reduceOp = op == 1 ? c10d::ReduceOp(c10d::ReduceOp::AVG) : c10d::ReduceOp(c10d::ReduceOp::SUM);
    opts.timeout = group->timeout;
    run(group, group->backend->allreduce(ts, opts));
  });
}

// In-place broadcast of one tensor from `root`.
int msd_broadcast(void* g, void* tensor, int root, char** err) {
  return guard(err, [&] {
    auto* group = static_cast<Group*>(g);
    std::vector<at::Tensor> ts{*static_cast<at::Tensor*>(tensor)};
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = group->timeout;
    run(group, group->backend->broadcast(ts, opts));
  });
}

int msd_barrier(void* g, char** err) {
  return guard(err, [&] {
    auto* group = static_cast<Group*>(g);
    c10d::BarrierOptions opts;
    opts.timeout = group->timeout;
    run(group, group->backend->barrier(opts));
  });
}

}  // extern "C"
