#!/usr/bin/env python3
"""Writes peftkit's adversarial corpus: Tests/Corpus/cases/<NNN>-<slug>/ and Tests/Corpus/controls/<slug>/.

Every case is a set of hostile input files plus a case.json:

    {"description": ..., "category": ...,
     "command": ["merge", "{case}/base", "{case}/adapter", "--output", "{output}"],
     "exit": 3, "stderr_contains": "...", "marker": "/tmp/peftkit-pwned-..."  (pickle payloads only)}

`{case}` stands for the case's folder, `{output}` for a path in a fresh empty folder. Tests/PEFTKitCLITests/
CorpusTests.swift runs the real `peftkit` executable on each case and checks that it ends with that exit status,
one `peftkit: ` message containing the fragment, within a second, with nothing written to the output and no marker
file created. The controls are the same inputs without the defect: they must succeed, which shows that each case is
refused for its own defect and not for something the generator got wrong.

Plain Python 3 standard library only (no torch, no numpy): safetensors, ZIP archives and pickles are written byte by
byte. The output is deterministic, so regenerating leaves `git status` clean. Run from anywhere:

    python3 Tests/Corpus/generate.py

The pickle payloads are real: under Python's own `pickle.loads` they would run `touch <marker>` (or the like) and
create the marker file. peftkit must refuse them without running anything.
"""

import json
import os
import shutil
import struct
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
MARKER_PREFIX = "/tmp/peftkit-pwned-"

# ----------------------------------------------------------------------------------------------------------------
# Bytes

def f32(values):
    return struct.pack("<%df" % len(values), *values)


def ramp(count, seed=0):
    """Small deterministic floats, exactly representable."""
    return [((i * 7 + seed * 13) % 17 - 8) / 16.0 for i in range(count)]


def st_json(obj):
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=True)


def safetensors(tensors, metadata=None):
    """A valid safetensors file. tensors: [(name, dtype, shape, data bytes)], laid out in the order given."""
    header = {}
    if metadata is not None:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = st_json(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + b"".join(t[3] for t in tensors)


def raw_safetensors(header, data=0, length=None):
    """A file with exactly this header (str or bytes), `data` zero bytes (or these bytes) after it, and the header
    length written as `length` when given."""
    if isinstance(header, str):
        header = header.encode()
    if isinstance(data, int):
        data = bytes(data)
    return struct.pack("<Q", len(header) if length is None else length) + header + data


def entry(name, dtype="F32", shape="[2]", offsets="[0,8]"):
    return '"%s":{"dtype":"%s","shape":%s,"data_offsets":%s}' % (name, dtype, shape, offsets)


def pretty(obj):
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()


# ----------------------------------------------------------------------------------------------------------------
# A tiny model and LoRA adapter, the valid starting point of every merge case

MODULE = "model.layers.0.self_attn.q_proj"
WEIGHT = MODULE + ".weight"
KEY = "base_model.model." + MODULE
LORA_A = KEY + ".lora_A.weight"
LORA_B = KEY + ".lora_B.weight"
OUT, IN, RANK = 8, 8, 2


def base_tensors(seed=1, shape=(OUT, IN), dtype="F32", name=WEIGHT):
    count = shape[0] * shape[1]
    data = f32(ramp(count, seed)) if dtype == "F32" else struct.pack("<%di" % count, *range(count))
    return [(name, dtype, list(shape), data),
            ("model.norm.weight", "F32", [IN], f32([1.0] * IN))]


def base_files(prefix="base", **options):
    return {
        prefix + "/model.safetensors": safetensors(base_tensors(**options), {"format": "pt"}),
        prefix + "/config.json": pretty({"model_type": "llama", "hidden_size": IN, "torch_dtype": "float32"}),
    }


def lora_config(**changes):
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": RANK, "lora_alpha": 4, "lora_dropout": 0.0,
        "target_modules": ["q_proj"], "bias": "none", "fan_in_fan_out": False, "use_rslora": False,
        "base_model_name_or_path": "tiny-llama",
    }
    for key, value in changes.items():
        if value is DELETE:
            config.pop(key, None)
        else:
            config[key] = value
    return config


DELETE = object()


def lora_tensors(rank=RANK, out=OUT, inp=IN):
    return [(LORA_A, "F32", [rank, inp], f32(ramp(rank * inp, 3))),
            (LORA_B, "F32", [out, rank], f32(ramp(out * rank, 5)))]


def adapter_files(prefix="adapter", config=None, tensors=None, config_bytes=None):
    files = {prefix + "/adapter_config.json": config_bytes if config_bytes is not None
             else pretty(config if config is not None else lora_config())}
    if tensors is not False:
        files[prefix + "/adapter_model.safetensors"] = safetensors(
            tensors if tensors is not None else lora_tensors(), {"format": "pt"})
    return files


MERGE = ["merge", "{case}/base", "{case}/adapter", "--output", "{output}"]

# ----------------------------------------------------------------------------------------------------------------
# peftkit adapter files (spec/adapter-format.md)

def crc_hex(data):
    return "%08x" % (zlib.crc32(data) & 0xFFFFFFFF)


def fingerprint(base):
    """v1 fingerprint of the adapted weight in `base` (list of base tensors)."""
    name, dtype, shape, data = [t for t in base if t[0] == WEIGHT][0]
    text = "%d:%s %s [%s] %s\n" % (len(name.encode()), name, dtype, ",".join(map(str, shape)), crc_hex(data))
    return "v1:" + crc_hex(text.encode())


def peftkit_file(tensors=None, corrupt=None, **metadata_changes):
    tensors = tensors if tensors is not None else lora_tensors()
    config = lora_config()
    module = {"kind": "linear", "rank": RANK, "alpha": 4.0, "scaling": 2.0, "fan_in_fan_out": False,
              "tensors": {"lora_A.weight": LORA_A, "lora_B.weight": LORA_B}}
    metadata = {
        "format": "pt",
        "peftkit.format": "peftkit-adapter",
        "peftkit.version": "1.0",
        "peftkit.method": "lora",
        "peftkit.variant": "default",
        "peftkit.source_format": "peft-safetensors",
        "peftkit.base_model": "tiny-llama",
        "peftkit.modules": st_json({MODULE: module}),
        "peftkit.carried": "{}",
        "peftkit.crc32": st_json({t[0]: crc_hex(t[3]) for t in sorted(tensors)}),
        "peftkit.peft_config": st_json(config),
    }
    for key, value in metadata_changes.items():
        key = key.replace("__", ".")
        if value is DELETE:
            metadata.pop(key, None)
        else:
            metadata[key] = value
    if corrupt is not None:
        # Flip one bit of one tensor after its CRC was recorded.
        tensors = [(n, d, s, bytes([b ^ 0x01 if i == 0 and n == corrupt else b for i, b in enumerate(data)]))
                   for n, d, s, data in tensors]
    return safetensors(tensors, metadata)


PEFTKIT_MERGE = ["merge", "{case}/base", "{case}/adapter.safetensors", "--output", "{output}"]

# ----------------------------------------------------------------------------------------------------------------
# Legacy adapter_model.bin: ZIP archives and pickles written by hand

class Pickle:
    """Protocol-2 pickle opcodes, in torch.save's layout for state dicts, plus whatever a hostile file holds."""

    def __init__(self, protocol=2):
        self.b = bytearray([0x80, protocol])

    def raw(self, *values):
        self.b += bytes(values)
        return self

    def data(self, data):
        self.b += data
        return self

    def mark(self): return self.raw(0x28)
    def tuple(self): return self.raw(0x74)
    def tuple1(self): return self.raw(0x85)
    def empty_tuple(self): return self.raw(0x29)
    def reduce(self): return self.raw(0x52)
    def setitems(self): return self.raw(0x75)
    def stop(self): return self.raw(0x2E)
    def pop(self): return self.raw(0x30)
    def binput(self, index): return self.raw(0x71, index)

    def glob(self, module, name):
        self.b += b"c" + module.encode() + b"\n" + name.encode() + b"\n"
        return self

    def string(self, text):
        data = text.encode()
        self.b += b"X" + struct.pack("<I", len(data)) + data
        return self

    def int(self, value):
        if 0 <= value <= 255:
            self.raw(0x4B, value)
        elif -2**31 <= value < 2**31:
            self.b += b"J" + struct.pack("<i", value)
        else:
            self.b += b"\x8a\x08" + struct.pack("<q", value)
        return self

    def ints(self, values):
        self.mark()
        for v in values:
            self.int(v)
        return self.tuple()

    def storage_id(self, key, count, storage_type="FloatStorage"):
        return (self.mark().string("storage").glob("torch", storage_type).string(key).string("cpu").int(count)
                .tuple().raw(0x51))  # BINPERSID

    def tensor(self, key, count, shape, stride, offset=0, storage_type="FloatStorage"):
        self.glob("torch._utils", "_rebuild_tensor_v2").mark()
        self.storage_id(key, count, storage_type)
        self.int(offset).ints(shape).ints(stride).raw(0x89)  # NEWFALSE
        self.glob("collections", "OrderedDict").empty_tuple().reduce()
        return self.tuple().reduce()

    def dict_start(self):
        return self.glob("collections", "OrderedDict").empty_tuple().reduce().binput(0).mark()

    def dict_end(self):
        return self.setitems().stop()

    def bytes(self):
        return bytes(self.b)


def lora_state_dict_pickle(payload=None):
    """The state dict torch.save writes for the LoRA adapter, optionally preceded by a payload (a callable applied
    and its result popped, which a real unpickler would run before building the dict)."""
    p = Pickle()
    if payload is not None:
        payload(p)
        p.pop()
    p.dict_start()
    p.string(LORA_A).tensor("0", RANK * IN, [RANK, IN], [IN, 1])
    p.string(LORA_B).tensor("1", OUT * RANK, [OUT, RANK], [RANK, 1])
    return p.dict_end().bytes()


class Zip:
    """ZIP archives of stored entries, with knobs to break them."""

    def __init__(self):
        self.entries = []

    def add(self, name, data, method=0, flags=0, crc=None, compress=False, size=None):
        stored = data
        if compress:
            deflate = zlib.compressobj(9, zlib.DEFLATED, -15)
            stored = deflate.compress(data) + deflate.flush()
            method = 8
        self.entries.append(dict(name=name.encode(), data=data, stored=stored, method=method, flags=flags,
                                 crc=zlib.crc32(data) & 0xFFFFFFFF if crc is None else crc,
                                 size=size))
        return self

    def build(self, entry_count=None):
        out = bytearray()
        offsets = []
        for e in self.entries:
            offsets.append(len(out))
            size = len(e["data"]) if e["size"] is None else e["size"]
            out += struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, e["flags"], e["method"], 0, 0x21, e["crc"],
                               len(e["stored"]) if e["size"] is None else e["size"], size, len(e["name"]), 0)
            out += e["name"] + e["stored"]
        directory = len(out)
        for e, offset in zip(self.entries, offsets):
            size = len(e["data"]) if e["size"] is None else e["size"]
            out += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, e["flags"], e["method"], 0, 0x21, e["crc"],
                               len(e["stored"]) if e["size"] is None else e["size"], size, len(e["name"]),
                               0, 0, 0, 0, 0, offset)
            out += e["name"]
        count = len(self.entries) if entry_count is None else entry_count
        out += struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, count, count, len(out) - directory, directory, 0)
        return bytes(out)


def torch_zip(pickle_bytes, root="adapter_model", storages=None, byteorder=b"little"):
    z = Zip()
    z.add(root + "/data.pkl", pickle_bytes)
    if byteorder is not None:
        z.add(root + "/byteorder", byteorder)
    if storages is None:
        storages = [("0", f32(ramp(RANK * IN, 3))), ("1", f32(ramp(OUT * RANK, 5)))]
    for key, data in storages:
        z.add(root + "/data/" + key, data)
    return z


