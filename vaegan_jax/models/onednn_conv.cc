// oneDNN's 2-D convolutions as XLA FFI handlers, for conv_impl='onednn'.
//
// Built on first use by vaegan_jax/models/conv_onednn.py (which see) against
// the pip-installed oneDNN 3.x (onednn-devel-cpu-gomp) and jax.ffi's headers.
// float32 only; activations NHWC, weights HWIO, as conv_cpu lays them out:
//
//   VaeganOnednnConvFwd         x (N, H, W, C), w (KH, KW, C, O) -> y (N, OH, OW, O)
//   VaeganOnednnConvBwdData     dy (N, OH, OW, O), w (KH, KW, C, O) -> dx (N, H, W, C)
//   VaeganOnednnConvBwdWeights  x (N, H, W, C), dy (N, OH, OW, O) -> dw (KH, KW, C, O)
//
// with window strides (sh, sw) and zero padding (pt, pb, pl, pr) >= 0:
// y[n, i, j, o] = sum x[n, sh * i - pt + a, sw * j - pl + b, c] w[a, b, c, o].
// Activations stay NHWC in the primitives; the weights' layout is left to
// oneDNN ("any") and reordered from / to HWIO at every call (forcing HWIO
// sends the backward primitives to a slow reference GEMM). Primitives are
// built once per (kind, shapes, strides, padding) and cached.
//
// XLA calls a handler from whichever of its threads runs the step, several at
// once. oneDNN's default (library-managed, shared) scratchpad allows a
// primitive to run only on the thread that created it, so every primitive
// here is built with a user-managed scratchpad, and each call passes a buffer
// of its own thread: then any thread may run any cached primitive, also
// concurrently with others.

#include <oneapi/dnnl/dnnl.hpp>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <unordered_map>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

enum class Kind { kFwd, kBwdData, kBwdWeights };

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

dnnl::stream& Stream() {
  thread_local dnnl::stream stream(Engine());
  return stream;
}

// Logical (oneDNN) dims of one convolution.
struct Geometry {
  memory::dims src, wei, dst, strides, pad_l, pad_r;

  std::string Key(Kind kind) const {
    std::ostringstream out;
    out << static_cast<int>(kind);
    for (const auto* v : {&src, &wei, &dst, &strides, &pad_l, &pad_r})
      for (auto d : *v) out << ',' << d;
    return out.str();
  }
};

// The primitive and the reorders between the user layouts and its own, each
// with the scratchpad it needs (user-managed, see above).
struct Entry {
  dnnl::primitive prim;
  memory::desc src_user, wei_user, dst_user;  // NHWC, HWIO, NHWC
  memory::desc src, wei, dst;                 // what the primitive takes
  dnnl::primitive reorder_src, reorder_wei, reorder_dst;
  bool has_reorder_src = false, has_reorder_wei = false,
       has_reorder_dst = false;
  memory::desc scratch_prim, scratch_src, scratch_wei, scratch_dst;
  size_t scratch_bytes = 0;  // The largest of them.
};

std::mutex cache_mutex;
std::unordered_map<std::string, std::shared_ptr<const Entry>> cache;

dnnl::primitive_attr UserScratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::primitive Reorder(const memory::desc& from, const memory::desc& to,
                        memory::desc* scratch) {
  auto pd = dnnl::reorder::primitive_desc(Engine(), from, Engine(), to,
                                          UserScratchpad());
  *scratch = pd.scratchpad_desc();
  return dnnl::reorder(pd);
}

// This thread's scratchpad, 64-byte aligned, grown to `bytes` when needed.
void* ThreadScratch(size_t bytes) {
  struct Buffer {
    void* ptr = nullptr;
    size_t size = 0;
    ~Buffer() { std::free(ptr); }
  };
  thread_local Buffer buffer;
  if (bytes > buffer.size) {
    size_t size = (std::max<size_t>(bytes, 64) + 63) / 64 * 64;
    void* ptr = std::aligned_alloc(64, size);
    if (ptr == nullptr) throw std::bad_alloc();
    std::free(buffer.ptr);
    buffer.ptr = ptr;
    buffer.size = size;
  }
  return buffer.ptr;
}

