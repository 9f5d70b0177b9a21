// oneDNN's 2-D convolutions as XLA FFI handlers, for conv_impl='onednn'.
//
// Built on first use by vaegan_jax/kernels/conv_onednn.py (which see) against
// the pip-installed oneDNN 3.x (onednn-devel-cpu-gomp) and jax.ffi's headers.
// float32 only; activations NHWC, weights HWIO, as conv_cpu lays them out:
//
//   VaeganOnednnConvFwd         x (N, H, W, C), w (KH, KW, C, O) -> y (N, OH, OW, O)
//   VaeganOnednnConvBwdData     dy (N, OH, OW, O), w (KH, KW, C, O) -> dx (N, H, W, C)
//   VaeganOnednnConvBwdWeights  x (N, H, W, C), dy (N, OH, OW, O) -> dw (KH, KW, C, O)
//
// and two fused forward passes of a layer, act(conv + bias) with
// act(v) = v > 0 ? v : slope * v (ReLU: slope 0; leaky ReLU), the bias and
// activation applied by oneDNN as each output block is written:
//
//   VaeganOnednnConvFwdBiasAct      x (N, H, W, C), w, b (O,) -> y (N, OH, OW, O)
//   VaeganOnednnDeconvFwdBiasAct    dy (N, OH, OW, O), w, b (C,) -> dx (N, H, W, C)
//
// the second being oneDNN's deconvolution forward: the backward-data map
// above (a ConvTranspose's forward) with bias and activation.
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
#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;
using tag = dnnl::memory::format_tag;

namespace {

enum class Kind { kFwd, kBwdData, kBwdWeights, kFwdBiasAct, kDeconvBiasAct };

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
  float slope = 0.0f;  // The fused kinds' activation.