def legacy_files(bin_bytes, prefix="adapter"):
    return {prefix + "/adapter_config.json": pretty(lora_config()), prefix + "/adapter_model.bin": bin_bytes}


CONVERT = ["convert", "{case}/adapter", "--to", "peftkit", "--output", "{output}"]

# ----------------------------------------------------------------------------------------------------------------
# The cases

CASES = []
CONTROLS = []


def case(slug, category, description, files, command, exit, fragment, marker=None):
    CASES.append(dict(slug=slug, category=category, description=description, files=files, command=command,
                      exit=exit, stderr_contains=fragment, marker=marker, rule=RULES.get(slug)))


# The SafeTensorsError rule (its case name) each safetensors and index case breaks. CorpusTests opens these inputs
# in-process too and checks the rule, and that together they cover every validation rule of the reader.
RULES = {
    "file-too-small": "fileTooSmall",
    "header-length-zero": "invalidJSON",
    "header-length-over-limit": "headerTooLarge",
    "header-length-u64-max": "headerTooLarge",
    "header-length-i64-min": "headerTooLarge",
    "header-past-end": "headerPastEnd",
    "invalid-utf8": "headerNotUTF8",
    "overlong-utf8": "headerNotUTF8",
    "byte-order-mark": "invalidJSON",
    "lone-surrogate": "invalidJSON",
    "lone-low-surrogate": "invalidJSON",
    "raw-control-character": "invalidJSON",
    "not-an-object": "headerNotObject",
    "header-is-a-string": "headerNotObject",
    "block-comment": "invalidJSON",
    "line-comment": "invalidJSON",
    "trailing-comma-object": "invalidJSON",
    "trailing-comma-array": "invalidJSON",
    "nul-in-header": "invalidJSON",
    "single-quotes": "invalidJSON",
    "nan-literal": "invalidJSON",
    "truncated-json": "invalidJSON",
    "deep-nesting": "invalidJSON",
    "duplicate-key": "duplicateKey",
    "duplicate-key-escaped": "duplicateKey",
    "duplicate-metadata-key": "duplicateKey",
    "metadata-value-not-string": "invalidMetadata",
    "metadata-not-object": "invalidMetadata",
    "entry-not-object": "invalidEntry",
    "missing-dtype": "invalidEntry",
    "unexpected-field": "invalidEntry",
    "unknown-dtype": "unknownDType",
    "lowercase-dtype": "unknownDType",
    "negative-dimension": "invalidShape",
    "float-dimension": "invalidShape",
    "exponent-dimension": "invalidShape",
    "string-dimension": "invalidShape",
    "shape-not-array": "invalidShape",
    "dimension-beyond-64-bits": "invalidJSON",
    "element-count-overflow": "sizeOverflow",
    "bit-count-overflow": "sizeOverflow",
    "shape-product-wraps-to-zero": "sizeOverflow",
    "shape-product-wraps-small": "sizeOverflow",
    "partial-byte": "partialByte",
    "three-offsets": "invalidOffsets",
    "one-offset": "invalidOffsets",
    "float-offset": "invalidOffsets",
    "negative-offset": "invalidOffsets",
    "end-before-begin": "invalidOffsets",
    "byte-length-mismatch": "byteLengthMismatch",
    "offset-near-2-63": "dataPastEnd",
    "hole-at-start": "dataHole",
    "hole-between": "dataHole",
    "overlap": "dataOverlap",
    "same-bytes-twice": "dataOverlap",
    "trailing-bytes": "trailingBytes",
    "missing-bytes": "dataPastEnd",
    "no-tensors-but-data": "trailingBytes",
    "escape-sequence-in-name": "byteLengthMismatch",
    "index-parent-path": "shardNameNotPlain",
    "index-absolute-path": "shardNameNotPlain",
    "index-dot-dot": "shardNameNotPlain",
    "index-missing-shard": "io",
    "index-wrong-shard": "tensorNotInNamedShard",
    "index-unlisted-tensor": "tensorMissingFromIndex",
    "index-duplicate-tensor": "duplicateTensor",
    "index-not-strict-json": "invalidJSON",
    "index-no-weight-map": "invalidIndex",
    "index-shard-not-string": "invalidIndex",
    "index-two-index-files": "noCheckpoint",
    "merge-base-shard-malformed": "dataOverlap",
}


def control(slug, description, files, command):
    CONTROLS.append(dict(slug=slug, category="control", description=description, files=files, command=command,
                         exit=0, stderr_contains=None, marker=None))


INSPECT_FILE = ["inspect", "{case}/model.safetensors"]


def st_case(slug, description, content, fragment, exit=2):
    case(slug, "safetensors", description, {"model.safetensors": content}, INSPECT_FILE, exit, fragment)


def safetensors_cases():
    a = entry("a")
    # Framing
    st_case("file-too-small", "3 bytes: not even the 8-byte header length", b"\x01\x02\x03",
            "too small for a safetensors file")
    st_case("header-length-zero", "header length 0: an empty header is not a JSON object",
            raw_safetensors(b""), "header is not strict JSON")
    st_case("header-length-over-limit", "header length 100000001, one over the limit, and nothing behind it",
            raw_safetensors("{}", length=100_000_001), "header length 100000001 exceeds the limit of 100000000 bytes")
    st_case("header-length-u64-max", "header length 2^64-1: 8 + N overflows a naive addition",
            raw_safetensors("{}", length=2**64 - 1), "header length 18446744073709551615 exceeds the limit")
    st_case("header-length-i64-min", "header length 2^63: negative when read as a signed integer",
            raw_safetensors("{}", length=2**63), "header length 9223372036854775808 exceeds the limit")
    st_case("header-past-end", "header length 64 in a 10-byte file",
            raw_safetensors("{}", length=64), "header length 64 runs past the end of the 10-byte file")
    # Text
    st_case("invalid-utf8", "a 0xFF byte inside a tensor name", raw_safetensors(b'{"\xff":1}'),
            "header is not valid UTF-8")
    st_case("overlong-utf8", "'/' encoded as the overlong pair C0 AF", raw_safetensors(b'{"a\xc0\xafb":1}'),
            "header is not valid UTF-8")
    st_case("byte-order-mark", "a UTF-8 byte order mark before the object", raw_safetensors(b"\xef\xbb\xbf{}"),
            "header is not strict JSON")
    st_case("lone-surrogate", "a tensor name with the escaped lone high surrogate \\ud800",
            raw_safetensors("{%s}" % entry("a\\ud800"), 8), "header is not strict JSON")
    st_case("lone-low-surrogate", "a tensor name with the escaped lone low surrogate \\udc00",
            raw_safetensors("{%s}" % entry("\\udc00a"), 8), "header is not strict JSON")
    st_case("raw-control-character", "a raw tab inside a tensor name",
            raw_safetensors("{%s}" % entry("a\tb"), 8), "header is not strict JSON")
    # JSON syntax
    st_case("not-an-object", "the header is a JSON array", raw_safetensors("[1,2]"), "header is not a JSON object")
    st_case("header-is-a-string", "the header is a JSON string", raw_safetensors('"model"'),
            "header is not a JSON object")
    st_case("block-comment", "a /* comment */ inside the header", raw_safetensors("{/* c */}"),
            "header is not strict JSON")
    st_case("line-comment", "a // comment inside the header", raw_safetensors('{"__metadata__":{} // c\n}'),
            "header is not strict JSON")
    st_case("trailing-comma-object", "a trailing comma after the last tensor", raw_safetensors("{%s,}" % a, 8),
            "header is not strict JSON")
    st_case("trailing-comma-array", "a trailing comma inside a shape",
            raw_safetensors("{%s}" % entry("a", shape="[2,]"), 8), "header is not strict JSON")
    st_case("nul-in-header", "a NUL byte after the object", raw_safetensors(b"{} \x00 "), "header is not strict JSON")
    st_case("single-quotes", "single-quoted keys", raw_safetensors("{'a':{}}"), "header is not strict JSON")
    st_case("nan-literal", "NaN in the metadata", raw_safetensors('{"__metadata__":{"x":NaN}}'),
            "header is not strict JSON")
    st_case("truncated-json", "the header stops in the middle of the object", raw_safetensors("{%s" % a, 8),
            "header is not strict JSON")
    st_case("deep-nesting", "50000 nested arrays in the metadata: a recursive parser runs out of stack",
            raw_safetensors('{"__metadata__":' + "[" * 50000 + "]" * 50000 + "}"), "nesting deeper than")
    st_case("duplicate-key", "the same tensor name twice",
            raw_safetensors("{%s,%s}" % (a, entry("a", offsets="[8,16]")), 16), "duplicate key 'a'")
    st_case("duplicate-key-escaped", "the same tensor name twice, once spelled \\u0061",
            raw_safetensors("{%s,%s}" % (a, entry("\\u0061", offsets="[8,16]")), 16), "duplicate key 'a'")
    st_case("duplicate-metadata-key", "the metadata key 'format' twice",
            raw_safetensors('{"__metadata__":{"format":"pt","format":"np"}}'), "duplicate key 'format'")
    # Metadata
    st_case("metadata-value-not-string", "a metadata value that is a number",
            raw_safetensors('{"__metadata__":{"format":1}}'), "invalid __metadata__: value of 'format' is an integer")
    st_case("metadata-not-object", "__metadata__ is a string", raw_safetensors('{"__metadata__":"pt"}'),
            "invalid __metadata__: expected an object of strings")
    # Entries
    st_case("entry-not-object", "a tensor entry that is an array", raw_safetensors('{"a":[1]}'),
            "tensor 'a': entry is an array, not an object")
    st_case("missing-dtype", "a tensor without dtype",
            raw_safetensors('{"a":{"shape":[2],"data_offsets":[0,8]}}', 8), "missing field 'dtype'")
    st_case("unexpected-field", "a tensor entry with an extra field",
            raw_safetensors('{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8],"x":1}}', 8),
            "unexpected field 'x'")
    st_case("unknown-dtype", "dtype F48", raw_safetensors("{%s}" % entry("a", "F48"), 8), "unknown dtype 'F48'")
    st_case("lowercase-dtype", "dtype f32 (the names are upper case)", raw_safetensors("{%s}" % entry("a", "f32"), 8),
            "unknown dtype 'f32'")
    # Shapes
    st_case("negative-dimension", "shape [-2]", raw_safetensors("{%s}" % entry("a", shape="[-2]"), 8),
            "invalid shape: negative dimension -2")
    st_case("float-dimension", "shape [2.0]", raw_safetensors("{%s}" % entry("a", shape="[2.0]"), 8),
            "invalid shape: dimension 2.0 is not an integer")
    st_case("exponent-dimension", "shape [2e0]", raw_safetensors("{%s}" % entry("a", shape="[2e0]"), 8),
            "invalid shape: dimension 2e0 is not an integer")
    st_case("string-dimension", 'shape ["2"]', raw_safetensors("{%s}" % entry("a", shape='["2"]'), 8),
            "is not an integer")
    st_case("shape-not-array", "shape 2", raw_safetensors("{%s}" % entry("a", shape="2"), 8),
            "invalid shape: an integer, not an array")
    st_case("dimension-beyond-64-bits", "shape [18446744073709551616]",
            raw_safetensors("{%s}" % entry("a", shape="[18446744073709551616]"), 8), "header is not strict JSON")
    st_case("element-count-overflow", "shape [2^32, 2^32]: 2^64 elements",
            raw_safetensors("{%s}" % entry("a", shape="[4294967296,4294967296]"), 8), "overflows 64 bits")
    st_case("bit-count-overflow", "F64 shape [2^60]: the element count fits, the bit count does not",
            raw_safetensors("{%s}" % entry("a", "F64", "[1152921504606846976]"), 8), "overflows 64 bits")
    st_case("shape-product-wraps-to-zero", "U8 shape [2^32, 2^32] with offsets [0,0]: the product wraps to 0, "
            "which a reader multiplying without checks takes for an empty tensor",
            raw_safetensors("{%s}" % entry("a", "U8", "[4294967296,4294967296]", "[0,0]")), "overflows 64 bits")
    st_case("shape-product-wraps-small", "U8 shape [2^32, 2^32, 4]: wraps to a small number",
            raw_safetensors("{%s}" % entry("a", "U8", "[4294967296,4294967296,4]"), 8), "overflows 64 bits")
    st_case("partial-byte", "three F4 elements: 12 bits",
            raw_safetensors("{%s}" % entry("a", "F4", "[3]", "[0,2]"), 2), "12 bits is not a whole number of bytes")
    # Offsets
    st_case("three-offsets", "data_offsets with 3 elements",
            raw_safetensors("{%s}" % entry("a", offsets="[0,8,8]"), 8), "expected exactly two integers")
    st_case("one-offset", "data_offsets with 1 element", raw_safetensors("{%s}" % entry("a", offsets="[0]"), 8),
            "expected exactly two integers")
    st_case("float-offset", "data_offsets [0, 8.0]", raw_safetensors("{%s}" % entry("a", offsets="[0,8.0]"), 8),
            "begin and end must be integers")
    st_case("negative-offset", "data_offsets [-8, 0]", raw_safetensors("{%s}" % entry("a", offsets="[-8,0]"), 8),
            "negative offset")
    st_case("end-before-begin", "data_offsets [8, 0]",
            raw_safetensors("{%s}" % entry("a", shape="[0]", offsets="[8,0]"), 8), "end 0 is before begin 8")
    st_case("byte-length-mismatch", "F32 [3] in 8 bytes", raw_safetensors("{%s}" % entry("a", shape="[3]"), 8),
            "data_offsets span 8 bytes but dtype and shape need 12")
    st_case("offset-near-2-63", "7 bytes at offset 2^63-8",
            raw_safetensors("{%s}" % entry("a", "U8", "[7]", "[9223372036854775800,9223372036854775807]"), 8),
            "past the 8-byte data buffer")
    # Layout of the data buffer
    st_case("hole-at-start", "the only tensor starts at byte 4",
            raw_safetensors("{%s}" % entry("a", offsets="[4,12]"), 12), "unused bytes 0..<4")
    st_case("hole-between", "4 unused bytes between two tensors",
            raw_safetensors("{%s,%s}" % (a, entry("b", offsets="[12,20]")), 20), "unused bytes 8..<12")
    st_case("overlap", "two tensors sharing 4 bytes",
            raw_safetensors("{%s,%s}" % (a, entry("b", offsets="[4,12]")), 12), "overlaps tensor")
    st_case("same-bytes-twice", "two tensors on exactly the same bytes",
            raw_safetensors("{%s,%s}" % (a, entry("b")), 8), "overlaps tensor")
    st_case("trailing-bytes", "4 bytes after the last tensor", raw_safetensors("{%s}" % a, 12),
            "4 trailing bytes after the last tensor")
    st_case("missing-bytes", "the file ends 4 bytes into the tensor", raw_safetensors("{%s}" % a, 4),
            "missing bytes")
    st_case("no-tensors-but-data", "an empty header followed by 4 bytes", raw_safetensors("{}", 4),
            "4 trailing bytes")
    st_case("escape-sequence-in-name", "a tensor name holding a terminal escape sequence, in a file with another "
            "defect: the message must show it escaped",
            raw_safetensors("{%s}" % entry("\\u001b[2Jlayer", shape="[3]"), 8), "tensor '\\u{1b}[2Jlayer'")


