#include "trine/runtime/losses.h"

#include <sstream>

namespace trine {

namespace {

std::string shape_of(const torch::Tensor& t) {
  std::ostringstream os;
  os << t.sizes() << " " << t.scalar_type();
  return os.str();
}

void check_arity(const std::string& name, const std::vector<torch::Tensor>& outputs,
                 const std::vector<torch::Tensor>& targets) {
  TORCH_CHECK(!outputs.empty() && outputs[0].defined(), "loss ", name, ": the model returned no tensor");
  TORCH_CHECK(targets.size() == 1, "loss ", name, " takes one target tensor per batch, got ", targets.size());
}

torch::Tensor cross_entropy(const std::vector<torch::Tensor>& outputs, const std::vector<torch::Tensor>& targets) {
  check_arity("cross_entropy", outputs, targets);
  const auto& logits = outputs[0];
  const auto& labels = targets[0];
  TORCH_CHECK(logits.dim() == 2 && logits.is_floating_point() && labels.dim() == 1 &&
                  labels.scalar_type() == torch::kLong && labels.size(0) == logits.size(0),
              "loss cross_entropy needs the model's first output as [rows, classes] logits and the target as [rows] "
              "class ids (int64); got output ", shape_of(logits), " and target ", shape_of(labels),
              ". For next-token logits [rows, seq, vocab] use lm_cross_entropy; for regression, mse.");
  return torch::nn::functional::cross_entropy(logits, labels);
}

torch::Tensor lm_cross_entropy(const std::vector<torch::Tensor>& outputs, const std::vector<torch::Tensor>& targets) {
  check_arity("lm_cross_entropy", outputs, targets);
  const auto& logits = outputs[0];
  const auto& next = targets[0];
  TORCH_CHECK(logits.dim() == 3 && logits.is_floating_point() && next.dim() == 2 &&
                  next.scalar_type() == torch::kLong && next.size(0) == logits.size(0) &&
                  next.size(1) == logits.size(1),
              "loss lm_cross_entropy needs the model's first output as [rows, seq, vocab] logits and the target as "
              "[rows, seq] next-token ids (int64); got output ", shape_of(logits), " and target ", shape_of(next),
              ". For one label per row use cross_entropy.");
  return torch::nn::functional::cross_entropy(logits.reshape({-1, logits.size(2)}), next.reshape({-1}));
}

torch::Tensor mse(const std::vector<torch::Tensor>& outputs, const std::vector<torch::Tensor>& targets) {
  check_arity("mse", outputs, targets);
  TORCH_CHECK(outputs[0].is_floating_point() && targets[0].is_floating_point() &&
                  outputs[0].sizes() == targets[0].sizes(),
              "loss mse needs the model's first output and the target to be floating-point tensors of the same "
              "shape; got output ", shape_of(outputs[0]), " and target ", shape_of(targets[0]));
  return torch::mse_loss(outputs[0], targets[0]);
}

}  // namespace

const std::vector<std::string>& loss_names() {
  static const std::vector<std::string> names{"cross_entropy", "lm_cross_entropy", "mse"};
  return names;
}

LossFn named_loss(const std::string& name) {
  if (name == "cross_entropy") return cross_entropy;
  if (name == "lm_cross_entropy") return lm_cross_entropy;
  if (name == "mse") return mse;
  std::string known;
  for (const auto& n : loss_names()) known += (known.empty() ? "" : ", ") + n;
  TORCH_CHECK(false, "unknown loss '", name, "'; known losses: ", known);
}

}  // namespace trine