  std::string Key(Kind kind) const {
    std::ostringstream out;
    out << static_cast<int>(kind) << ',' << slope;
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
  memory::desc bias;                          // The fused kinds' (x).
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

// ... and the activation as an eltwise post-op.
dnnl::primitive_attr ActivationAttr(float slope) {
  auto attr = UserScratchpad();
  dnnl::post_ops ops;
  ops.append_eltwise(dnnl::algorithm::eltwise_relu, slope, 0.0f);
  attr.set_post_ops(ops);
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

// Keeps the primitive of `pd` in `e`, with the memory descriptors its src,
// wei and dst roles take (and its scratchpad's).
template <typename Primitive, typename Pd>
void Keep(Entry* e, const Pd& pd, const memory::desc& src, const memory::desc& wei,
          const memory::desc& dst) {
  e->prim = Primitive(pd);
  e->src = src;
  e->wei = wei;
  e->dst = dst;
  e->scratch_prim = pd.scratchpad_desc();
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
  if (kind == Kind::kFwdBiasAct) {
    e->bias = memory::desc({g.dst[1]}, dt::f32, tag::x);
    auto pd = dnnl::convolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training,
        dnnl::algorithm::convolution_direct, e->src_user, wei_any, e->bias,
        e->dst_user, g.strides, g.pad_l, g.pad_r, ActivationAttr(g.slope));
    Keep<dnnl::convolution_forward>(e.get(), pd, pd.src_desc(), pd.weights_desc(),
                                    pd.dst_desc());
  } else if (kind == Kind::kDeconvBiasAct) {
    // src = dy (the small side), dst = dx (the big one); the weights'
    // logical dims are (C, O, KH, KW), the HWIO buffer read with strides.
    e->bias = memory::desc({g.src[1]}, dt::f32, tag::x);
    const memory::dims dims = {g.wei[1], g.wei[0], g.wei[2], g.wei[3]};
    e->wei_user = memory::desc(
        dims, dt::f32, {g.wei[0], 1, g.wei[3] * g.wei[1] * g.wei[0],
                        g.wei[1] * g.wei[0]});
    auto pd = dnnl::deconvolution_forward::primitive_desc(
        Engine(), dnnl::prop_kind::forward_training,
        dnnl::algorithm::deconvolution_direct, e->dst_user,
        memory::desc(dims, dt::f32, tag::any), e->bias, e->src_user,
        g.strides, g.pad_l, g.pad_r, ActivationAttr(g.slope));
    Keep<dnnl::deconvolution_forward>(e.get(), pd, pd.dst_desc(), pd.weights_desc(),
                                      pd.src_desc());
  } else if (kind == Kind::kFwd) {
    Keep<dnnl::convolution_forward>(e.get(), fwd, fwd.src_desc(), fwd.weights_desc(),
                                    fwd.dst_desc());
  } else if (kind == Kind::kBwdData) {
    auto pd = dnnl::convolution_backward_data::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, e->src_user, wei_any,
        e->dst_user, g.strides, g.pad_l, g.pad_r, fwd, attr);
    Keep<dnnl::convolution_backward_data>(e.get(), pd, pd.diff_src_desc(),
                                          pd.weights_desc(), pd.diff_dst_desc());
  } else {
    auto pd = dnnl::convolution_backward_weights::primitive_desc(
        Engine(), dnnl::algorithm::convolution_direct, e->src_user, wei_any,
        e->dst_user, g.strides, g.pad_l, g.pad_r, fwd, attr);
    Keep<dnnl::convolution_backward_weights>(e.get(), pd, pd.src_desc(),
                                             pd.diff_weights_desc(), pd.diff_dst_desc());
  }
  // The output of each kind is reordered primitive -> user, inputs the
  // other way.
  e->has_reorder_src = e->src != e->src_user;
  e->has_reorder_wei = e->wei != e->wei_user;
  e->has_reorder_dst = e->dst != e->dst_user;
  const bool src_out = kind == Kind::kBwdData || kind == Kind::kDeconvBiasAct;
  if (e->has_reorder_src)
    e->reorder_src =
        src_out ? Reorder(e->src, e->src_user, &e->scratch_src)
                               : Reorder(e->src_user, e->src, &e->scratch_src);
  if (e->has_reorder_wei)
    e->reorder_wei =
        kind == Kind::kBwdWeights ? Reorder(e->wei, e->wei_user, &e->scratch_wei)
                                  : Reorder(e->wei_user, e->wei, &e->scratch_wei);
  if (e->has_reorder_dst)
    e->reorder_dst =
        kind == Kind::kFwd || kind == Kind::kFwdBiasAct
            ? Reorder(e->dst, e->dst_user, &e->scratch_dst)
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

// src = x (or dx), wei = w (or dw), dst = y (or dy): the user's buffers;
// bias: the fused kinds' bias.
ffi::Error Run(Kind kind, const Geometry& g, void* src, void* wei, void* dst,
               void* bias = nullptr) {
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
    // One side of the call (src, wei or dst): the user's buffer, the one
    // the primitive takes, and the reorder between them.
    struct Side {
      bool reordered;
      const dnnl::primitive& reorder;
      const memory::desc& scratch_desc;
      memory& user;
      memory& mem;
    };
    Side s{e->has_reorder_src, e->reorder_src, e->scratch_src, src_user, src_mem};
    Side w{e->has_reorder_wei, e->reorder_wei, e->scratch_wei, wei_user, wei_mem};
    Side d{e->has_reorder_dst, e->reorder_dst, e->scratch_dst, dst_user, dst_mem};
    auto copy = [&](const Side& side, bool into_primitive) {
      if (!side.reordered) return;
      side.reorder.execute(
          stream, {{DNNL_ARG_FROM, into_primitive ? side.user : side.mem},
                   {DNNL_ARG_TO, into_primitive ? side.mem : side.user},
                   {DNNL_ARG_SCRATCHPAD, scratch(side.scratch_desc)}});
    };
    // The two sides each kind reads and the one it writes, with oneDNN's
    // argument ids for them (the deconvolution reads dy, writes dx).
    const bool deconv = kind == Kind::kDeconvBiasAct;
    const bool fused = deconv || kind == Kind::kFwdBiasAct;
    std::pair<Side*, int> in1, in2, out;
    if (kind == Kind::kBwdData) {
      in1 = {&d, DNNL_ARG_DIFF_DST};
      in2 = {&w, DNNL_ARG_WEIGHTS};
      out = {&s, DNNL_ARG_DIFF_SRC};
    } else if (kind == Kind::kBwdWeights) {
      in1 = {&s, DNNL_ARG_SRC};
      in2 = {&d, DNNL_ARG_DIFF_DST};
      out = {&w, DNNL_ARG_DIFF_WEIGHTS};
    } else {
      in1 = {deconv ? &d : &s, DNNL_ARG_SRC};
      in2 = {&w, DNNL_ARG_WEIGHTS};
      out = {deconv ? &s : &d, DNNL_ARG_DST};
    }
    copy(*in1.first, true);
    copy(*in2.first, true);
    std::unordered_map<int, memory> args = {
        {in1.second, in1.first->mem},
        {in2.second, in2.first->mem},
        {out.second, out.first->mem},
        {DNNL_ARG_SCRATCHPAD, scratch(e->scratch_prim)}};
    if (fused) args.emplace(DNNL_ARG_BIAS, memory(e->bias, engine, bias));
    e->prim.execute(stream, args);
    copy(*out.first, false);
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

using Bias = ffi::BufferR1<ffi::F32>;

ffi::Error FwdBiasAct(Array x, Array w, Bias b, Result y, int64_t sh,
                      int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                      int64_t pr, float slope) {
  Geometry g;
  if (!MakeGeometry(x.dimensions(), w.dimensions(), y->dimensions(), sh, sw,
                    pt, pb, pl, pr, &g) ||
      b.dimensions()[0] != y->dimensions()[3])
    return BadShapes();
  g.slope = slope;
  return Run(Kind::kFwdBiasAct, g, x.untyped_data(), w.untyped_data(),
             y->untyped_data(), b.untyped_data());
}

// A deconvolution's output size is exact: (OH - 1) * sh + KH - pt - pb == H.
ffi::Error DeconvBiasAct(Array dy, Array w, Bias b, Result dx, int64_t sh,
                         int64_t sw, int64_t pt, int64_t pb, int64_t pl,
                         int64_t pr, float slope) {
  Geometry g;
  const auto& x = dx->dimensions();
  const auto& k = w.dimensions();
  const auto& y = dy.dimensions();
  if (!MakeGeometry(x, k, y, sh, sw, pt, pb, pl, pr, &g) ||
      (y[1] - 1) * sh + k[0] - pt - pb != x[1] ||
      (y[2] - 1) * sw + k[1] - pl - pr != x[2] ||
      b.dimensions()[0] != x[3])
    return BadShapes();
  g.slope = slope;
  return Run(Kind::kDeconvBiasAct, g, dx->untyped_data(), w.untyped_data(),
             dy.untyped_data(), b.untyped_data());
}


// ---------------------------------------------------------------------------
// Convolutions whose small side has one channel: conv_cpu's formulation
// 'narrow' (the VAE's output Conv C -> 1). oneDNN's kernels vectorise over
// output channels and reach ~6 % of the matmul ceiling with one; these loops
// vectorise over big's C channels instead. In conv_cpu's terms, per spatial
// dim tap t links small[o] and big[step * o + base + t] (positions outside
// big are zeros):
//
//   VaeganNarrowDown   big (N, HB, WB, C), w (KH, KW, C, 1) -> small (N, HS, WS, 1)
//   VaeganNarrowUp     small (N, HS, WS, 1), w (KH, KW, C, 1) -> big (N, HB, WB, C)
//   VaeganNarrowWgrad  big (N, HB, WB, C), small (N, HS, WS, 1) -> w (KH, KW, C, 1)
//
// with attributes sh, sw (steps) and bh, bw (bases). The work is cut into
// fixed chunks (one image each) that XLA's intra-op threads share; wgrad adds
// its per-image partial sums in image order, so no result depends on which
// thread ran what.
// ---------------------------------------------------------------------------

struct Narrow {
  int64_t n, hb, wb, c, hs, ws, kh, kw, sh, sw, bh, bw;
};

// Runs fn(0) ... fn(total - 1) on the caller and up to num_threads - 1 pool
// tasks. A task only runs chunks it claims before all are claimed, and the
// caller waits for every claimed chunk, so tasks that start late (after the
// call returned) find nothing to do.
void ParallelFor(ffi::ThreadPool& pool, int64_t total,
                 const std::function<void(int64_t)>& fn) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
    int64_t total = 0;
    const std::function<void(int64_t)>* fn = nullptr;
  };
  auto state = std::make_shared<State>();
  state->total = total;
  state->fn = &fn;
  auto work = [](State& s) {
    for (int64_t i; (i = s.next.fetch_add(1)) < s.total;) {
      (*s.fn)(i);
      s.done.fetch_add(1, std::memory_order_release);
    }
  };
  int64_t helpers = std::min<int64_t>(pool.num_threads(), total) - 1;
  for (int64_t h = 0; h < helpers; ++h)
    pool.Schedule([state, work] { work(*state); });
  work(*state);
  while (state->done.load(std::memory_order_acquire) < total)
    std::this_thread::yield();
}

// The first and one-past-last output o with 0 <= step * o + base + t < n_big.
inline void ValidOutputs(int64_t t, int64_t step, int64_t base, int64_t n_big,
                         int64_t n_small, int64_t* first, int64_t* last) {
  int64_t lo = -(base + t), hi = n_big - (base + t);  // step * o in [lo, hi)
  *first = lo <= 0 ? 0 : (lo + step - 1) / step;
  *last = hi <= 0 ? 0 : std::min(n_small, (hi + step - 1) / step);
  if (*last < *first) *last = *first;
}

// The loops below are compiled for AVX-512, AVX2 and baseline x86-64 (GCC
// picks one at load time by the CPU's features), so one build runs on any
// x86-64 machine; with compilers other than GCC >= 12 (where this was
// tested) they are built for baseline x86-64 only: slower, same results up
// to rounding. They are instantiated for a few channel counts (kC, 0 = any),
// so that a pixel's C accumulators can live in registers.
#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 12
#define VAEGAN_CLONES \
  __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define VAEGAN_CLONES
#endif

// The C accumulators of one pixel: a fixed array for the channel counts
// the loops are built for (kC > 0: they can live in registers), else on the
// heap.
template <int64_t kC>
class Accumulators {
 public:
  explicit Accumulators(int64_t c) : dynamic_(kC ? 0 : c) {}
  float* get() { return kC ? fixed_ : dynamic_.data(); }