def index_cases():
    good = safetensors([("a", "F32", [2], f32([1, 2]))], {"format": "pt"})
    good_b = safetensors([("b", "F32", [2], f32([3, 4]))], {"format": "pt"})
    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"

    def folder(weight_map, shards=None, extra=None, index=None):
        files = {"model/" + name: data for name, data in (shards or {s1: good, s2: good_b}).items()}
        files["model/model.safetensors.index.json"] = index if index is not None else pretty(
            {"metadata": {"total_size": 16}, "weight_map": weight_map})
        files.update(extra or {})
        return files

    inspect = ["inspect", "{case}/model"]
    merge = ["merge", "{case}/model", "{case}/adapter", "--output", "{output}"]
    case("index-parent-path", "index", "a shard named ../outside.safetensors; a valid file is waiting there",
         folder({"a": s1, "b": "../outside.safetensors"}, extra={"outside.safetensors": good_b}), inspect, 2,
         "shard name '../outside.safetensors' is not a plain file name")
    case("index-absolute-path", "index", "a shard named /etc/passwd",
         folder({"a": s1, "b": "/etc/passwd"}), inspect, 2, "shard name '/etc/passwd' is not a plain file name")
    case("index-dot-dot", "index", "a shard named ..", folder({"a": s1, "b": ".."}), inspect, 2,
         "shard name '..' is not a plain file name")
    case("index-missing-shard", "index", "the index names a shard that is not in the folder",
         folder({"a": s1, "b": s2}, shards={s1: good}), inspect, 5, "model-00002-of-00002.safetensors: open failed")
    case("index-wrong-shard", "index", "the index maps tensor b to the shard that holds a",
         folder({"a": s1, "b": s1}), inspect, 2, "tensor 'b' is mapped to shard model-00001-of-00002.safetensors "
         "but that shard does not contain it")
    case("index-unlisted-tensor", "index", "a shard holds a tensor the index does not list",
         folder({"a": s1}, shards={s1: safetensors([("a", "F32", [2], f32([1, 2])), ("z", "F32", [1], f32([0]))])}),
         inspect, 2, "tensor 'z' in shard model-00001-of-00002.safetensors is not listed")
    case("index-duplicate-tensor", "index", "the second shard holds a tensor named a too",
         folder({"a": s1, "b": s2}, shards={s1: good, s2: safetensors([("a", "F32", [2], f32([5, 6])),
                                                                      ("b", "F32", [2], f32([3, 4]))])}),
         inspect, 2, "tensor 'a' appears more than once")
    case("index-not-strict-json", "index", "the index has a trailing comma",
         folder(None, index=b'{"metadata":{},"weight_map":{"a":"%s",}}' % s1.encode()), inspect, 2,
         "model.safetensors.index.json: header is not strict JSON")
    case("index-no-weight-map", "index", "the index has no weight_map",
         folder(None, index=b'{"metadata":{"total_size":16}}'), inspect, 2, "missing 'weight_map' object")
    case("index-shard-not-string", "index", "a weight_map value that is a number",
         folder(None, index=b'{"weight_map":{"a":1}}'), inspect, 2, "shard of 'a' is an integer, not a string")
    case("index-two-index-files", "index", "two index files in one folder",
         folder({"a": s1, "b": s2}, extra={"model/pytorch_model.safetensors.index.json":
                                           pretty({"weight_map": {"a": s1}})}), inspect, 2, "several index files")
    bad_shard = raw_safetensors("{%s,%s}" % (entry("b"), entry("c", offsets="[4,12]")), 12)
    files = folder({"a": s1, "b": s2, "c": s2}, shards={s1: good, s2: bad_shard})
    files.update(adapter_files())
    case("merge-base-shard-malformed", "index", "merge into a sharded base whose second shard has overlapping "
         "tensors: refused before anything is written", files, merge, 2, "overlaps tensor")


def adapter_cases():
    def merge_case(slug, description, exit, fragment, **adapter):
        files = base_files()
        files.update(adapter_files(**adapter))
        case(slug, "adapter-config", description, files, MERGE, exit, fragment)

    merge_case("rank-mismatch", "config r=4, tensors of rank 2", 2, "lora_A has 2 rows but the module's r is 4",
               config=lora_config(r=4))
    merge_case("rank-pattern-mismatch", "rank_pattern gives q_proj r=8, tensors of rank 2", 2,
               "lora_A has 2 rows but the module's r is 8", config=lora_config(rank_pattern={"q_proj": 8}))
    merge_case("rank-a-b-disagree", "lora_A of rank 2, lora_B of rank 3", 2,
               "lora_B has 3 columns but the module's r is 2",
               tensors=[lora_tensors()[0], (LORA_B, "F32", [OUT, 3], f32(ramp(OUT * 3)))])
    merge_case("r-not-integer", "r is 2.5", 2, "field 'r' is 2.5; expected a positive integer",
               config=lora_config(r=2.5))
    merge_case("r-integral-float", "r is 2.0 (a float, even if integral)", 2,
               "field 'r' is 2.0; expected a positive integer", config=lora_config(r=2.0))
    merge_case("r-string", 'r is "2"', 2, "field 'r' is the string \"2\"; expected a positive integer",
               config=lora_config(r="2"))
    merge_case("r-zero", "r is 0", 2, "field 'r' is 0; expected a positive integer", config=lora_config(r=0))
    merge_case("r-huge", "r is 2^40", 2, "field 'r' is 1099511627776; expected a positive integer",
               config=lora_config(r=2**40))
    merge_case("r-missing", "no r at all", 2, "missing required field 'r'", config=lora_config(r=DELETE))
    merge_case("alpha-string", 'lora_alpha is "4"', 2, "field 'lora_alpha' is the string \"4\"; expected a number",
               config=lora_config(lora_alpha="4"))
    merge_case("unknown-peft-type", "peft_type PWNED", 4, "peft_type 'PWNED'", config=lora_config(peft_type="PWNED"))
    merge_case("lowercase-peft-type", "peft_type lora (PEFT writes LORA)", 4, "peft_type 'lora'",
               config=lora_config(peft_type="lora"))
    merge_case("missing-peft-type", "no peft_type", 2, "missing or non-string field 'peft_type'",
               config=lora_config(peft_type=DELETE))
    merge_case("config-not-object", "adapter_config.json is a JSON array", 2, "adapter config is an array",
               config_bytes=b"[1,2]\n")
    merge_case("config-duplicate-key", "adapter_config.json gives r twice", 2, "duplicate key 'r'",
               config_bytes=b'{"peft_type":"LORA","r":2,"r":64,"lora_alpha":4}')
    merge_case("config-trailing-comma", "adapter_config.json has a trailing comma", 2, "not strict JSON",
               config_bytes=b'{"peft_type":"LORA","r":2,"lora_alpha":4,}')
    merge_case("config-dora", "the config asks for DoRA but the adapter has no magnitude vectors", 2,
               "missing tensor 'lora_magnitude_vector'", config=lora_config(use_dora=True))
    merge_case("missing-tensor", "lora_B is missing", 2, "missing tensor 'lora_B.weight'",
               tensors=lora_tensors()[:1])
    merge_case("extra-tensor", "a lora_C tensor PEFT never writes", 2, "is not part of a LORA adapter",
               tensors=lora_tensors() + [(KEY + ".lora_C.weight", "F32", [2], f32([0, 0]))])
    merge_case("tensor-without-prefix", "a tensor name without base_model.model.", 2,
               "does not start with 'base_model.model.'",
               tensors=lora_tensors() + [(MODULE + ".lora_A.weight", "F32", [2], f32([0, 0]))])
    merge_case("integer-adapter-tensor", "lora_A stored as I32", 2, "adapter tensors must be floats",
               tensors=[(LORA_A, "I32", [RANK, IN], bytes(4 * RANK * IN)), lora_tensors()[1]])
    merge_case("lora-bias-missing", "lora_bias: true but no lora_B.bias", 2, "lora_B.bias is missing",
               config=lora_config(lora_bias=True))
    merge_case("no-tensors", "adapter_model.safetensors holds no tensor", 2, "the adapter has no tensors",
               tensors=[])
    merge_case("no-weights-file", "adapter_config.json alone", 5,
               "no adapter_model.safetensors or adapter_model.bin", tensors=False)
    merge_case("bone-block-shape", "a Bone block of shape [3, 8] for r=2", 2, "bone_block has shape [3, 8]",
               config={"peft_type": "BONE", "r": 2, "target_modules": ["q_proj"]},
               tensors=[(KEY + ".bone_block", "F32", [3, OUT], f32(ramp(3 * OUT)))])
    merge_case("nan-in-adapter", "a NaN in lora_B", 6, "merging would spread it",
               tensors=[lora_tensors()[0], (LORA_B, "F32", [OUT, RANK], f32([float("nan")] + ramp(OUT * RANK - 1)))])
    files = base_files()
    bad = raw_safetensors("{%s,%s}" % (entry(LORA_A, shape="[2,8]", offsets="[0,64]"),
                                       entry(LORA_B, shape="[8,2]", offsets="[60,124]")), 124)
    files.update(adapter_files(tensors=[]))
    files["adapter/adapter_model.safetensors"] = bad
    case("adapter-tensors-overlap", "adapter-config", "adapter_model.safetensors whose two tensors overlap",
         files, MERGE, 2, "overlaps tensor")


