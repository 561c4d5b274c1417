// Training data from files, for `trine train`: every rank reads the same
// global batch for a step, drawn deterministically from (seed, step), so that
// every layout (dp, pp, microbatches) trains on the same samples.
//
//   TokenFile    a flat binary file of token ids (uint16 or uint32, native byte
//                order, as nanoGPT and Megatron store corpora), memory-mapped;
//                a sample is a window of seq + 1 tokens: input = the first seq,
//                target = the last seq (the next token of each position).
//   TensorFile   a file written by torch.save({"inputs": X, "labels": Y}) (or
//                torch::pickle_save in C++): rows of X are samples, rows of Y
//                their targets; a batch is rows drawn without replacement
//                within a step.
//
// Errors name the file, the problem and the fix: a file shorter than one
// window, a token id at or above the model's vocabulary, a tensor file
// without "inputs"/"labels" or with rows that disagree.
#pragma once
#include "trine/frontend/traced_model.h"

#include <cstdint>
#include <memory>
#include <string>

namespace trine::cli {

class TokenFile {
 public:
  // dtype: "uint16" or "uint32".
  TokenFile(const std::string& path, const std::string& dtype, int64_t seq_len);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  int64_t tokens() const { return count_; }
  // Throws, naming the first offending position, unless every id < vocab.
  // `what` names the vocabulary's source for the message.
  void check_ids_below(int64_t vocab, const std::string& what) const;
  // rows windows: inputs [rows, seq] and targets [rows, seq], int64.
  SampleBatch batch(uint64_t seed, int64_t step, int64_t rows) const;

 private:
  int64_t id_at(int64_t i) const;
  std::string path_;
  int width_ = 2;  // bytes per token
  int64_t seq_len_ = 0, count_ = 0;
  void* map_ = nullptr;
  size_t bytes_ = 0;
};

class TensorFile {
 public:
  explicit TensorFile(const std::string& path);
  int64_t rows() const { return inputs_.size(0); }
  const torch::Tensor& inputs() const { return inputs_; }
  const torch::Tensor& labels() const { return labels_; }
  SampleBatch batch(uint64_t seed, int64_t step, int64_t rows) const;

 private:
  std::string path_;
  torch::Tensor inputs_, labels_;
};

}  // namespace trine::cli