 private:
  std::vector<float> dynamic_;
  float fixed_[kC ? kC : 1];
};

// small[n] = sum over taps of big's patch . w, pixel by pixel.
template <int64_t kC>
VAEGAN_CLONES void NarrowDownImage(const Narrow& g, const float* big,
                                   const float* w, float* small, int64_t n) {
  const int64_t C = kC ? kC : g.c;
  Accumulators<kC> accumulators(C);
  float* acc = accumulators.get();
  const float* image = big + n * g.hb * g.wb * C;
  float* out = small + n * g.hs * g.ws;
  for (int64_t oh = 0; oh < g.hs; ++oh) {
    for (int64_t ow = 0; ow < g.ws; ++ow) {
      for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
      for (int64_t a = 0; a < g.kh; ++a) {
        const int64_t ih = g.sh * oh + g.bh + a;
        if (ih < 0 || ih >= g.hb) continue;
        for (int64_t b = 0; b < g.kw; ++b) {
          const int64_t iw = g.sw * ow + g.bw + b;
          if (iw < 0 || iw >= g.wb) continue;
          const float* x = image + (ih * g.wb + iw) * C;
          const float* wt = w + (a * g.kw + b) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) acc[c] += x[c] * wt[c];
        }
      }
      float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
      for (int64_t c = 0; c < C; ++c) sum += acc[c];
      out[oh * g.ws + ow] = sum;
    }
  }
}