def base_mismatch_cases():
    def merge_case(slug, description, exit, fragment, base=None, adapter=None):
        files = base_files(**(base or {}))
        files.update(adapter_files(**(adapter or {})))
        case(slug, "base-mismatch", description, files, MERGE, exit, fragment)

    merge_case("base-shape-mismatch", "the base's q_proj is 8x6, the LoRA maps 8 -> 8 features", 3,
               "LoRA maps 8 → 8 features but the base weight has shape [8, 6]", base={"shape": (8, 6)})
    merge_case("base-missing-module", "the base has no q_proj", 3,
               "base has no tensor 'model.layers.0.self_attn.q_proj.weight'", base={"name": "model.other.weight"})
    merge_case("base-integer-weight", "the base's q_proj is I32", 3, "base dtype I32 cannot be merged into",
               base={"dtype": "I32"})
    files = {"base/model.safetensors": safetensors([(WEIGHT, "F32", [64], f32(ramp(64)))], {"format": "pt"})}
    files.update(adapter_files())
    case("base-vector-weight", "base-mismatch", "the base's q_proj weight is a vector of 64", files, MERGE, 3,
         "only matrices can be adapted")
    base = base_tensors(seed=1)
    files = {"base/model.safetensors": safetensors(base_tensors(seed=2), {"format": "pt"}),
             "adapter.safetensors": peftkit_file(**{"peftkit__base_fingerprint": fingerprint(base)})}
    case("fingerprint-mismatch", "base-mismatch", "a peftkit adapter fingerprinted against another base with the "
         "same shapes", files, PEFTKIT_MERGE, 3, "this base model's fingerprint is")
    files = base_files()
    files.update(adapter_files(config=lora_config(modules_to_save=["norm"]),
                               tensors=lora_tensors() + [("base_model.model.model.norm.weight", "F32", [4],
                                                          f32([1, 1, 1, 1]))]))
    case("modules-to-save-shape", "base-mismatch", "a modules_to_save tensor of another shape than the base's", files,
         MERGE, 3, "the adapter carries shape [4], the base has [8]")


def peftkit_cases():
    def merge_case(slug, description, exit, fragment, content):
        files = base_files()
        files["adapter.safetensors"] = content
        case(slug, "peftkit-format", description, files, PEFTKIT_MERGE, exit, fragment)

    merge_case("wrong-crc", "one bit of lora_B flipped after its CRC-32 was recorded", 2,
               "CRC-32 mismatch in 1 tensor(s): the file is corrupted", peftkit_file(corrupt=LORA_B))
    merge_case("unknown-major-version", "peftkit.version 2.0", 4, "peftkit format version 2.0 is not supported",
               peftkit_file(peftkit__version="2.0"))
    merge_case("malformed-version", "peftkit.version 1 (not MAJOR.MINOR)", 2,
               "'peftkit.version' is \"1\"; expected MAJOR.MINOR", peftkit_file(peftkit__version="1"))
    merge_case("leading-zero-version", "peftkit.version 01.0", 2, "'peftkit.version' is \"01.0\"",
               peftkit_file(peftkit__version="01.0"))
    merge_case("wrong-format-name", "peftkit.format is not peftkit-adapter", 2,
               "'peftkit.format' is \"safetensors\"", peftkit_file(peftkit__format="safetensors"))
    merge_case("crc-not-hex", "a CRC written in upper case", 2, "expected 8 lowercase hex digits",
               peftkit_file(peftkit__crc32=st_json({LORA_A: "DEADBEEF", LORA_B: "00000000"})))
    merge_case("crc-missing", "no CRC for lora_B", 2, "records no CRC for this tensor",
               peftkit_file(peftkit__crc32=st_json({LORA_A: crc_hex(lora_tensors()[0][3])})))
    merge_case("modules-disagree", "peftkit.modules records rank 3 where the config and tensors say 2", 2,
               "'rank' is 3 in the metadata but 2 from the PEFT config",
               peftkit_file(peftkit__modules=st_json({MODULE: {
                   "kind": "linear", "rank": 3, "alpha": 4.0, "scaling": 2.0, "fan_in_fan_out": False,
                   "tensors": {"lora_A.weight": LORA_A, "lora_B.weight": LORA_B}}})))
    merge_case("peft-config-not-json", "peftkit.peft_config is not JSON", 2, "'peftkit.peft_config' is not valid JSON",
               peftkit_file(peftkit__peft_config="{'peft_type': 'LORA'}"))
    merge_case("malformed-fingerprint", "peftkit.base_fingerprint v1:xyz", 2, "expected SCHEME:VALUE",
               peftkit_file(peftkit__base_fingerprint="v1:xyz"))
    merge_case("base-model-disagrees", "peftkit.base_model differs from the config's base_model_name_or_path", 2,
               "'peftkit.base_model' is \"other-model\"", peftkit_file(peftkit__base_model="other-model"))


def payload_call(module, name, argument):
    """`module.name(argument)`: GLOBAL, the argument, TUPLE1, REDUCE."""
    def write(p):
        p.glob(module, name)
        if isinstance(argument, list):
            p.mark()
            for item in argument:
                p.string(item)
            p.raw(0x6C)  # LIST
            p.tuple1()
        else:
            p.string(argument).tuple1()
        p.reduce()
    return write


def legacy_cases():
    def bin_case(slug, description, fragment, content, marker=None, exit=2):
        case(slug, "legacy-bin", description, legacy_files(content), CONVERT, exit, fragment, marker)

    def pickle_case(slug, description, fragment, pickle_bytes, marker=None):
        bin_case(slug, description, fragment, torch_zip(pickle_bytes).build(), marker)

    # Code execution attempts: each payload creates its marker when a real unpickler loads it.
    def marker(slug):
        return MARKER_PREFIX + slug

    for slug, module, name, argument, fragment in [
        ("pickle-os-system", "os", "system", "touch %s", "global 'os.system' is not allowed"),
        ("pickle-posix-system", "posix", "system", "touch %s", "global 'posix.system' is not allowed"),
        ("pickle-builtins-exec", "builtins", "exec", "open(%r, 'w').close()", "global 'builtins.exec' is not allowed"),
        ("pickle-builtins-eval", "builtins", "eval", "open(%r, 'w').close()", "global 'builtins.eval' is not allowed"),
        ("pickle-subprocess", "subprocess", "check_call", ["touch", "%s"],
         "global 'subprocess.check_call' is not allowed"),
        ("pickle-torch-load", "torch", "load", "%s", "global 'torch.load' is not allowed"),
    ]:
        path = marker(slug)
        if isinstance(argument, list):
            argument = [a.replace("%s", path) for a in argument]
        elif "%r" in argument:
            argument = argument % path
        else:
            argument = argument % path
        pickle_case(slug, "the pickle calls %s.%s before building the state dict" % (module, name), fragment,
                    lora_state_dict_pickle(payload_call(module, name, argument)),
                    None if module == "torch" else path)

    path = marker("pickle-stack-global")
    p = Pickle(4)
    p.raw(0x8C, 2).data(b"os").raw(0x8C, 6).data(b"system").raw(0x93)  # STACK_GLOBAL
    p.string("touch " + path).tuple1().reduce().pop()
    pickle_case("pickle-stack-global", "protocol 4: os.system through STACK_GLOBAL",
                "pickle opcode STACK_GLOBAL (0x93) at offset 14 is not allowed", p.stop().bytes(), path)

    path = marker("pickle-inst")
    p = Pickle().mark().string("touch " + path).data(b"ios\nsystem\n").pop()  # INST
    pickle_case("pickle-inst", "os.system through the INST opcode", "pickle opcode INST (0x69)", p.stop().bytes(),
                path)

    path = marker("pickle-obj")
    p = Pickle().mark().glob("os", "system").string("touch " + path).raw(0x6F).pop()  # OBJ
    pickle_case("pickle-obj", "os.system through the OBJ opcode",
                "global 'os.system' is not allowed", p.stop().bytes(), path)

    p = Pickle().glob("collections", "OrderedDict").empty_tuple().raw(0x81).pop()  # NEWOBJ
    pickle_case("pickle-newobj", "an allowed class instantiated through NEWOBJ, which calls cls.__new__",
                "pickle opcode NEWOBJ (0x81) at offset 28 is not allowed", p.stop().bytes())

    p = Pickle().raw(0x82, 1).pop()  # EXT1: an object from the copyreg extension registry
    pickle_case("pickle-ext1", "EXT1: an object from the copyreg extension registry",
                "pickle opcode EXT1 (0x82) at offset 2 is not allowed", p.stop().bytes())

    path = marker("pickle-in-storage-type")
    p = Pickle().dict_start().string(LORA_A).mark().string("storage")
    payload_call("os", "system", "touch " + path)(p)
    pickle_case("pickle-in-storage-type", "the storage-type slot of a tensor's persistent id holds os.system(...)",
                "global 'os.system' is not allowed", p.bytes(), path)

    # Sizes and lengths
    p = Pickle().raw(0x58).data(struct.pack("<I", 0xFFFFFFFF)).data(b"abc")
    pickle_case("pickle-string-length-huge", "BINUNICODE claims 4 GiB",
                "string length 4294967295 exceeds the limit of 1048576 bytes", p.bytes())
    p = Pickle().raw(0x58).data(struct.pack("<I", 1000)).data(b"abc")
    pickle_case("pickle-string-past-end", "BINUNICODE claims 1000 bytes, 3 remain",
                "string length 1000 exceeds the 3 bytes that remain", p.bytes())
    p = Pickle().raw(0x8A, 200).data(bytes(200)).pop()
    pickle_case("pickle-long1-huge", "LONG1 with a 200-byte integer", "integer of 200 bytes does not fit in 64 bits",
                p.stop().bytes())
    p = Pickle().dict_start().string(LORA_A)
    p.tensor("0", 2**60, [RANK, IN], [IN, 1])
    pickle_case("pickle-storage-count-huge", "a storage that claims 2^60 floats",
                "storage '0' should hold 1152921504606846976 elements of F32", p.dict_end().bytes())
    p = Pickle().dict_start().string(LORA_A)
    p.tensor("0", RANK * IN, [2**32, 2**32], [1, 1])
    pickle_case("pickle-shape-overflow", "a tensor of shape [2^32, 2^32]", "element count of shape", p.dict_end().bytes())
    p = Pickle().dict_start().string(LORA_A)
    p.tensor("0", RANK * IN, [RANK, IN], [IN, 1], offset=4)
    pickle_case("pickle-view-past-storage", "a view that starts 4 elements into a storage it fills exactly",
                "reach past storage '0'", p.dict_end().bytes())
    p = Pickle().dict_start().string(LORA_A)
    p.tensor("0", RANK * IN, [RANK, IN], [-IN, 1], offset=8)
    pickle_case("pickle-negative-stride", "a view with a negative stride", "negative stride -8 in dimension 0",
                p.dict_end().bytes())
    # Memo and stack
    pickle_case("pickle-missing-memo", "BINGET of a memo entry never stored", "memo entry 7 was never stored",
                Pickle().raw(0x68, 7).stop().bytes())
    pickle_case("pickle-missing-memo-long", "LONG_BINGET of memo entry 2^32-1",
                "memo entry 4294967295 was never stored", Pickle().raw(0x6A, 255, 255, 255, 255).stop().bytes())
    pickle_case("pickle-deep-marks", "5000 nested MARKs", "more than 1000 nested MARKs",
                Pickle().raw(*([0x28] * 5000)).bytes())
    pickle_case("pickle-no-stop", "the state dict without STOP", "without STOP: truncated",
                lora_state_dict_pickle()[:-1])
    pickle_case("pickle-after-stop", "bytes after STOP", "4 bytes follow STOP",
                lora_state_dict_pickle() + b"\x00\x00\x00\x00")
    pickle_case("pickle-top-level-list", "the pickle holds a list, not a dict", "not a dict of tensors",
                Pickle().raw(0x5D).stop().bytes())
    # The ZIP container
    storages = [("0", f32(ramp(RANK * IN, 3))), ("1", f32(ramp(OUT * RANK, 5)))]
    good = lora_state_dict_pickle()
    z = torch_zip(good)
    z.add("other/data.pkl", good)
    bin_case("zip-two-roots", "a second top-level folder", "the archive has 2 top-level folders", z.build())
    z = Zip().add("adapter_model/data.pkl", good, compress=True).add("adapter_model/byteorder", b"little")
    for key, data in storages:
        z.add("adapter_model/data/" + key, data)
    bin_case("zip-compressed-entry", "data.pkl is deflated", "entry 'adapter_model/data.pkl' is compressed with method 8",
             z.build())
    z = torch_zip(good)
    z.add("adapter_model/../../evil", b"x")
    bin_case("zip-parent-entry", "an entry named adapter_model/../../evil", "contains '..'", z.build())
    z = torch_zip(good)
    z.add("/etc/cron.d/evil", b"x")
    bin_case("zip-absolute-entry", "an entry named /etc/cron.d/evil", "is an absolute path", z.build())
    z = Zip().add("adapter_model/data.pkl", good, flags=1)
    bin_case("zip-encrypted-entry", "data.pkl flagged as encrypted", "is encrypted", z.build())
    z = Zip().add("adapter_model/data.pkl", good, crc=0x12345678)
    for key, data in storages:
        z.add("adapter_model/data/" + key, data)
    bin_case("zip-crc-mismatch", "data.pkl with a wrong CRC", "CRC mismatch in entry 'adapter_model/data.pkl'",
             z.build())
    z = Zip().add("adapter_model/data.pkl", good, size=0x7FFFFFFF)
    bin_case("zip-entry-size-huge", "data.pkl claims 2 GiB in a small file", "claims 2147483647 bytes", z.build())
    bin_case("zip-entry-count-wrong", "the end record claims 60000 entries, the directory holds 4", "cannot hold the 60000 entries",
             torch_zip(good).build(entry_count=60000))
    bin_case("zip-truncated", "the archive cut in half", "no end of central directory record",
             torch_zip(good).build()[:300])
    bin_case("zip-not-a-zip", "a text file", "not a ZIP archive", b"this is not a checkpoint\n" * 4)
    legacy = (Pickle().raw(0x8A, 10).data(b"\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19").stop().bytes()
              + Pickle().raw(0x4D).data(struct.pack("<H", 1001)).stop().bytes()
              + Pickle().raw(0x7D).string("protocol_version").raw(0x4D).data(struct.pack("<H", 1001)).raw(0x73)
              .stop().bytes())
    bin_case("zip-torch-pre-1.6", "torch's pre-1.6 format: a bare pickle with its magic number",
             "pre-1.6 pickle format", legacy)
    z = Zip().add("adapter_model/byteorder", b"little")
    bin_case("zip-no-data-pkl", "no data.pkl", "no 'adapter_model/data.pkl' in the archive", z.build())
    bin_case("zip-big-endian", "byteorder says big", "only little-endian checkpoints are supported",
             torch_zip(good, byteorder=b"big").build())
    bin_case("zip-missing-storage", "storage 1 has no entry", "storage '1' has no entry",
             torch_zip(good, storages=storages[:1]).build())
    bin_case("zip-storage-size-mismatch", "storage 1 holds 4 bytes fewer than its persistent id says",
             "storage '1' should hold 16 elements of F32 but its entry has 60 bytes",
             torch_zip(good, storages=[storages[0], ("1", storages[1][1][:-4])]).build())