std::shared_ptr<const Entry> Build(Kind kind, const Geometry& g) {
  using dt = memory::data_type;
  auto e = std::make_shared<Entry>();
  const auto attr = UserScratchpad();
  e->src_user = memory::desc(g.src, dt::f32, tag::nhwc);
  e->wei_user = memory::desc(g.wei, dt::f32, tag::hwio);
  e->dst_user = memory::desc(g.dst, dt::f32, tag::nhwc);
  auto wei_any = memory::desc(g.wei, dt::f32, tag::any);
  auto fwd = dnnl::convolution_forward::primitive_desc(
      Engine(), dnnl::prop_kind::forward_training,
      dnnl::algorithm::convolution_direct, e->src_user, wei_any, e->dst_user,
      g.strides, g.pad_l, g.pad_r, attr);
  if (kind == Kind::kFwd) {
    e->prim = dnnl::convolution_forward(fwd);
    e->src = fwd.src_desc();
    e->wei = fwd.weights_desc();
    e->dst = fwd.dst_desc();
    e->scratch_prim = fwd.scratchpad_desc();
  } else if (kind == Kind::kBwdData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, e->src_user, wei_any,
        e->dst_user, g.strides, g.pad_l, g.pad_r, fwd, attr);
    e->prim = dnnl::convolution_backward_data(pd);
    e->src = pd.diff_src_desc();
    e->wei = pd.weights_desc();
    e->dst = pd.diff_dst_desc();
    e->scratch_prim = pd.scratchpad_desc();
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, e->src_user, wei_any,
        e->dst_user, g.strides, g.pad_l, g.pad_r, fwd, attr);
    e->prim = dnnl::convolution_backward_weights(pd);
    e->src = pd.src_desc();
    e->wei = pd.diff_weights_desc();
    e->dst = pd.diff_dst_desc();
    e->scratch_prim = pd.scratchpad_desc();
  }
  // The output of each kind is reordered primitive -> user, inputs the
  // other way.
  e->has_reorder_src = e->src != e->src_user;
  e->has_reorder_wei = e->wei != e->wei_user;
  e->has_reorder_dst = e->dst != e->dst_user;
  if (e->has_reorder_src)
    e->reorder_src =
        kind == Kind::kBwdData ? Reorder(e->src, e->src_user, &e->scratch_src)
                               : Reorder(e->src_user, e->src, &e->scratch_src);
  if (e->has_reorder_wei)
    e->reorder_wei =
        kind == Kind::kBwdWeights ? Reorder(e->wei, e->wei_user, &e->scratch_wei)
                                  : Reorder(e->wei_user, e->wei, &e->scratch_wei);
  if (e->has_reorder_dst)
    e->reorder_dst =
        kind == Kind::kFwd ? Reorder(e->dst, e->dst_user, &e->scratch_dst)
                           : Reorder(e->dst_user, e->dst, &e->scratch_dst);
  for (const auto* d : {&e->scratch_prim, &e->scratch_src, &e->scratch_wei,
                        &e->scratch_dst})
    e->scratch_bytes = std::max(e->scratch_bytes, d->get_size());
  return e;
}

std::shared_ptr<const Entry> Get(Kind kind, const Geometry& g) {
  std::string key = g.Key(kind);
  {
    std::lock_guard<std::mutex> lock(cache_mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return it->second;
  }
  auto entry = Build(kind, g);  // Outside the lock: building takes a while.
  std::lock_guard<std::mutex> lock(cache_mutex);
  return cache.emplace(key, entry).first->second;
}

// src = x (or dx), wei = w (or dw), dst = y (or dy): the user's buffers.
ffi::Error Run(Kind kind, const Geometry& g, void* src, void* wei, void* dst) {
  try {
    auto e = Get(kind, g);
    auto& engine = Engine();
    auto& stream = Stream();
    memory src_user(e->src_user, engine, src), wei_user(e->wei_user, engine, wei),
        dst_user(e->dst_user, engine, dst);
    memory src_mem = e->has_reorder_src ? memory(e->src, engine) : src_user;
    memory wei_mem = e->has_reorder_wei ? memory(e->wei, engine) : wei_user;
    memory dst_mem = e->has_reorder_dst ? memory(e->dst, engine) : dst_user;
    // One buffer serves every primitive of this call: they run one after
    // the other on this thread.
    void* scratch_ptr = ThreadScratch(e->scratch_bytes);
    auto scratch = [&](const memory::desc& d) {
      return memory(d, engine, scratch_ptr);
    };
    auto copy = [&](bool needed, const dnnl::primitive& reorder,
                    const memory::desc& scratch_desc, memory& from, memory& to) {
      if (needed)
        reorder.execute(stream, {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to},
                                 {DNNL_ARG_SCRATCHPAD, scratch(scratch_desc)}});
    };
    if (kind == Kind::kFwd) {
      copy(e->has_reorder_src, e->reorder_src, e->scratch_src, src_user, src_mem);
      copy(e->has_reorder_wei, e->reorder_wei, e->scratch_wei, wei_user, wei_mem);
      e->prim.execute(stream, {{DNNL_ARG_SRC, src_mem},
                               {DNNL_ARG_WEIGHTS, wei_mem},
                               {DNNL_ARG_DST, dst_mem},
                               {DNNL_ARG_SCRATCHPAD, scratch(e->scratch_prim)}});
      copy(e->has_reorder_dst, e->reorder_dst, e->scratch_dst, dst_mem, dst_user);
    } else if (kind == Kind::kBwdData) {
      copy(e->has_reorder_dst, e->reorder_dst, e->scratch_dst, dst_user, dst_mem);
      copy(e->has_reorder_wei, e->reorder_wei, e->scratch_wei, wei_user, wei_mem);
      e->prim.execute(stream, {{DNNL_ARG_DIFF_SRC, src_mem},
                               {DNNL_ARG_WEIGHTS, wei_mem},
                               {DNNL_ARG_DIFF_DST, dst_mem},
                               {DNNL_ARG_SCRATCHPAD, scratch(e->scratch_prim)}});
      copy(e->has_reorder_src, e->reorder_src, e->scratch_src, src_mem, src_user);
    } else {
      copy(e->has_reorder_src, e->reorder_src, e->scratch_src, src_user, src_mem);
      copy(e->has_reorder_dst, e->reorder_dst, e->scratch_dst, dst_user, dst_mem);
      e->prim.execute(stream, {{DNNL_ARG_SRC, src_mem},
                               {DNNL_ARG_DIFF_WEIGHTS, wei_mem},
                               {DNNL_ARG_DIFF_DST, dst_mem},
                               {DNNL_ARG_SCRATCHPAD, scratch(e->scratch_prim)}});
      copy(e->has_reorder_wei, e->reorder_wei, e->scratch_wei, wei_mem, wei_user);
    }
    stream.wait();
  } catch (const dnnl::error& err) {
    return ffi::Error(ffi::ErrorCode::kInternal,
                      std::string("oneDNN convolution: ") + err.what());
  } catch (const std::exception& err) {
    return ffi::Error(ffi::ErrorCode::kInternal, err.what());
  }
  return ffi::Error::Success();
}

