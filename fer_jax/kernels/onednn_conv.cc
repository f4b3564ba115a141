// 2-D convolutions for XLA:CPU through oneDNN, as XLA FFI handlers.
//
// Three handlers share one descriptor of the convolution: forward (x, w -> y),
// backward-data (dy, w -> dx) and backward-weights (x, dy -> dw). Activations are NHWC,
// weights HWIO (Flax's layouts), float32 or bfloat16 (one untyped path: the buffers'
// element type picks oneDNN's data type). oneDNN keeps the activations in their plain
// layout and chooses the weights' layout itself; weights are reordered into (or, for
// backward-weights, out of) that layout at most once per call.
//
// Thread safety: primitives are created once per shape and executed concurrently from
// any number of threads. Each is built with a user-provided scratchpad, so that it owns
// no mutable memory; the scratch memory is a per-thread buffer. Only the lookup in the
// primitive cache takes a mutex, never the execution.
#include <omp.h>

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>

#include "oneapi/dnnl/dnnl.hpp"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

enum Kind : int64_t { kForward = 0, kBackwardData = 1, kBackwardWeights = 2 };

// Kind, data type, N, C, H, W, O, KH, KW, OH, OW, strides (2), pads (4).
using Key = std::array<int64_t, 17>;

struct Shape {
  int64_t n, c, h, w, o, kh, kw, oh, ow;
};

