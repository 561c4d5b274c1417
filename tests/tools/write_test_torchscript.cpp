// Writes a small TorchScript MLP (Linear+ReLU blocks "blockN", residual at
// the end) to the given file: a model from outside trine for the CLI tests.
#include <torch/script.h>

#include <iostream>
#include <string>

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: write_test_torchscript FILE [BLOCKS]\n";
    return 2;
  }
  const int blocks = argc > 2 ? std::stoi(argv[2]) : 4;
  torch::manual_seed(3);
  torch::jit::Module model("Mlp");
  for (int i = 0; i < blocks; ++i) {
    torch::jit::Module layer("Block" + std::to_string(i));
    layer.register_parameter("weight", torch::randn({16, 16}) * 0.25, false);
    layer.register_parameter("bias", torch::zeros({16}), false);
    layer.define(R"(
def forward(self, x):
    return torch.relu(torch.matmul(x, self.weight.t()) + self.bias)
)");
    model.register_module("block" + std::to_string(i), layer);
  }
  std::string body = "def forward(self, x):\n    h = x\n";
  for (int i = 0; i < blocks; ++i) body += "    h = self.block" + std::to_string(i) + ".forward(h)\n";
  body += "    return h + x\n";
  model.define(body);
  model.save(argv[1]);
  return 0;
}
