"""What `trine export` wrote, read the way Python users read it: the .pt file
with torch.load(weights_only=False), the .safetensors file by its specification (header length,
JSON header, raw bytes; no safetensors package needed). Both must hold the
same tensors, whole, with the shapes the checkpoint's meta.json gives.

    check_export.py MODEL.pt MODEL.safetensors STEP_DIR/meta.json
"""
import json
import struct
import sys

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def read_safetensors(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    body = data[8 + n:]
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        begin, end = e["data_offsets"]
        t = torch.frombuffer(bytearray(body[begin:end]), dtype=DTYPES[e["dtype"]]) if end > begin else \
            torch.empty(0, dtype=DTYPES[e["dtype"]])
        out[name] = t.reshape(e["shape"])
    return out


# The .pt file is a typed dictionary (torch::pickle_save), which torch.load
# reads with weights_only=False only: it is our own file.
pt = torch.load(sys.argv[1], weights_only=False)
st = read_safetensors(sys.argv[2])
meta = json.load(open(sys.argv[3]))
assert sorted(pt) == sorted(st) == sorted(meta["parameters"]), (sorted(pt), sorted(st))
for name, t in pt.items():
    assert list(t.shape) == meta["parameters"][name]["shape"], (name, t.shape)
    assert torch.equal(t, st[name]), name
print("export ok: %d tensors, torch.load and safetensors agree" % len(pt))