MLX_CONVERT = ["convert", "{case}/adapter", "--to", "peft", "--output", "{output}"]
MLX_KEY = MODULE


def mlx_files(config=None, tensors=None):
    """An mlx-lm LoRA adapter folder: lora_a = A^T (in, r), lora_b = B^T (r, out)."""
    config = config if config is not None else {
        "fine_tune_type": "lora", "num_layers": -1,
        "lora_parameters": {"rank": RANK, "scale": 2.0, "dropout": 0.0, "keys": [MODULE]}}
    tensors = tensors if tensors is not None else [
        (MLX_KEY + ".lora_a", "F32", [IN, RANK], f32(ramp(IN * RANK, 3))),
        (MLX_KEY + ".lora_b", "F32", [RANK, OUT], f32(ramp(RANK * OUT, 5)))]
    return {"adapter/adapter_config.json": pretty(config),
            "adapter/adapters.safetensors": safetensors(tensors, {"format": "mlx"})}


def mlx_cases():
    def mlx_case(slug, description, exit, fragment, **options):
        case(slug, "mlx", description, mlx_files(**options), MLX_CONVERT, exit, fragment)

    params = {"rank": RANK, "dropout": 0.0, "keys": [MODULE]}
    mlx_case("mlx-no-scale", "lora_parameters has no scale", 2,
             "'lora_parameters' needs a positive integer 'rank' and a finite number 'scale'",
             config={"fine_tune_type": "lora", "num_layers": -1, "lora_parameters": params})
    mlx_case("mlx-rank-zero", "lora_parameters gives rank 0", 2, "needs a positive integer 'rank'",
             config={"fine_tune_type": "lora", "lora_parameters": {**params, "rank": 0, "scale": 1.0}})
    mlx_case("mlx-full-fine-tune", "fine_tune_type full: whole weights, not an adapter", 4, "fine_tune_type 'full'",
             config={"fine_tune_type": "full", "lora_parameters": {**params, "scale": 1.0}})
    mlx_case("mlx-dora", "fine_tune_type dora without the magnitudes (<module>.m): inconsistent, named", 2,
             "missing tensor 'lora_magnitude_vector'",
             config={"fine_tune_type": "dora", "lora_parameters": {**params, "scale": 1.0}})
    mlx_case("mlx-foreign-tensor", "a tensor that is neither lora_a nor lora_b", 2, "not an mlx-lm LoRA tensor",
             tensors=[(MODULE + ".weight", "F32", [OUT, IN], f32(ramp(OUT * IN)))])
    mlx_case("mlx-vector-tensor", "lora_a is a vector", 2, "not an mlx-lm LoRA tensor",
             tensors=[(MLX_KEY + ".lora_a", "F32", [IN], f32(ramp(IN)))])
    mlx_case("mlx-missing-partner", "lora_a without its lora_b", 2, "missing tensor 'lora_B.weight'",
             tensors=[(MLX_KEY + ".lora_a", "F32", [IN, RANK], f32(ramp(IN * RANK)))])
    mlx_case("mlx-rank-mismatch", "config rank 2, lora_a of rank 3", 2, "lora_A has 3 rows but the module's r is 2",
             tensors=[(MLX_KEY + ".lora_a", "F32", [IN, 3], f32(ramp(IN * 3))),
                      (MLX_KEY + ".lora_b", "F32", [3, OUT], f32(ramp(3 * OUT)))])
def audit_cases():
    """diff and verify --merged read checkpoints through the strict reader: malformed inputs on either side are refused
    with that reader's message, before anything is compared."""
    good = safetensors(base_tensors(), {"format": "pt"})
    diff = ["diff", "{case}/a.safetensors", "{case}/b.safetensors"]
    case("diff-truncated-a", "audit", "diff with A cut short in its tensor data", {
        "a.safetensors": good[:-20], "b.safetensors": good}, diff, 2, "(missing bytes)")
    case("diff-header-past-end-b", "audit", "diff with B's header length beyond the file", {
        "a.safetensors": good, "b.safetensors": raw_safetensors("{}", length=4096)}, diff, 2, "runs past the end of the 10-byte file")
    case("diff-overlapping-tensors", "audit", "diff with two tensors of A sharing bytes", {
        "a.safetensors": raw_safetensors("{%s,%s}" % (entry("x"), entry("y", offsets="[4,12]")), 12),
        "b.safetensors": good}, diff, 2, "overlaps tensor")
    files = base_files()
    files.update(adapter_files())
    files["merged/model.safetensors"] = merged_file()[:-20]
    case("verify-merged-truncated", "audit", "verify --merged with the merged file cut short", files, VERIFY_MERGED, 2,
         "(missing bytes)")
    files = base_files(shape=(8, 6))
    files.update(adapter_files())
    files["merged/model.safetensors"] = merged_file()
    case("verify-merged-base-mismatch", "audit", "verify --merged against a base the adapter does not fit", files,
         VERIFY_MERGED, 3, "LoRA maps 8 → 8 features but the base weight has shape [8, 6]")


VERIFY_MERGED = ["verify", "--merged", "{case}/merged", "--base", "{case}/base", "{case}/adapter"]


def merged_file():
    """What merging the corpus LoRA into the corpus base gives: W + (alpha / r)·B·A, exact in Float32 (the ramp's
    values are multiples of 1/16, so every product and sum here is a short dyadic fraction)."""
    (name, dtype, shape, data), norm = base_tensors()
    w = list(struct.unpack("<%df" % (OUT * IN), data))
    a = ramp(RANK * IN, 3)
    b = ramp(OUT * RANK, 5)
    scale = 4 / RANK
    merged = [w[o * IN + i] + scale * sum(b[o * RANK + k] * a[k * IN + i] for k in range(RANK))
              for o in range(OUT) for i in range(IN)]
    return safetensors([(name, dtype, shape, f32(merged)), norm], {"format": "pt"})
def lycoris_cases():
    """LoHa and LoKr modules with a broken tensor of each role family (appended last so earlier cases keep their
    numbers)."""
    def merge_case(slug, description, exit, fragment, peft_type, tensors):
        category = "base-mismatch" if exit == 3 else "adapter-config"
        files = base_files()
        files.update(adapter_files(config={"peft_type": peft_type, "r": 2, "alpha": 2, "target_modules": ["q_proj"]},
                                   tensors=[(KEY + "." + role, "F32", shape, f32(ramp(shape[0] * shape[1] if len(shape) == 2
                                                                                      else 2 * 2 * 3 * 3)))
                                            for role, shape in tensors]))
        case(slug, category, description, files, MERGE, exit, fragment)

    merge_case("loha-missing-partner", "a LoHa module with hada_w1_a but no hada_w1_b", 2,
               "missing tensor 'hada_w1_b'", "LOHA",
               [("hada_w1_a", [OUT, 2]), ("hada_w2_a", [OUT, 2]), ("hada_w2_b", [2, IN])])
    merge_case("lokr-wrong-shape", "LoKr factors whose Kronecker product is 8x6 for an 8x8 weight", 3,
               "kron of w1 [2, 2] and w2 [4, 3] has shape [8, 6] but the base weight has shape [8, 8]", "LOKR",
               [("lokr_w1", [2, 2]), ("lokr_w2", [4, 3])])
    merge_case("lokr-convolution", "a LoKr module with the lokr_t2 core of a convolution", 4,
               "not supported yet: LoKr on convolutions", "LOKR",
               [("lokr_w1", [2, 2]), ("lokr_w2_a", [2, 2]), ("lokr_w2_b", [2, 2]), ("lokr_t2", [2, 2, 3, 3])])