struct Cached {
  dnnl::primitive conv;
  dnnl::memory::desc weights;  // the layout oneDNN chose for (diff_)weights
  bool reorder_weights = false;
  dnnl::primitive reorder;     // HWIO <-> chosen layout, when they differ
  size_t scratchpad_bytes = 0;
  size_t weights_bytes = 0;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// Per-thread, 64-byte aligned, grown on demand: no thread ever shares it.
class Buffer {
 public:
  ~Buffer() { std::free(data_); }
  void* get(size_t bytes) {
    if (bytes > size_) {
      std::free(data_);
      size_ = (bytes + 63) / 64 * 64;
      data_ = std::aligned_alloc(64, size_);
      if (data_ == nullptr) size_ = 0;
    }
    return data_;
  }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

dnnl::primitive_attr user_scratchpad() {
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

dnnl::memory::desc activations(int64_t n, int64_t c, int64_t h, int64_t w,
                               dnnl::memory::data_type dt) {
  return dnnl::memory::desc({n, c, h, w}, dt, dnnl::memory::format_tag::nhwc);
}

std::unique_ptr<Cached> create(const Key& key) {
  using dnnl::memory;
  const Kind kind = static_cast<Kind>(key[0]);
  const auto dt = static_cast<memory::data_type>(key[1]);
  const Shape s{key[2], key[3], key[4], key[5], key[6], key[7], key[8], key[9], key[10]};
  const memory::dims strides{key[11], key[12]};
  const memory::dims pad_l{key[13], key[15]}, pad_r{key[14], key[16]};
  auto& engine = cpu_engine();
  const auto attr = user_scratchpad();

  const auto src = activations(s.n, s.c, s.h, s.w, dt);
  const auto dst = activations(s.n, s.o, s.oh, s.ow, dt);
  const memory::dims wdims{s.o, s.c, s.kh, s.kw};
  const memory::desc hwio(wdims, dt, memory::format_tag::hwio);
  const memory::desc any(wdims, dt, memory::format_tag::any);
  const auto algo = dnnl::algorithm::convolution_direct;

  auto out = std::make_unique<Cached>();
  dnnl::convolution_forward::primitive_desc fwd(
      engine, dnnl::prop_kind::forward_training, algo, src, any, dst, strides, pad_l, pad_r,
      attr);
  if (kind == kForward) {
    out->conv = dnnl::convolution_forward(fwd);
    out->weights = fwd.weights_desc();
    out->scratchpad_bytes = fwd.scratchpad_desc().get_size();
  } else if (kind == kBackwardData) {
    dnnl::convolution_backward_data::primitive_desc bwd(engine, algo, src, any, dst, strides,
                                                        pad_l, pad_r, fwd, attr);
    out->conv = dnnl::convolution_backward_data(bwd);
    out->weights = bwd.weights_desc();
    out->scratchpad_bytes = bwd.scratchpad_desc().get_size();
  } else {
    dnnl::convolution_backward_weights::primitive_desc bwd(engine, algo, src, any, dst, strides,
                                                           pad_l, pad_r, fwd, attr);
    out->conv = dnnl::convolution_backward_weights(bwd);
    out->weights = bwd.diff_weights_desc();
    out->scratchpad_bytes = bwd.scratchpad_desc().get_size();
  }
  out->reorder_weights = out->weights != hwio;
  if (out->reorder_weights) {
    const bool into = kind != kBackwardWeights;
    dnnl::reorder::primitive_desc pd(engine, into ? hwio : out->weights, engine,
                                     into ? out->weights : hwio, attr);
    out->reorder = dnnl::reorder(pd);
    out->scratchpad_bytes = std::max(out->scratchpad_bytes, pd.scratchpad_desc().get_size());
    out->weights_bytes = out->weights.get_size();
  }
  return out;
}

const Cached& lookup(const Key& key) {
  static std::mutex mutex;
  static std::map<Key, std::unique_ptr<Cached>> cache;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = cache.find(key);
    if (it != cache.end()) return *it->second;
  }
  // Created outside the lock: two threads may both build one; the first one stored wins.
  auto created = create(key);
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.emplace(key, std::move(created)).first;
  return *it->second;
}

ffi::Error data_type(ffi::DataType t, dnnl::memory::data_type* out) {
  switch (t) {
    case ffi::DataType::F32: *out = dnnl::memory::data_type::f32; return ffi::Error::Success();
    case ffi::DataType::BF16: *out = dnnl::memory::data_type::bf16; return ffi::Error::Success();
    default: return ffi::Error(ffi::ErrorCode::kInvalidArgument,
                               "onednn conv: only float32 and bfloat16 are supported");
  }
}

struct Attrs {
  int64_t stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, threads;
};

// x: NHWC input, w: HWIO weights, y: NHWC output (any of them the gradient, by kind).
ffi::Error run(Kind kind, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer y, const Attrs& a) {
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y.dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4)
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn conv: expected 4-D buffers");
  if (x.element_type() != w.element_type() || x.element_type() != y.element_type())
    return ffi::Error(ffi::ErrorCode::kInvalidArgument, "onednn conv: mixed element types");
  dnnl::memory::data_type dt;
  if (auto err = data_type(x.element_type(), &dt); !err.success()) return err;
  const Key key{kind, static_cast<int64_t>(dt), xd[0], xd[3], xd[1], xd[2], wd[3], wd[0], wd[1],
                yd[1], yd[2], a.stride_h, a.stride_w, a.pad_top, a.pad_bottom, a.pad_left,
                a.pad_right};
  try {
    const Cached& c = lookup(key);
    thread_local Buffer scratch, weights_scratch;
    if (a.threads > 0) omp_set_num_threads(static_cast<int>(a.threads));
    auto& engine = cpu_engine();
    thread_local dnnl::stream stream(cpu_engine());
    const auto src = activations(xd[0], xd[3], xd[1], xd[2], dt);
    const auto dst = activations(yd[0], yd[3], yd[1], yd[2], dt);
    const dnnl::memory::desc hwio({wd[3], wd[2], wd[0], wd[1]}, dt,
                                  dnnl::memory::format_tag::hwio);
    void* pad = scratch.get(c.scratchpad_bytes);
    if (c.scratchpad_bytes && pad == nullptr)
      return ffi::Error(ffi::ErrorCode::kResourceExhausted, "onednn conv: out of memory");
    dnnl::memory scratchpad(dnnl::memory::desc({static_cast<int64_t>(c.scratchpad_bytes)},
                                               dnnl::memory::data_type::u8,
                                               dnnl::memory::format_tag::x),
                            engine, pad);
    dnnl::memory xm(src, engine, x.untyped_data()), ym(dst, engine, y.untyped_data());
    dnnl::memory wm(hwio, engine, w.untyped_data());
    dnnl::memory wk = wm;
    if (c.reorder_weights) {
      void* buf = weights_scratch.get(c.weights_bytes);
      if (buf == nullptr)
        return ffi::Error(ffi::ErrorCode::kResourceExhausted, "onednn conv: out of memory");
      wk = dnnl::memory(c.weights, engine, buf);
      if (kind != kBackwardWeights)
        c.reorder.execute(stream, {{DNNL_ARG_FROM, wm}, {DNNL_ARG_TO, wk},
                                   {DNNL_ARG_SCRATCHPAD, scratchpad}});
    }
    if (kind == kForward) {
      c.conv.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wk}, {DNNL_ARG_DST, ym},
                              {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else if (kind == kBackwardData) {
      c.conv.execute(stream, {{DNNL_ARG_DIFF_SRC, xm}, {DNNL_ARG_WEIGHTS, wk},
                              {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
    } else {
      c.conv.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_WEIGHTS, wk},
                              {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_SCRATCHPAD, scratchpad}});
      if (c.reorder_weights)
        c.reorder.execute(stream, {{DNNL_ARG_FROM, wk}, {DNNL_ARG_TO, wm},
                                   {DNNL_ARG_SCRATCHPAD, scratchpad}});
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error(ffi::ErrorCode::kInternal, std::string("onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

template <Kind kind>
ffi::Error conv_handler(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> out,
                   int64_t stride_h, int64_t stride_w, int64_t pad_top, int64_t pad_bottom,
                   int64_t pad_left, int64_t pad_right, int64_t threads) {
  const Attrs attrs{stride_h, stride_w, pad_top, pad_bottom, pad_left, pad_right, threads};
  if (kind == kForward) return run(kind, a, b, *out, attrs);      // x, w -> y
  if (kind == kBackwardData) return run(kind, *out, b, a, attrs); // dy, w -> dx
  return run(kind, a, *out, b, attrs);                            // x, dy -> dw
}

#define FER_BIND                                                                   \
  ffi::Ffi::Bind()                                                                 \
      .Arg<ffi::AnyBuffer>()                                                       \
      .Arg<ffi::AnyBuffer>()                                                       \
      .Ret<ffi::AnyBuffer>()                                                       \
      .Attr<int64_t>("stride_h")                                                   \
      .Attr<int64_t>("stride_w")                                                   \
      .Attr<int64_t>("pad_top")                                                    \
      .Attr<int64_t>("pad_bottom")                                                 \
      .Attr<int64_t>("pad_left")                                                   \
      .Attr<int64_t>("pad_right")                                                  \
      .Attr<int64_t>("threads")

}  // namespace

constexpr auto forward = conv_handler<kForward>;
constexpr auto backward_data = conv_handler<kBackwardData>;
constexpr auto backward_weights = conv_handler<kBackwardWeights>;

XLA_FFI_DEFINE_HANDLER_SYMBOL(FerOnednnConvForward, forward, FER_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FerOnednnConvBackwardData, backward_data, FER_BIND);
XLA_FFI_DEFINE_HANDLER_SYMBOL(FerOnednnConvBackwardWeights, backward_weights, FER_BIND);

// The oneDNN version the library runs with, for the log line (major * 10000 + minor * 100 + patch).
extern "C" int fer_onednn_version() {
  const dnnl_version_t* v = dnnl_version();
  return static_cast<int>(v->major * 10000 + v->minor * 100 + v->patch);
}