// big[n] pixel by pixel: the taps that reach it, each small value times w
// (kUnit: unit steps, no division).
template <int64_t kC, bool kUnit>
VAEGAN_CLONES void NarrowUpImage(const Narrow& g, const float* small,
                                 const float* w, float* big, int64_t n) {
  const int64_t C = kC ? kC : g.c;
  Accumulators<kC> accumulators(C);
  float* acc = accumulators.get();
  const float* in = small + n * g.hs * g.ws;
  float* image = big + n * g.hb * g.wb * C;
  for (int64_t ih = 0; ih < g.hb; ++ih) {
    for (int64_t iw = 0; iw < g.wb; ++iw) {
      for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
      for (int64_t a = 0; a < g.kh; ++a) {
        const int64_t ph = ih - g.bh - a;  // = sh * oh
        if (ph < 0) break;
        if (!kUnit && ph % g.sh != 0) continue;
        const int64_t oh = kUnit ? ph : ph / g.sh;
        if (oh >= g.hs) continue;
        for (int64_t b = 0; b < g.kw; ++b) {
          const int64_t pw = iw - g.bw - b;
          if (pw < 0) break;
          if (!kUnit && pw % g.sw != 0) continue;
          const int64_t ow = kUnit ? pw : pw / g.sw;
          if (ow >= g.ws) continue;
          const float v = in[oh * g.ws + ow];
          const float* wt = w + (a * g.kw + b) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) acc[c] += v * wt[c];
        }
      }
      float* x = image + (ih * g.wb + iw) * C;
      for (int64_t c = 0; c < C; ++c) x[c] = acc[c];
    }
  }
}