def method_cases():
    """VeRA, AdaLoRA, PiSSA/OLoRA and LoRA's trainable tokens, one broken tensor role each (appended last so earlier
    cases keep their numbers)."""
    def merge_case(slug, description, exit, fragment, config, tensors):
        category = "base-mismatch" if exit == 3 else "adapter-config"
        files = base_files()
        files.update(adapter_files(config=config, tensors=[
            (name if name.startswith("base_model.") else KEY + "." + name, "F32", shape,
             f32(values if values is not None else ramp(shape[0] * (shape[1] if len(shape) == 2 else 1))))
            for name, shape, values in tensors]))
        case(slug, category, description, files, MERGE, exit, fragment)

    vera = {"peft_type": "VERA", "r": 2, "target_modules": ["q_proj"], "save_projection": True}
    projections = [("base_model.vera_A", [2, IN], None), ("base_model.vera_B", [OUT, 2], None)]
    lambdas = [("vera_lambda_b", [OUT], None), ("vera_lambda_d", [2], None)]
    merge_case("vera-missing-projection", "a VeRA adapter without its shared base_model.vera_B", 2,
               "missing shared tensor 'base_model.vera_B'", vera, projections[:1] + lambdas)
    merge_case("vera-unsaved-projections", "a VeRA adapter saved with save_projection=False", 4,
               "save_projection=True", dict(vera, save_projection=False), lambdas)
    merge_case("vera-missing-partner", "a VeRA module with vera_lambda_b but no vera_lambda_d", 2,
               "missing tensor 'vera_lambda_d'", vera, projections + lambdas[:1])
    merge_case("vera-wrong-shape", "vera_lambda_d of 3 entries for r=2", 2,
               "vera_lambda_d has shape [3], expected [2]", vera, projections + [lambdas[0], ("vera_lambda_d", [3], None)])
    merge_case("vera-non-finite-lambda", "an infinity in vera_lambda_b", 6, "merging would spread it", vera,
               projections + [("vera_lambda_b", [OUT], [float("inf")] + ramp(OUT - 1)), lambdas[1]])

    adalora = {"peft_type": "ADALORA", "init_r": 2, "target_r": 1, "lora_alpha": 4, "total_step": 10,
               "target_modules": ["q_proj"]}
    factors = [("lora_A", [2, IN], None), ("lora_E", [2, 1], None), ("lora_B", [OUT, 2], None)]
    merge_case("adalora-missing-partner", "an AdaLoRA module without lora_E", 2, "missing tensor 'lora_E'", adalora,
               [factors[0], factors[2]])
    merge_case("adalora-rank-pattern-mismatch", "rank_pattern keeps one of two triplets, the tensors hold two", 2,
               "rank_pattern keeps 1 of its 2 triplets",
               dict(adalora, rank_pattern={MODULE + ".lora_E": [False, True]}), factors)
    merge_case("adalora-non-finite-e", "a NaN in lora_E", 6, "merging would spread it", adalora,
               [factors[0], ("lora_E", [2, 1], [float("nan"), 1.0]), factors[2]])

    merge_case("pissa-randomized", "init_lora_weights pissa_niter_4 (a randomized SVD)", 4,
               "path_initial_model_for_weight_conversion", lora_config(init_lora_weights="pissa_niter_4"),
               [("lora_A.weight", [RANK, IN], None), ("lora_B.weight", [OUT, RANK], None)])
    merge_case("pissa-rank-above-weight", "PiSSA r=9 on an 8x8 weight", 4, "above the weight's smaller side 8",
               lora_config(r=9, init_lora_weights="pissa"), [("lora_A.weight", [9, IN], None), ("lora_B.weight", [OUT, 9], None)])
    merge_case("olora-missing-partner", "an OLoRA module without lora_B", 2, "missing tensor 'lora_B.weight'",
               lora_config(init_lora_weights="olora"), [("lora_A.weight", [RANK, IN], None)])

    tokens = "token_adapter.trainable_tokens_delta"
    merge_case("tokens-wrong-shape", "trainable_token_indices names 2 tokens, the delta holds 3 rows", 2,
               "trainable_tokens_delta has shape [3, 8]", lora_config(trainable_token_indices=[1, 2]), [(tokens, [3, IN], None)])
    merge_case("tokens-index-past-vocabulary", "a trainable token index past the weight's 8 rows", 3,
               "token index 9 is past the embedding's 8 rows", lora_config(trainable_token_indices={"q_proj": [1, 9]}),
               [(tokens, [2, IN], None)])
    merge_case("tokens-non-finite", "a NaN in trainable_tokens_delta", 6, "merging would spread it",
               lora_config(trainable_token_indices=[1, 2]), [(tokens, [2, IN], [float("nan")] + ramp(2 * IN - 1))])


M64 = (1 << 64) - 1


