// TensorRT 10 IPluginV3 wrappers of surgeon's kernels, compiled into libsurgeon_plugins.so when CMake
// finds NvInfer.h. Loading the library registers one IPluginCreatorV3One per plugin (namespace
// "surgeon", version "1") with TensorRT's plugin registry, so the ONNX parser maps nodes of the same op
// type (with plugin_version / plugin_namespace attributes) to them. `polygraphy --plugins`, surgeon's
// `plugins: [builtin]` and `trtexec --staticPlugins` load it that way.
//
// One template, `Plugin<Op>`, implements the IPluginV3 interfaces; each `Op` below says what differs:
// name, integer attributes (with defaults), input types, output shape and the C API launch. The
// attributes and shapes are those of surgeon/plugins/specs.py.
#include <NvInfer.h>
#include <cuda_runtime_api.h>

#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "surgeon_plugins.h"

namespace {

using namespace nvinfer1;

constexpr char const* kNamespace = "surgeon";
constexpr char const* kVersion = "1";

struct Attribute {
  char const* name;
  int32_t fallback;
};

// What an input accepts: the float type of input 0, always float32, or an index type.
enum class Kind { kSame, kFloat32, kInt32, kInt64 };
using Attrs = std::vector<int32_t>;

surgeon_dtype dtype_of(DataType type) { return type == DataType::kHALF ? SURGEON_FLOAT16 : SURGEON_FLOAT32; }

struct Msda {
  static constexpr char const* kName = "MultiScaleDeformableAttn";
  static constexpr int32_t kInputs = 5;  // value, spatial_shapes, level_start_index, sampling_locations, weights
  static std::vector<Attribute> attributes() { return {}; }
  static Kind input(int32_t i) { return i == 1 || i == 2 ? Kind::kInt64 : Kind::kSame; }
  static void shape(DimsExprs const* in, DimsExprs& out, IExprBuilder& b, Attrs const&) {
    out.nbDims = 3;
    out.d[0] = in[0].d[0];
    out.d[1] = in[3].d[1];
    out.d[2] = b.operation(DimensionOperation::kPROD, *in[0].d[2], *in[0].d[3]);
  }
  static cudaError_t launch(PluginTensorDesc const* d, void const* const* x, void* y, Attrs const&, cudaStream_t s) {
    Dims const& v = d[0].dims;
    Dims const& loc = d[3].dims;
    return surgeon_msda(dtype_of(d[0].type), x[0], static_cast<int64_t const*>(x[1]), static_cast<int64_t const*>(x[2]),
                        x[3], x[4], y, v.d[0], v.d[1], v.d[2], v.d[3], d[1].dims.d[0], loc.d[1], loc.d[4], s);
  }
};

struct GridSample2D {
  static constexpr char const* kName = "GridSample2D";
  static constexpr int32_t kInputs = 2;  // input [N, C, H, W], grid [N, Hg, Wg, 2]
  static std::vector<Attribute> attributes() {
    return {{"interpolation_mode", 0}, {"padding_mode", 0}, {"align_corners", 0}};
  }
  static Kind input(int32_t) { return Kind::kSame; }
  static void shape(DimsExprs const* in, DimsExprs& out, IExprBuilder&, Attrs const&) {
    out.nbDims = 4;
    out.d[0] = in[0].d[0];
    out.d[1] = in[0].d[1];
    out.d[2] = in[1].d[1];
    out.d[3] = in[1].d[2];
  }
  static cudaError_t launch(PluginTensorDesc const* d, void const* const* x, void* y, Attrs const& a, cudaStream_t s) {
    Dims const& in = d[0].dims;
    Dims const& grid = d[1].dims;
    return surgeon_grid_sample_2d(dtype_of(d[0].type), x[0], x[1], y, in.d[0], in.d[1], in.d[2], in.d[3], grid.d[1],
                                  grid.d[2], a[0], a[1], a[2], s);
  }
};

struct BEVPool {
  static constexpr char const* kName = "BEVPool";
  // depth, feat, ranks_depth, ranks_feat, ranks_bev, interval_starts, interval_lengths
  static constexpr int32_t kInputs = 7;
  static std::vector<Attribute> attributes() { return {{"bev_h", 128}, {"bev_w", 128}}; }
  static Kind input(int32_t i) { return i < 2 ? Kind::kSame : Kind::kInt32; }
  static void shape(DimsExprs const* in, DimsExprs& out, IExprBuilder& b, Attrs const& a) {
    out.nbDims = 4;
    out.d[0] = b.constant(1);
    out.d[1] = in[1].d[3];
    out.d[2] = b.constant(a[0]);
    out.d[3] = b.constant(a[1]);
  }
  static cudaError_t launch(PluginTensorDesc const* d, void const* const* x, void* y, Attrs const& a, cudaStream_t s) {
    auto index = [&](int32_t i) { return static_cast<int32_t const*>(x[i]); };
    return surgeon_bev_pool(dtype_of(d[0].type), x[0], x[1], index(2), index(3), index(4), index(5), index(6), y,
                            d[5].dims.d[0], d[1].dims.d[3], a[0], a[1], s);
  }
};

struct Rotate {
  static constexpr char const* kName = "Rotate";
  static constexpr int32_t kInputs = 3;  // input [C, H, W] or [N, C, H, W], angle [1], center [2]
  static std::vector<Attribute> attributes() { return {{"interpolation_mode", 0}}; }
  static Kind input(int32_t i) { return i == 0 ? Kind::kSame : Kind::kFloat32; }
  static void shape(DimsExprs const* in, DimsExprs& out, IExprBuilder&, Attrs const&) { out = in[0]; }
  static cudaError_t launch(PluginTensorDesc const* d, void const* const* x, void* y, Attrs const& a, cudaStream_t s) {
    Dims const& in = d[0].dims;
    int32_t const n = in.nbDims == 4 ? in.d[0] : 1;
    int32_t const first = in.nbDims - 3;
    return surgeon_rotate(dtype_of(d[0].type), x[0], static_cast<float const*>(x[1]), static_cast<float const*>(x[2]),
                          y, n, in.d[first], in.d[first + 1], in.d[first + 2], a[0], s);
  }
};

struct DeformableAggregation {
  static constexpr char const* kName = "DeformableAggregation";
  // mc_ms_feat, spatial_shape, scale_start_index, sampling_location, weights
  static constexpr int32_t kInputs = 5;
  static std::vector<Attribute> attributes() { return {}; }
  static Kind input(int32_t i) { return i == 1 || i == 2 ? Kind::kInt32 : Kind::kSame; }
  static void shape(DimsExprs const* in, DimsExprs& out, IExprBuilder&, Attrs const&) {
    out.nbDims = 3;
    out.d[0] = in[0].d[0];
    out.d[1] = in[3].d[1];
    out.d[2] = in[0].d[2];
  }
  static cudaError_t launch(PluginTensorDesc const* d, void const* const* x, void* y, Attrs const&, cudaStream_t s) {
    Dims const& feat = d[0].dims;
    Dims const& loc = d[3].dims;
    Dims const& weights = d[4].dims;
    return surgeon_deformable_aggregation(dtype_of(d[0].type), x[0], static_cast<int32_t const*>(x[1]),
                                          static_cast<int32_t const*>(x[2]), x[3], x[4], y, feat.d[0], feat.d[1],
                                          feat.d[2], loc.d[3], d[1].dims.d[1], loc.d[1], loc.d[2], weights.d[5], s);
  }
};

// The attribute values as serialized PluginFields (all int32, in the Op's order).
class Fields {
 public:
  Fields(std::vector<Attribute> const& attributes, Attrs const* values) {
    for (size_t i = 0; i < attributes.size(); ++i) {
      fields_.emplace_back(attributes[i].name, values ? &(*values)[i] : nullptr, PluginFieldType::kINT32, 1);
    }
    collection_.nbFields = static_cast<int32_t>(fields_.size());
    collection_.fields = fields_.data();
  }
  PluginFieldCollection const* get() const { return &collection_; }