using Array = ffi::BufferR4<ffi::F32>;
using Result = ffi::Result<ffi::BufferR4<ffi::F32>>;

// x, w, y as NHWC / HWIO / NHWC buffers -> oneDNN's logical NCHW / OIHW;
// false if they are inconsistent.
bool MakeGeometry(const Array::Dimensions& x, const Array::Dimensions& w,
                  const Array::Dimensions& y, int64_t sh, int64_t sw,
                  int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                  Geometry* g) {
  bool ok = sh > 0 && sw > 0 && pt >= 0 && pb >= 0 && pl >= 0 && pr >= 0 &&
            x[0] == y[0] && x[3] == w[2] && y[3] == w[3] &&
            (x[1] + pt + pb - w[0]) / sh + 1 == y[1] &&
            (x[2] + pl + pr - w[1]) / sw + 1 == y[2];
  g->src = {x[0], x[3], x[1], x[2]};
  g->wei = {w[3], w[2], w[0], w[1]};
  g->dst = {y[0], y[3], y[1], y[2]};
  g->strides = {sh, sw};
  g->pad_l = {pt, pl};
  g->pad_r = {pb, pr};
  return ok;
}

ffi::Error BadShapes() {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                    "oneDNN convolution: inconsistent shapes, strides or "
                    "padding");
}

ffi::Error Fwd(Array x, Array w, Result y, int64_t sh, int64_t sw, int64_t pt,
               int64_t pb, int64_t pl, int64_t pr) {
  Geometry g;
  if (!MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw,
                    pt, pb, pl, pr, &g))
    return BadShapes();
  return Run(Kind::kFwd, g, x.untyped_data(), w.untyped_data(),
             y->untyped_data());
}

ffi::Error BwdData(Array dy, Array w, Result dx, int64_t sh, int64_t sw,
                   int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geometry g;
  if (!MakeGeometry(dx->dimensions(), w.dimensions(), dy.dimensions(), sh, sw,
                    pt, pb, pl, pr, &g))
    return BadShapes();
  return Run(Kind::kBwdData, g, dx->untyped_data(), w.untyped_data(),
             dy.untyped_data());
}

ffi::Error BwdWeights(Array x, Array dy, Result dw, int64_t sh, int64_t sw,
                      int64_t pt, int64_t pb, int64_t pl, int64_t pr) {
  Geometry g;
  if (!MakeGeometry(x.dimensions(), dw->dimensions(), dy.dimensions(), sh, sw,
                    pt, pb, pl, pr, &g))
    return BadShapes();
  return Run(Kind::kBwdWeights, g, x.untyped_data(), dw->untyped_data(),
             dy.untyped_data());
}

}  // namespace

#define VAEGAN_ONEDNN_BINDING             \
  ffi::Ffi::Bind()                        \
      .Arg<Array>()                       \
      .Arg<Array>()                       \
      .Ret<ffi::BufferR4<ffi::F32>>()     \
      .Attr<int64_t>("sh")                \
      .Attr<int64_t>("sw")                \
      .Attr<int64_t>("pt")                \
      .Attr<int64_t>("pb")                \
      .Attr<int64_t>("pl")                \
      .Attr<int64_t>("pr")

XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeganOnednnConvFwd, Fwd, VAEGAN_ONEDNN_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeganOnednnConvBwdData, BwdData,
                              VAEGAN_ONEDNN_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeganOnednnConvBwdWeights, BwdWeights,
                              VAEGAN_ONEDNN_BINDING);