def content_hash(data):
    """spec/unmerge-record.md's ContentHash, written from the spec (the Swift one is peftkit's)."""
    def split_mix(seed, count):
        out = []
        for _ in range(count):
            seed = (seed + 0x9E3779B97F4A7C15) & M64
            z = seed
            z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
            z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
            out.append(z ^ (z >> 31))
        return out
    words = split_mix(0x706566746B697421, 24)
    scramble_key = split_mix(0x736372616D626C65, 8)
    lanes = [(j * 0x9E3779B97F4A7C15) & M64 for j in range(8)]

    def scramble():
        for j in range(8):
            lanes[j] = (((lanes[j] ^ (lanes[j] >> 47)) ^ scramble_key[j]) * 0x9E3779B1) & M64
    padded = data + bytes(-len(data) % 64)
    for stripe in range(len(padded) // 64):
        position = stripe % 16
        for j, word in enumerate(struct.unpack_from("<8Q", padded, stripe * 64)):
            keyed = word ^ words[position + j]
            lanes[j] = (lanes[j] + word + (keyed & 0xFFFFFFFF) * (keyed >> 32)) & M64
        if position == 15:
            scramble()
    scramble()
    value = (len(data) * 0x9E3779B185EBCA87) & M64
    for j in range(0, 8, 2):
        product = (lanes[j] ^ scramble_key[j]) * (lanes[j + 1] ^ scramble_key[j + 1])
        value = ((value ^ (product >> 64) ^ (product & M64)) * 0xC2B2AE3D27D4EB4F) & M64
        value ^= value >> 29
    return value ^ (value >> 32)


MAGNITUDE = KEY + ".lora_magnitude_vector"
RECORD = "merged/peftkit-unmerge.record"
UNMERGE = ["unmerge", "{case}/merged", "{case}/adapter", "--output", "{output}"]


def dora_files(magnitude=None, merged_weight=None, record=None):
    """A merged folder with its unmerge record (spec/unmerge-record.md) and the DoRA adapter that was merged."""
    weight = merged_weight if merged_weight is not None else f32(ramp(OUT * IN, 1))
    files = {
        "merged/model.safetensors": safetensors([(WEIGHT, "F32", [OUT, IN], weight),
                                                 ("model.norm.weight", "F32", [IN], f32([1.0] * IN))], {"format": "pt"}),
        "merged/config.json": pretty({"model_type": "llama", "hidden_size": IN, "torch_dtype": "float32"}),
    }
    magnitude = magnitude if magnitude is not None else [1.0 + i / 8 for i in range(OUT)]
    files.update(adapter_files(config=lora_config(use_dora=True),
                               tensors=lora_tensors() + [(MAGNITUDE, "F32", [OUT], f32(magnitude))]))
    default = [(WEIGHT + ":hash", "U64", [1], struct.pack("<Q", content_hash(weight))),
               (WEIGHT + ":0:scale", "F32", [1], f32([2.0])),
               (WEIGHT + ":0:norms", "F32", [OUT], f32([2.0] * OUT)),
               (WEIGHT + ":0:magnitude", "F32", [OUT], f32(magnitude))]
    if record is not False:
        content = record(default) if callable(record) else record
        files[RECORD] = content if isinstance(content, bytes) else safetensors(
            content if content is not None else default, {"format": "peftkit-unmerge", "version": "2"})
    return files


def record_cases():
    """The unmerge record a DoRA merge writes, and the DoRA and IA3 tensor roles the earlier cases left out (appended
    last so earlier cases keep their numbers)."""
    def unmerge_case(slug, description, exit, fragment, **files):
        category = {2: "record", 3: "base-mismatch", 4: "adapter-config", 6: "record"}[exit]
        case(slug, category, description, dora_files(**files), UNMERGE, exit, fragment)

    def replace(name, tensor):
        return lambda default: [tensor if t[0] == name else t for t in default]

    unmerge_case("record-not-safetensors", "the record is not a safetensors file", 2, "peftkit-unmerge.record",
                 record=b"DoRA norms, honest\n")
    unmerge_case("record-wrong-format", "the record's metadata names another format", 2, "not a peftkit unmerge record",
                 record=lambda default: safetensors(default, {"format": "pt", "version": "2"}))
    unmerge_case("record-future-version", "a record of version 3", 2, "version 3 is not one this peftkit reads",
                 record=lambda default: safetensors(default, {"format": "peftkit-unmerge", "version": "3"}))
    unmerge_case("record-bad-name", "a record tensor whose name has no merge index", 2, "not a record tensor name",
                 record=lambda default: default + [(WEIGHT + ":x:scale", "F32", [1], f32([1.0]))])
    unmerge_case("record-missing-checksum", "merges recorded for a tensor without its hash", 2,
                 "missing, or not a U64 of shape [1]", record=lambda default: default[1:])
    unmerge_case("record-gap", "merges 0 and 2 recorded, 1 missing", 2, "merge 1 is missing",
                 record=lambda default: default + [(WEIGHT + ":2:scale", "F32", [1], f32([1.0]))])
    unmerge_case("record-zero-norm", "a recorded norm of 0", 2, "a norm is finite and positive",
                 record=replace(WEIGHT + ":0:norms", (WEIGHT + ":0:norms", "F32", [OUT], f32([2.0] * (OUT - 1) + [0.0]))))
    unmerge_case("record-nan-norm", "a recorded norm that is NaN", 2, "a norm is finite and positive",
                 record=replace(WEIGHT + ":0:norms", (WEIGHT + ":0:norms", "F32", [OUT], f32([float("nan")] * OUT))))
    unmerge_case("record-norms-length", "7 norms recorded for 8 magnitudes", 2, "7 norms for 8 magnitudes",
                 record=replace(WEIGHT + ":0:norms", (WEIGHT + ":0:norms", "F32", [OUT - 1], f32([2.0] * (OUT - 1)))))
    unmerge_case("record-half-dora", "norms recorded without the magnitude", 2, "needs both norms and magnitude",
                 record=lambda default: default[:3])
    unmerge_case("record-norms-f16", "norms stored as F16", 2, "expected a F32 vector",
                 record=replace(WEIGHT + ":0:norms", (WEIGHT + ":0:norms", "F16", [OUT], struct.pack("<8e", *[2.0] * OUT))))
    unmerge_case("record-checksum-mismatch", "the merged weight was changed after the record was written", 3,
                 "has changed since peftkit last merged into it",
                 record=replace(WEIGHT + ":hash", (WEIGHT + ":hash", "U64", [1], struct.pack("<Q", 12345))))
    unmerge_case("record-other-adapter", "the record's top merge is of a DoRA adapter with other magnitudes", 3,
                 "unmerge adapters in the reverse order of merging",
                 record=replace(WEIGHT + ":0:magnitude", (WEIGHT + ":0:magnitude", "F32", [OUT], f32([3.0] * OUT))))
    unmerge_case("record-other-scale", "the record's top merge used another scale (merge weight)", 3,
                 "each with the weight it was merged with",
                 record=replace(WEIGHT + ":0:scale", (WEIGHT + ":0:scale", "F32", [1], f32([1.0]))))
    unmerge_case("dora-unmerge-without-record", "a DoRA unmerge from a model merged elsewhere (no record)", 4,
                 "has no record of a merge into this tensor", record=False)
    unmerge_case("dora-unmerge-zero-magnitude", "the DoRA adapter's magnitude has a 0: that output cannot be undone", 6,
                 "lora_magnitude_vector[0] is 0", magnitude=[0.0] + [1.0] * (OUT - 1))

    def merge_case(slug, description, exit, fragment, config, tensors):
        category = "base-mismatch" if exit == 3 else ("numerics" if exit == 6 else "adapter-config")
        files = base_files()
        files.update(adapter_files(config=config, tensors=tensors))
        case(slug, category, description, files, MERGE, exit, fragment)

    merge_case("dora-magnitude-wrong-shape", "lora_magnitude_vector of 7 entries for 8 outputs", 2,
               "lora_magnitude_vector has shape [7], expected [8]", lora_config(use_dora=True),
               lora_tensors() + [(MAGNITUDE, "F32", [OUT - 1], f32([1.0] * (OUT - 1)))])
    merge_case("dora-magnitude-non-finite", "an infinity in lora_magnitude_vector", 6, "merging would spread it",
               lora_config(use_dora=True), lora_tensors() + [(MAGNITUDE, "F32", [OUT], f32([float("inf")] + [1.0] * (OUT - 1)))])
    ia3 = {"peft_type": "IA3", "target_modules": ["q_proj"], "feedforward_modules": []}
    merge_case("ia3-wrong-shape", "ia3_l of 7 entries for a weight of 8 outputs", 3, "ia3_l has 7 entries",
               ia3, [(KEY + ".ia3_l", "F32", [OUT - 1, 1], f32([1.0] * (OUT - 1)))])
    files = base_files()
    files.update(adapter_files(config=ia3, tensors=[(KEY + ".ia3_l", "F32", [OUT, 1], f32([0.0] + [1.0] * (OUT - 1)))]))
    case("ia3-zero-scale-unmerge", "numerics", "unmerging an IA3 scale of 0 (the merge erased that output)", files,
         ["unmerge", "{case}/base", "{case}/adapter", "--output", "{output}"], 6, "ia3_l")


def controls():
    files = base_files()
    files.update(adapter_files())
    control("merge-peft", "the valid base and LoRA adapter every merge case starts from", files, MERGE)
    files = base_files()
    files["adapter.safetensors"] = peftkit_file(**{"peftkit__base_fingerprint": fingerprint(base_tensors(seed=1))})
    control("merge-peftkit", "the valid peftkit file (with the base's fingerprint) every peftkit case starts from",
            files, PEFTKIT_MERGE)
    control("convert-mlx", "the valid mlx-lm adapter folder every mlx case starts from", mlx_files(), MLX_CONVERT)
    control("convert-legacy", "the valid legacy adapter_model.bin every legacy case starts from",
            legacy_files(torch_zip(lora_state_dict_pickle()).build()), CONVERT)
    s1, s2 = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    control("inspect-sharded", "the valid sharded folder every index case starts from", {
        "model/" + s1: safetensors([("a", "F32", [2], f32([1, 2]))], {"format": "pt"}),
        "model/" + s2: safetensors([("b", "F32", [2], f32([3, 4]))], {"format": "pt"}),
        "model/model.safetensors.index.json": pretty({"metadata": {"total_size": 16}, "weight_map": {"a": s1, "b": s2}}),
    }, ["inspect", "{case}/model"])
    control("inspect-edge-cases", "legal corner cases the safetensors cases sit next to: a scalar, an empty tensor, "
            "metadata with non-ASCII text, a header padded with spaces", {
                "model.safetensors": raw_safetensors(
                    '{"__metadata__":{"format":"pt","note":"\\u00fc"},%s,%s,%s}    ' % (
                        entry("z", "F32", "[0,3]", "[0,0]"), entry("s", "F32", "[]", "[0,4]"),
                        entry("e", "BF16", "[0]", "[4,4]")), b"\x00\x00\x80\x3f")}, INSPECT_FILE)
    files = base_files()
    files.update(adapter_files())
    files["merged/model.safetensors"] = merged_file()
    control("verify-merged", "the valid merge every verify --merged case starts from", files, VERIFY_MERGED)
    control("unmerge-dora-record", "the valid merged folder, record and DoRA adapter every record case starts from",
            dora_files(), UNMERGE)
    good = safetensors(base_tensors(), {"format": "pt"})
    control("diff", "two valid checkpoints, as every diff case starts from", {
        "a.safetensors": good, "b.safetensors": safetensors(base_tensors(seed=2), {"format": "pt"})},
        ["diff", "{case}/a.safetensors", "{case}/b.safetensors"])


# ----------------------------------------------------------------------------------------------------------------
# llama.cpp GGUF adapters (the strict GGUF reader, GGUFFormat both ways)

GGUF_CONVERT = ["convert", "{case}/adapter.gguf", "--to", "peft", "--base", "{case}/base", "--output", "{output}"]
TO_GGUF = ["convert", "{case}/adapter", "--to", "gguf", "--base", "{case}/base", "--output", "{output}"]
GGUF_TYPES = {"u32": 4, "i32": 5, "f32": 6, "bool": 7, "str": 8, "arr": 9}

# The GGUFError rule each GGUF case breaks; CorpusTests opens these files with GGUFFile in-process and checks it.
GGUF_RULES = {}


def gguf_value(kind, value):
    if kind == "u32":
        return struct.pack("<I", value)
    if kind == "i32":
        return struct.pack("<i", value)
    if kind == "f32":
        return struct.pack("<f", value)
    if kind == "bool":
        return struct.pack("<B", value)
    if kind == "str":
        return struct.pack("<Q", len(value.encode())) + value.encode()
    if kind == "arr":
        element, items = value
        return struct.pack("<IQ", GGUF_TYPES[element], len(items)) + b"".join(gguf_value(element, v) for v in items)
    raise ValueError(kind)


def gguf(kvs, tensors, alignment=32, tensor_count=None, kv_count=None, version=3, pad_end=True):
    """A GGUF file: kvs [(key, kind, value)], tensors [(name, ggml dims, ggml type, data, offset or None)]."""
    out = b"GGUF" + struct.pack("<IQQ", version, len(tensors) if tensor_count is None else tensor_count,
                                len(kvs) if kv_count is None else kv_count)
    for key, kind, value in kvs:
        out += gguf_value("str", key) + struct.pack("<I", GGUF_TYPES[kind]) + gguf_value(kind, value)
    offset = 0
    for name, dims, ggml_type, data, explicit in tensors:
        out += gguf_value("str", name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", ggml_type, offset if explicit is None else explicit)
        offset += len(data) + (-len(data)) % alignment
    if tensors:
        out += bytes((-len(out)) % alignment)
        for i, (_, _, _, data, _) in enumerate(tensors):
            out += data
            if pad_end or i < len(tensors) - 1:
                out += bytes((-len(out)) % alignment)
    return out


GGUF_LORA_KV = [("general.architecture", "str", "llama"), ("general.type", "str", "adapter"),
                ("adapter.type", "str", "lora"), ("adapter.lora.alpha", "f32", 4.0)]


def gguf_lora_tensors(out=OUT, rank=RANK):
    name = "blk.0.attn_q.weight"
    return [(name + ".lora_a", [IN, rank], 0, f32(ramp(IN * rank, 3)), None),
            (name + ".lora_b", [rank, out], 0, f32(ramp(rank * out, 5)), None)]


def gguf_base_files(tied=False, model_type="llama"):
    tensors = base_tensors() + [("model.embed_tokens.weight", "F32", [16, IN], f32(ramp(16 * IN, 2)))]
    if not tied:
        tensors.append(("lm_head.weight", "F32", [16, IN], f32(ramp(16 * IN, 4))))
    return {
        "base/model.safetensors": safetensors(tensors, {"format": "pt"}),
        "base/config.json": pretty({"model_type": model_type, "hidden_size": IN, "num_attention_heads": 2,
                                    "num_key_value_heads": 2, "tie_word_embeddings": tied, "torch_dtype": "float32"}),
    }


def gguf_files(content, **base):
    files = gguf_base_files(**base)
    files["adapter.gguf"] = content
    return files


def gguf_cases():
    def g(slug, description, content, exit, fragment, rule=None, command=GGUF_CONVERT, **base):
        if rule is not None:
            GGUF_RULES[slug] = rule
        case(slug, "gguf", description, gguf_files(content, **base), command, exit, fragment)

    good = gguf(GGUF_LORA_KV, gguf_lora_tensors())
    g("gguf-truncated-header", "a GGUF adapter cut inside its tensor infos", good[:150], 2, "the header needs",
      "truncated")
    g("gguf-truncated-data", "a GGUF adapter cut inside the last tensor's data", good[:len(good) - 40], 2,
      "past the end", "dataPastEnd")
    g("gguf-not-version-3", "GGUF version 2", good[:4] + struct.pack("<I", 2) + good[8:], 2, "GGUF version 2",
      "unsupportedVersion")
    g("gguf-big-endian", "a big-endian GGUF (version field 3 byte-swapped)", good[:4] + struct.pack(">I", 3) + good[8:],
      2, "big-endian", "bigEndian")
    g("gguf-huge-tensor-count", "2^62 tensors declared in a small file",
      gguf(GGUF_LORA_KV, gguf_lora_tensors(), tensor_count=1 << 62), 2, "cannot fit", "countTooLarge")
    g("gguf-huge-kv-count", "2^64 - 1 key-value pairs declared", gguf(GGUF_LORA_KV, [], kv_count=(1 << 64) - 1), 2,
      "cannot fit", "countTooLarge")
    huge_string = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 62) + b"general.type"
    g("gguf-huge-string-length", "a key whose length is 2^62 bytes", huge_string, 2, "runs past the end",
      "stringTooLong")
    huge_array = b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + gguf_value("str", "tokenizer.ggml.tokens") + \
        struct.pack("<IIQ", 9, 8, 1 << 40) + bytes(64)
    g("gguf-huge-array-count", "an array of 2^40 strings in a small file", huge_array, 2, "cannot fit", "countTooLarge")
    g("gguf-overflowing-dims", "dimensions whose product overflows 64 bits",
      gguf(GGUF_LORA_KV, [("blk.0.attn_q.weight.lora_a", [1 << 32, 1 << 32, 1 << 32], 0, bytes(32), None)]), 2,
      "overflows 64 bits", "sizeOverflow")
    g("gguf-unknown-ggml-type", "a tensor of ggml type 31 (no such type)",
      gguf(GGUF_LORA_KV, [(n, d, 31, data, o) for n, d, _, data, o in gguf_lora_tensors()]), 2, "unknown ggml type 31",
      "unknownTensorType")
    g("gguf-partial-block", "a Q8_0 tensor whose rows are 8 values (a block is 32)",
      gguf(GGUF_LORA_KV, [("blk.0.attn_q.weight.lora_a", [8, 2], 8, bytes(68), None)]), 2, "whole number of Q8_0 blocks",
      "partialBlock")
    tensors = gguf_lora_tensors()
    tensors[1] = tensors[1][:4] + (40,)
    g("gguf-misaligned-offset", "lora_b at offset 40, not a multiple of the alignment 32",
      gguf(GGUF_LORA_KV, tensors), 2, "not a multiple of the alignment", "misalignedOffset")
    tensors = gguf_lora_tensors()
    tensors[1] = tensors[1][:4] + (0,)
    g("gguf-overlapping-offsets", "lora_b at offset 0, on top of lora_a", gguf(GGUF_LORA_KV, tensors), 2, "overlaps",
      "dataOverlap")
    tensors = gguf_lora_tensors()
    tensors[1] = tensors[1][:4] + (128,)
    g("gguf-offset-hole", "lora_b at offset 128, leaving 64 unused bytes after lora_a", gguf(GGUF_LORA_KV, tensors), 2,
      "leaves unused bytes", "dataHole")
    g("gguf-trailing-bytes", "64 bytes after the last tensor's padding", good + bytes(64), 2, "after the last tensor",
      "trailingBytes")
    tensors = gguf_lora_tensors()
    g("gguf-duplicate-tensor", "lora_a twice", gguf(GGUF_LORA_KV, [tensors[0], tensors[0]]), 2,
      "appears more than once", "duplicateTensor")
    g("gguf-duplicate-key", "general.type twice", gguf(GGUF_LORA_KV + [("general.type", "str", "model")],
                                                       gguf_lora_tensors()), 2, "appears more than once", "duplicateKey")
    g("gguf-bad-alignment", "general.alignment 24, not a power of two",
      gguf(GGUF_LORA_KV + [("general.alignment", "u32", 24)], gguf_lora_tensors(), alignment=24), 2,
      "must be a power of two", "invalidAlignment")
    g("gguf-invalid-bool", "a bool of value 2", gguf(GGUF_LORA_KV + [("x.flag", "bool", 2)], gguf_lora_tensors()), 2,
      "must be 0 or 1", "invalidBool")
    g("gguf-name-too-long", "a tensor name of 64 bytes (ggml allows 63)",
      gguf(GGUF_LORA_KV, [("b" * 64, [4], 0, bytes(16), None)]), 2, "ggml allows at most 63", "nameTooLong")
    # Valid files, wrong adapters.
    g("gguf-integer-alpha", "adapter.lora.alpha as UINT32 (llama.cpp aborts on it)",
      gguf(GGUF_LORA_KV[:3] + [("adapter.lora.alpha", "u32", 4)], gguf_lora_tensors()), 2,
      "adapter.lora.alpha is UINT32")
    g("gguf-model-not-adapter", "general.type model: a model file", gguf(GGUF_LORA_KV[:1] + [
        ("general.type", "str", "model")], gguf_lora_tensors()), 2, "general.type is 'model', not 'adapter'")
    g("gguf-unknown-architecture", "general.architecture mamba, which peftkit has no names for",
      gguf([("general.architecture", "str", "mamba")] + GGUF_LORA_KV[1:], gguf_lora_tensors()), 4,
      "not supported: architecture 'mamba'")
    g("gguf-architecture-mismatch", "an adapter for qwen2 given a llama base",
      gguf([("general.architecture", "str", "qwen2")] + GGUF_LORA_KV[1:], gguf_lora_tensors()), 3,
      "the base (model_type 'llama') converts to 'llama'")
    g("gguf-alora", "an activated LoRA (adapter.alora.invocation_tokens)",
      gguf(GGUF_LORA_KV + [("adapter.alora.invocation_tokens", "arr", ("u32", [5, 6]))], gguf_lora_tensors()), 4,
      "not supported: 'adapter.alora.invocation_tokens' (activated LoRA)")
    g("gguf-lora-a-without-b", "blk.0.attn_q.weight.lora_a without its lora_b",
      gguf(GGUF_LORA_KV, gguf_lora_tensors()[:1]), 2, "'blk.0.attn_q.weight.lora_a' has no 'blk.0.attn_q.weight.lora_b'")
    g("gguf-norm-tensor", "a whole norm tensor (mergekit's), not a LoRA pair",
      gguf(GGUF_LORA_KV, gguf_lora_tensors() + [("blk.0.attn_norm.weight", [IN], 0, f32([1.0] * IN), None)]), 2,
      "whole norm tensors (mergekit's) are not converted")
    g("gguf-shape-mismatch", "lora_b of 16 outputs, the base's q_proj has 8",
      gguf(GGUF_LORA_KV, gguf_lora_tensors(out=16)), 3, "needs a [16, 8] weight")
    g("gguf-rank-mismatch", "lora_a of rank 2, lora_b of rank 3", gguf(GGUF_LORA_KV, [
        gguf_lora_tensors()[0], ("blk.0.attn_q.weight.lora_b", [3, OUT], 0, f32(ramp(3 * OUT)), None)]), 2,
      "disagree on the rank")
    g("gguf-tied-head", "an output LoRA for a base with tied embeddings (llama.cpp crashes on it)",
      gguf(GGUF_LORA_KV, [("output.weight.lora_a", [IN, RANK], 0, f32(ramp(IN * RANK)), None),
                          ("output.weight.lora_b", [RANK, 16], 0, f32(ramp(RANK * 16)), None)]), 4,
      "of a base with tied embeddings", tied=True)
    g("gguf-q4-adapter", "a lora_a in Q4_0, which peftkit does not decode",
      gguf(GGUF_LORA_KV, [("blk.0.attn_q.weight.lora_a", [32, RANK], 2, bytes(36), None),
                          ("blk.0.attn_q.weight.lora_b", [RANK, OUT], 0, f32(ramp(RANK * OUT)), None)]), 4,
      "ggml type Q4_0")
    g("gguf-inspect-overlap", "inspect of a GGUF whose tensors overlap", gguf(GGUF_LORA_KV, [
        gguf_lora_tensors()[0], gguf_lora_tensors()[1][:4] + (0,)]), 2, "overlaps", command=["inspect", "{case}/adapter.gguf"])

    # PEFT adapters llama.cpp cannot express: refused when writing GGUF.
    def to_gguf(slug, description, config, tensors, exit, fragment, **base):
        files = gguf_base_files(**base)
        files.update(adapter_files(config=config, tensors=tensors))
        case(slug, "gguf", description, files, TO_GGUF, exit, fragment)

    to_gguf("to-gguf-dora", "a DoRA adapter", lora_config(use_dora=True), lora_tensors() + [
        (KEY + ".lora_magnitude_vector", "F32", [OUT], f32([1.0] * OUT))], 4, "cannot express DoRA")
    to_gguf("to-gguf-lora-bias", "a LoRA with lora_bias", lora_config(lora_bias=True), lora_tensors() + [
        (KEY + ".lora_B.bias", "F32", [OUT], f32(ramp(OUT)))], 4, "lora_bias")
    to_gguf("to-gguf-modules-to-save", "a LoRA carrying lm_head whole (modules_to_save)",
            lora_config(modules_to_save=["lm_head"]), lora_tensors() + [
                ("base_model.model.lm_head.weight", "F32", [16, IN], f32(ramp(16 * IN, 4)))], 4, "modules_to_save")
    to_gguf("to-gguf-tied-head", "a LoRA on lm_head of a base with tied embeddings",
            lora_config(target_modules=["lm_head"]), [
                ("base_model.model.lm_head.lora_A.weight", "F32", [RANK, IN], f32(ramp(RANK * IN))),
                ("base_model.model.lm_head.lora_B.weight", "F32", [16, RANK], f32(ramp(16 * RANK)))], 4,
            "lm_head of a base with tied embeddings", tied=True)
    to_gguf("to-gguf-unknown-architecture", "a base of model_type gpt2, which peftkit has no llama.cpp names for",
            lora_config(), lora_tensors(), 4, "model_type 'gpt2' has no llama.cpp tensor mapping", model_type="gpt2")
    to_gguf("to-gguf-ia3", "an IA3 adapter", {"peft_type": "IA3", "target_modules": ["q_proj"],
                                              "feedforward_modules": [], "base_model_name_or_path": "tiny"},
            [(KEY + ".ia3_l", "F32", [OUT, 1], f32([1.0] * OUT))], 4, "llama.cpp adapters are LoRA")
    to_gguf("to-gguf-pissa", "a PiSSA LoRA, which belongs to a residual of the base", lora_config(init_lora_weights="pissa"),
            lora_tensors(), 4, "init_lora_weights \"pissa\" (the adapter belongs to a residual of the base")
    to_gguf("to-gguf-trainable-tokens", "a LoRA with trainable_token_indices (whole embedding rows)",
            lora_config(trainable_token_indices=[1, 2]), lora_tensors() + [
                ("base_model.model.model.embed_tokens.token_adapter.trainable_tokens_delta", "F32", [2, IN],
                 f32(ramp(2 * IN)))], 4, "trainable_token_indices")


def gguf_controls():
    control("convert-gguf", "the valid GGUF adapter every GGUF reading case starts from",
            gguf_files(gguf(GGUF_LORA_KV, gguf_lora_tensors())), GGUF_CONVERT)
    files = gguf_base_files()
    files.update(adapter_files())
    control("convert-to-gguf", "the valid PEFT adapter and base every to-gguf case starts from", files, TO_GGUF)
    control("inspect-gguf", "inspect of the valid GGUF adapter", gguf_files(gguf(GGUF_LORA_KV, gguf_lora_tensors())),
            ["inspect", "{case}/adapter.gguf"])


# ----------------------------------------------------------------------------------------------------------------

def write_case(folder, c):
    os.makedirs(folder)
    for relative, content in sorted(c["files"].items()):
        path = os.path.join(folder, relative)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content)
    description = {"description": c["description"], "category": c["category"], "command": c["command"],
                   "exit": c["exit"]}
    if c["stderr_contains"] is not None:
        description["stderr_contains"] = c["stderr_contains"]
    if c["marker"] is not None:
        description["marker"] = c["marker"]
    if c.get("rule") is not None:
        description["rule"] = c["rule"]
    if c["slug"] in GGUF_RULES:
        description["gguf_rule"] = GGUF_RULES[c["slug"]]
    with open(os.path.join(folder, "case.json"), "wb") as f:
        f.write((json.dumps(description, indent=2, ensure_ascii=True) + "\n").encode())


def main():
    safetensors_cases()
    index_cases()
    adapter_cases()
    base_mismatch_cases()
    peftkit_cases()
    legacy_cases()
    mlx_cases()
    audit_cases()
    lycoris_cases()
    method_cases()
    gguf_cases()
    record_cases()
    controls()
    gguf_controls()
    slugs = [c["slug"] for c in CASES]
    assert len(set(slugs)) == len(slugs), "duplicate slugs"
    assert set(RULES) == {c["slug"] for c in CASES if c["category"] in ("safetensors", "index")}, "rules"
    for name in ("cases", "controls"):
        shutil.rmtree(os.path.join(HERE, name), ignore_errors=True)
    for number, c in enumerate(CASES, start=1):
        write_case(os.path.join(HERE, "cases", "%03d-%s" % (number, c["slug"])), c)
    for c in CONTROLS:
        write_case(os.path.join(HERE, "controls", c["slug"]), c)
    counts = {}
    for c in CASES:
        counts[c["category"]] = counts.get(c["category"], 0) + 1
    print("%d cases (%s), %d controls" % (len(CASES), ", ".join("%s %d" % kv for kv in counts.items()),
                                          len(CONTROLS)))


if __name__ == "__main__":
    main()