 private:
  std::vector<PluginField> fields_;
  PluginFieldCollection collection_{};
};

template <typename Op>
class Plugin final : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
 public:
  explicit Plugin(Attrs attrs) : attrs_(std::move(attrs)), fields_(Op::attributes(), &attrs_) {}

  IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
    switch (type) {
      case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
      case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
      case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    }
    return nullptr;
  }
  IPluginV3* clone() noexcept override {
    try {
      return new Plugin<Op>(attrs_);
    } catch (...) {
      return nullptr;
    }
  }

  char const* getPluginName() const noexcept override { return Op::kName; }
  char const* getPluginVersion() const noexcept override { return kVersion; }
  char const* getPluginNamespace() const noexcept override { return kNamespace; }

  int32_t getNbOutputs() const noexcept override { return 1; }
  int32_t configurePlugin(DynamicPluginTensorDesc const*, int32_t, DynamicPluginTensorDesc const*,
                          int32_t) noexcept override {
    return 0;
  }
  int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                             int32_t nbInputs) const noexcept override {
    if (nbOutputs != 1 || nbInputs != Op::kInputs) return -1;
    outputTypes[0] = inputTypes[0];
    return 0;
  }
  int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
                          int32_t nbOutputs, IExprBuilder& exprBuilder) noexcept override {
    if (nbInputs != Op::kInputs || nbOutputs != 1) return -1;
    Op::shape(inputs, outputs[0], exprBuilder, attrs_);
    return 0;
  }
  bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                 int32_t) noexcept override {
    PluginTensorDesc const& desc = inOut[pos].desc;
    if (desc.format != TensorFormat::kLINEAR) return false;
    if (pos == 0) return desc.type == DataType::kFLOAT || desc.type == DataType::kHALF;
    if (pos >= nbInputs) return desc.type == inOut[0].desc.type;
    switch (Op::input(pos)) {
      case Kind::kSame: return desc.type == inOut[0].desc.type;
      case Kind::kFloat32: return desc.type == DataType::kFLOAT;
      case Kind::kInt32: return desc.type == DataType::kINT32;
      case Kind::kInt64: return desc.type == DataType::kINT64;
    }
    return false;
  }

  int32_t onShapeChange(PluginTensorDesc const*, int32_t, PluginTensorDesc const*, int32_t) noexcept override {
    return 0;
  }
  int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
                  void* const* outputs, void*, cudaStream_t stream) noexcept override {
    return Op::launch(inputDesc, inputs, outputs[0], attrs_, stream) == cudaSuccess ? 0 : 1;
  }
  IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }
  PluginFieldCollection const* getFieldsToSerialize() noexcept override { return fields_.get(); }

 private:
  Attrs attrs_;
  Fields fields_;
};

