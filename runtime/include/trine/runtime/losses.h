// Losses known by name, for configs and command lines: a LossFn
// (outputs, targets) -> scalar tensor over the model's first output and the
// batch's first target. Each checks that the output and target fit it and
// says what it expected when they do not.
//
//   cross_entropy      output [rows, classes] logits, target [rows] class ids (int64)
//   lm_cross_entropy   output [rows, seq, vocab] logits, target [rows, seq] next-token ids
//                      (already shifted: target[t] is the token after input[t])
//   mse                output and target of the same shape (floating point)
#pragma once
#include "trine/frontend/traced_model.h"

#include <string>
#include <vector>

namespace trine {

// The names above, in that order.
const std::vector<std::string>& loss_names();
// Throws naming the known losses when `name` is not one of them.
LossFn named_loss(const std::string& name);

}  // namespace trine