template <int64_t kC>
void NarrowUpImageAny(const Narrow& g, const float* small, const float* w,
                      float* big, int64_t n) {
  if (g.sh == 1 && g.sw == 1)
    NarrowUpImage<kC, true>(g, small, w, big, n);
  else
    NarrowUpImage<kC, false>(g, small, w, big, n);
}

// One image's share of dW, tap by tap: the tap's C sums over every pixel.
template <int64_t kC>
VAEGAN_CLONES void NarrowWgradImage(const Narrow& g, const float* big,
                                    const float* small, float* partial,
                                    int64_t n) {
  const int64_t C = kC ? kC : g.c;
  Accumulators<kC> accumulators(C);
  float* acc = accumulators.get();
  const float* image = big + n * g.hb * g.wb * C;
  const float* dy = small + n * g.hs * g.ws;
  for (int64_t a = 0; a < g.kh; ++a) {
    int64_t oh0, oh1;
    ValidOutputs(a, g.sh, g.bh, g.hb, g.hs, &oh0, &oh1);
    for (int64_t b = 0; b < g.kw; ++b) {
      int64_t ow0, ow1;
      ValidOutputs(b, g.sw, g.bw, g.wb, g.ws, &ow0, &ow1);
      for (int64_t c = 0; c < C; ++c) acc[c] = 0.0f;
      for (int64_t oh = oh0; oh < oh1; ++oh) {
        const float* row = image + (g.sh * oh + g.bh + a) * g.wb * C;
        for (int64_t ow = ow0; ow < ow1; ++ow) {
          const float v = dy[oh * g.ws + ow];
          const float* x = row + (g.sw * ow + g.bw + b) * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) acc[c] += v * x[c];
        }
      }
      float* out = partial + (a * g.kw + b) * C;
      for (int64_t c = 0; c < C; ++c) out[c] = acc[c];
    }
  }
}

// Calls kernel<kC>(args...) for the channel counts with their own build.
#define VAEGAN_BY_CHANNELS(kernel, c, ...)                   \
  switch (c) {                                               \
    case 8: kernel<8>(__VA_ARGS__); break;                   \
    case 16: kernel<16>(__VA_ARGS__); break;                 \
    case 32: kernel<32>(__VA_ARGS__); break;                 \
    case 64: kernel<64>(__VA_ARGS__); break;                 \
    default: kernel<0>(__VA_ARGS__);                         \
  }

// big, small, w dims -> Narrow; false if inconsistent.
bool MakeNarrow(const Array::Dimensions& big, const Array::Dimensions& small,
                const Array::Dimensions& w, int64_t sh, int64_t sw,
                int64_t bh, int64_t bw, Narrow* g) {
  *g = {big[0], big[1], big[2], big[3], small[1], small[2], w[0], w[1],
        sh, sw, bh, bw};
  return sh > 0 && sw > 0 && big[0] == small[0] && small[3] == 1 &&
         w[2] == big[3] && w[3] == 1;
}

ffi::Error BadNarrow() {
  return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                    "narrow convolution: inconsistent shapes");
}

// Checks the shapes, then runs per_image(g, n) for every image n.
template <typename PerImage>
ffi::Error NarrowMap(ffi::ThreadPool& pool, const Array::Dimensions& big,
                     const Array::Dimensions& small,
                     const Array::Dimensions& w, int64_t sh, int64_t sw,
                     int64_t bh, int64_t bw, const PerImage& per_image) {
  Narrow g;
  if (!MakeNarrow(big, small, w, sh, sw, bh, bw, &g)) return BadNarrow();
  ParallelFor(pool, g.n, [&](int64_t n) { per_image(g, n); });
  return ffi::Error::Success();
}