template <typename Op>
class Creator final : public IPluginCreatorV3One {
 public:
  Creator() : fields_(Op::attributes(), nullptr) {}

  char const* getPluginName() const noexcept override { return Op::kName; }
  char const* getPluginVersion() const noexcept override { return kVersion; }
  char const* getPluginNamespace() const noexcept override { return kNamespace; }
  PluginFieldCollection const* getFieldNames() noexcept override { return fields_.get(); }

  // The ONNX parser passes integer attributes as kINT32 (kINT64 from some exporters); other fields,
  // such as plugin_version and plugin_namespace, are not attributes of the op and are ignored.
  IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
    try {
      std::vector<Attribute> const attributes = Op::attributes();
      Attrs values;
      for (Attribute const& a : attributes) values.push_back(a.fallback);
      for (int32_t i = 0; fc != nullptr && i < fc->nbFields; ++i) {
        PluginField const& field = fc->fields[i];
        for (size_t k = 0; k < attributes.size(); ++k) {
          if (field.name == nullptr || std::strcmp(field.name, attributes[k].name) != 0 || field.length < 1) continue;
          if (field.type == PluginFieldType::kINT32) {
            values[k] = *static_cast<int32_t const*>(field.data);
          } else if (field.type == PluginFieldType::kINT64) {
            values[k] = static_cast<int32_t>(*static_cast<int64_t const*>(field.data));
          } else {
            return nullptr;
          }
        }
      }
      return new Plugin<Op>(std::move(values));
    } catch (...) {
      return nullptr;
    }
  }

 private:
  Fields fields_;
};

// Registers one creator of each plugin when the library is loaded.
template <typename Op>
struct Registration {
  Registration() { getPluginRegistry()->registerCreator(creator, kNamespace); }
  Creator<Op> creator;
};

Registration<Msda> const register_msda;
Registration<GridSample2D> const register_grid_sample;
Registration<BEVPool> const register_bev_pool;
Registration<Rotate> const register_rotate;
Registration<DeformableAggregation> const register_deformable_aggregation;

}  // namespace