// NarrowDown (in = big, out = small) and, kUp, NarrowUp (in = small,
// out = big): one image per task.
template <bool kUp>
ffi::Error NarrowDownOrUp(ffi::ThreadPool pool, Array in, Array w, Result out,
                          int64_t sh, int64_t sw, int64_t bh, int64_t bw) {
  const float* x = in.typed_data();
  const float* k = w.typed_data();
  float* y = out->typed_data();
  return NarrowMap(pool, kUp ? out->dimensions() : in.dimensions(),
                   kUp ? in.dimensions() : out->dimensions(), w.dimensions(),
                   sh, sw, bh, bw, [&](const Narrow& g, int64_t n) {
                     if constexpr (kUp) {
                       VAEGAN_BY_CHANNELS(NarrowUpImageAny, g.c, g, x, k, y, n);
                     } else {
                       VAEGAN_BY_CHANNELS(NarrowDownImage, g.c, g, x, k, y, n);
                     }
                   });
}

constexpr auto NarrowDown = NarrowDownOrUp<false>;
constexpr auto NarrowUp = NarrowDownOrUp<true>;

ffi::Error NarrowWgrad(ffi::ThreadPool pool, Array big, Array small, Result w,
                       int64_t sh, int64_t sw, int64_t bh, int64_t bw) {
  Narrow g;
  if (!MakeNarrow(big.dimensions(), small.dimensions(), w->dimensions(), sh,
                  sw, bh, bw, &g))
    return BadNarrow();
  const int64_t size = g.kh * g.kw * g.c;
  std::vector<float> partials(g.n * size);
  const float* x = big.typed_data();
  const float* dy = small.typed_data();
  ParallelFor(pool, g.n, [&](int64_t n) {
    VAEGAN_BY_CHANNELS(NarrowWgradImage, g.c, g, x, dy, partials.data() + n * size, n);
  });
  float* dw = w->typed_data();
  std::copy(partials.begin(), partials.begin() + size, dw);
  for (int64_t n = 1; n < g.n; ++n) {
    const float* p = partials.data() + n * size;
#pragma omp simd
    for (int64_t i = 0; i < size; ++i) dw[i] += p[i];
  }
  return ffi::Error::Success();
}

}  // namespace

// The geometry attributes of the oneDNN calls.
#define VAEGAN_ONEDNN_GEOMETRY            \
  .Attr<int64_t>("sh")                    \
      .Attr<int64_t>("sw")                \
      .Attr<int64_t>("pt")                \
      .Attr<int64_t>("pb")                \
      .Attr<int64_t>("pl")                \
      .Attr<int64_t>("pr")

#define VAEGAN_ONEDNN_BINDING             \
  ffi::Ffi::Bind()                        \
      .Arg<Array>()                       \
      .Arg<Array>()                       \
      .Ret<ffi::BufferR4<ffi::F32>>()     \
      VAEGAN_ONEDNN_GEOMETRY

XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeganOnednnConvFwd, Fwd, VAEGAN_ONEDNN_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeganOnednnConvBwdData, BwdData,
                              VAEGAN_ONEDNN_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeganOnednnConvBwdWeights, BwdWeights,
                              VAEGAN_ONEDNN_BINDING);

#define VAEGAN_ONEDNN_FUSED_BINDING       \
  ffi::Ffi::Bind()                        \
      .Arg<Array>()                       \
      .Arg<Array>()                       \
      .Arg<Bias>()                        \
      .Ret<ffi::BufferR4<ffi::F32>>()     \
      VAEGAN_ONEDNN_GEOMETRY              \
      .Attr<float>("slope")

XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeganOnednnConvFwdBiasAct, FwdBiasAct,
                              VAEGAN_ONEDNN_FUSED_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeganOnednnDeconvFwdBiasAct, DeconvBiasAct,
                              VAEGAN_ONEDNN_FUSED_BINDING);

#define VAEGAN_NARROW_BINDING             \
  ffi::Ffi::Bind()                        \
      .Ctx<ffi::ThreadPool>()             \
      .Arg<Array>()                       \
      .Arg<Array>()                       \
      .Ret<ffi::BufferR4<ffi::F32>>()     \
      .Attr<int64_t>("sh")                \
      .Attr<int64_t>("sw")                \
      .Attr<int64_t>("bh")                \
      .Attr<int64_t>("bw")

XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeganNarrowDown, NarrowDown,
                              VAEGAN_NARROW_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeganNarrowUp, NarrowUp, VAEGAN_NARROW_BINDING);
XLA_FFI_DEFINE_HANDLER_SYMBOL(VaeganNarrowWgrad, NarrowWgrad,
                              VAEGAN_NARROW_BINDING);
