"""Reading and writing models: clear errors for bad files, atomic writes, external data over 2 GB, and the
guard every command runs on its output paths before any work (`guard_outputs`)."""
from __future__ import annotations

import contextlib
import functools
import math
import operator
import os
import stat
import tempfile
from bisect import bisect_right
from itertools import accumulate, chain, compress, repeat
from pathlib import Path

import onnx
import onnx.inliner
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.message import DecodeError, EncodeError

from surgeon.errors import ModelError, SurgeonError, first_line
from surgeon.graphinfo import ELEMENT_BITS, all_nodes, tensor_bytes, typed_entries

TWO_GB = 2**31 - 1


def load_model(path, load_external_data: bool = True) -> onnx.ModelProto:
    """Load an ONNX model (its external data too); a missing or malformed file raises ModelError."""
    return read_model(path, load_external_data)[0]


def read_model(path, load_external_data: bool = True) -> tuple[onnx.ModelProto, list[Path]]:
    """`load_model`, and the files the model is made of: its path, then its external-data files.

    Models are read as binary protobuf whatever the extension: onnx would pick its JSON or text formats
    from `.json`, `.textproto` or `.onnxtxt`, which surgeon neither reads nor writes. External data must be
    regular files inside the model's folder (as `surgeon check` SG012 and onnx.checker require). A model
    that parses but that later stages would trip over (`model_problems`) is a ModelError too.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError("model file not found", file=path)
    if path.is_dir():
        raise ModelError("expected an .onnx file, got a folder", file=path)
    try:
        serialized = path.read_bytes()
        model = onnx.load_model_from_string(serialized, format="protobuf")
    except (DecodeError, RuntimeWarning, ValueError) as exc:
        _refuse_other_formats(path, serialized)
        raise ModelError(f"not a valid ONNX model ({type(exc).__name__}: {exc})", file=path) from None
    except OSError as exc:
        raise ModelError(f"cannot read model: {exc.strerror or exc}", file=path) from None
    if not model.HasField("graph") or not model.opset_import:
        _refuse_other_formats(path, serialized)
        raise ModelError("not a valid ONNX model (no graph or no opset import)", file=path)
    data_files = _external_data_files(model, path, check=load_external_data)
    problem = next(model_problems(model, serialized, path.parent), None)
    del serialized
    if problem is not None:
        raise ModelError(f"not a usable ONNX model: {problem}", file=path)
    if load_external_data and data_files:
        try:
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        except (OSError, ValueError, onnx.checker.ValidationError) as exc:
            raise ModelError(f"cannot read the model's external data: {first_line(exc)}", file=path) from None
    return model, [path, *data_files]


#: Element types a tensor may have (UNDEFINED is none: onnx.checker refuses it for a tensor).
_DATA_TYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}
#: Past this size a model's raw data lengths are read off its bytes: protobuf copies `raw_data` when asked
#: for it (0.5 s per GB), where walking the serialized graph costs 2 us a node.
_SCAN_RAW_DATA_FROM = 64 * 2**20


def model_problems(model: onnx.ModelProto, serialized: bytes | None, folder: Path):
    """What makes `model` unusable though it parsed, each a phrase naming the tensor, node or attribute:
    no graph outputs, element types that are no ONNX data type, tensors whose data (raw, typed or external)
    disagrees with their dims and type, names and string attributes that are not UTF-8 (onnx-graphsurgeon
    decodes them). Free text (doc strings, metadata, the producer) may be any bytes: runtimes never read
    it, and `surgeon run` carries it through unchanged (`set_text_field`). Every later stage trusts these,
    so each command reads models through `read_model`.

    Cheap on a 2 GB model: only lengths are compared, no data is read or decoded. `serialized`: the
    model's bytes, where large raw data lengths are read; `folder`: where its external data lies (a file
    that is missing or outside it is `_external_data_files`'s or `surgeon check`'s to report)."""
    texts_checked = _names_are_utf8(serialized)
    if not model.graph.output:
        yield "the graph has no outputs"
    texts = [("domain", model.domain), ("graph name", model.graph.name)]
    texts += [(f"opset import {i}", o.domain) for i, o in enumerate(model.opset_import)]
    yield from (f"the model's {field} {_shown(text)} is not UTF-8 text" for field, text in _non_utf8(texts))
    yield from _graph_problems(model.graph, "", folder, texts_checked, _raw_data_lengths(model, serialized), main=True)
    for function in model.functions:
        scope = f" in function {_shown(function.name)}"
        yield from _graph_problems(onnx.GraphProto(node=function.node), scope, folder, texts_checked)


def _graph_problems(graph: onnx.GraphProto, scope: str, folder: Path, texts_checked: bool, raw_lengths=None,
                    main: bool = False):
    """`model_problems` for one graph (`scope` follows each name; `texts_checked`: `_names_are_utf8` found
    every name and string attribute UTF-8). Written for the usual sound model: each kind of field is
    checked whole at C speed (a join refuses the bytes protobuf hands over for text that is not UTF-8),
    and only what fails such a check is looked at one by one, to name it."""
    initializers = graph.initializer
    for index in _suspect_tensors(initializers, texts_checked, raw_lengths):
        tensor = initializers[index]
        problem = _tensor_problem(tensor, folder, raw_lengths[index] if raw_lengths is not None else None)
        if problem is not None:
            yield f"initializer {_shown(tensor.name)}{scope}{problem}"
    for sparse in graph.sparse_initializer:
        for part, tensor in (("values", sparse.values), ("indices", sparse.indices)):
            problem = _tensor_problem(tensor, folder)
            if problem is not None:
                yield f"{part} of sparse initializer {_shown(sparse.values.name)}{scope}{problem}"
    for kind, infos in (("graph input", graph.input), ("graph output", graph.output), ("value_info", graph.value_info)):
        for info in _suspect_infos(infos, texts_checked):
            what = f"{kind} {_shown(info.name)}{scope}"
            if type(info.name) is not str:
                yield f"{what}: its name is not UTF-8 text"
            # An element type of 0 is "unknown" to shape inference, but ONNX Runtime refuses it on the
            # graph's inputs and outputs (and no input data can be made for it).
            yield from _type_problems(info.type, what, typed=main and kind != "value_info")
    nodes = graph.node
    node_texts = chain.from_iterable(chain(map(_NODE_TEXTS, nodes), map(_INPUTS, nodes), map(_OUTPUTS, nodes)))
    if not texts_checked and not _all_text(node_texts):
        for index, node in enumerate(nodes):
            texts = [("name", node.name), ("op_type", node.op_type), ("domain", node.domain)]
            texts += [(f"input {i}", name) for i, name in enumerate(node.input)]
            texts += [(f"output {i}", name) for i, name in enumerate(node.output)]
            yield from (f"{_node_label(node, index)}{scope}: its {field} {_shown(text)} is not UTF-8 text"
                        for field, text in _non_utf8(texts))
    attributes = list(chain.from_iterable(map(_ATTRIBUTES, nodes)))
    if not attributes:
        return
    if texts_checked or _all_text(map(_NAME, attributes)):
        # Numbers need no look, text only where not checked yet, tensors (Constant values, most of the
        # rest) only where their data disagrees with their dims (`_suspect_tensors`, all at once).
        kinds = list(map(_TYPE, attributes))
        sound = _PLAIN_ATTRIBUTES | {onnx.AttributeProto.TENSOR} | (_TEXT_ATTRIBUTES if texts_checked else set())
        suspects = compress(range(len(attributes)), map(operator.not_, map(sound.__contains__, kinds)))
        held_tensors = list(compress(range(len(attributes)), map(onnx.AttributeProto.TENSOR.__eq__, kinds)))
        tensors = list(map(_TENSOR, map(attributes.__getitem__, held_tensors)))
        suspects = sorted([*suspects, *map(held_tensors.__getitem__, _suspect_tensors(tensors, texts_checked))])
    else:
        suspects = range(len(attributes))
    ends = None
    for position in suspects:
        ends = ends or list(accumulate(map(len, map(_ATTRIBUTES, nodes))))  # where each node's attributes end
        index = bisect_right(ends, position)
        label = functools.partial(_scoped_label, nodes[index], index, scope)
        yield from _attribute_problems(attributes[position], label, folder, texts_checked)


def _all_text(strings) -> bool:
    """Whether every one of `strings`, as protobuf hands them over, is text (not the bytes of text that is
    not UTF-8)."""
    try:
        "".join(strings)
    except TypeError:
        return False
    return True


def _suspect_tensors(tensors, texts_checked: bool, raw_lengths=None):
    """Indices of the `tensors` that `_tensor_problem` must look at: all but those named in text, stored
    in place, whose raw data holds exactly the bytes their dims and known element type take (the usual
    case, told at C speed; raw data is copied to be measured, at memory speed)."""
    tensors = list(tensors)  # a list: protobuf's repeated fields are slow to iterate
    shapes = list(map(tuple, map(_DIMS, tensors)))
    if (not (texts_checked or _all_text(map(_NAME, tensors))) or any(map(_DATA_LOCATION, tensors))
            or min(map(min, filter(None, shapes)), default=0) < 0):
        return range(len(tensors))
    bits = map(ELEMENT_BITS.get, map(_DATA_TYPE, tensors), repeat(0))
    held = raw_lengths if raw_lengths is not None else map(len, map(_RAW_DATA, tensors))
    return [index for index, (count, size, length) in enumerate(zip(map(math.prod, shapes), bits, held))
            if not length or length != -(-count * size // 8)]


def _suspect_infos(infos, texts_checked: bool):
    """The value infos `_type_problems` must look at: all but tensors of an ONNX data type named in text."""
    if not (texts_checked or _all_text(map(_NAME, infos))):
        return infos
    return compress(infos, map(operator.not_, map(_DATA_TYPES.__contains__, map(_ELEM_TYPE, infos))))


_NAME, _TYPE, _DIMS, _DATA_TYPE = (operator.attrgetter(field) for field in ("name", "type", "dims", "data_type"))
_RAW_DATA, _DATA_LOCATION = operator.attrgetter("raw_data"), operator.attrgetter("data_location")
_ELEM_TYPE = operator.attrgetter("type.tensor_type.elem_type")
_NODE_TEXTS = operator.attrgetter("name", "op_type", "domain")
_INPUTS, _OUTPUTS = operator.attrgetter("input"), operator.attrgetter("output")
_ATTRIBUTES, _TENSOR = operator.attrgetter("attribute"), operator.attrgetter("t")


def _node_label(node: onnx.NodeProto, index: int) -> str:
    op_type = _shown(node.op_type)[1:-1]
    return f"node {_shown(node.name)} ({op_type})" if node.name else f"node #{index} ({op_type})"


def _scoped_label(node: onnx.NodeProto, index: int, scope: str) -> str:
    return f"{_node_label(node, index)}{scope}"


def _type_problems(type_proto: onnx.TypeProto, what: str, typed: bool):
    kind = type_proto.WhichOneof("value")
    if kind in ("tensor_type", "sparse_tensor_type"):
        elem_type = getattr(type_proto, kind).elem_type
        if elem_type == onnx.TensorProto.UNDEFINED and typed:
            yield f"{what} has no element type (0, UNDEFINED)"
        elif elem_type not in _DATA_TYPES and elem_type != onnx.TensorProto.UNDEFINED:
            yield f"{what} has element type {elem_type}, which is no ONNX data type"
    elif kind in ("sequence_type", "optional_type"):
        yield from _type_problems(getattr(type_proto, kind).elem_type, what, typed)
    elif kind == "map_type":
        if type_proto.map_type.key_type not in _DATA_TYPES:
            yield f"{what} has map key type {type_proto.map_type.key_type}, which is no ONNX data type"
        yield from _type_problems(type_proto.map_type.value_type, what, typed)


def _attribute_problems(attribute: onnx.AttributeProto, label, folder: Path, texts_checked: bool):
    """What is wrong with one attribute of a node; `label()` names the node (made only for a problem)."""
    def where() -> str:
        return f"attribute {_shown(attribute.name)} of {label()}"

    if type(attribute.name) is not str:
        yield f"{where()}: its name is not UTF-8 text"
    kind = attribute.type
    if kind in _PLAIN_ATTRIBUTES or attribute.ref_attr_name:  # a function body's reference holds no value
        return
    if kind in (onnx.AttributeProto.STRING, onnx.AttributeProto.STRINGS):
        values = [attribute.s] if kind == onnx.AttributeProto.STRING else attribute.strings
        for value in values:
            try:
                value.decode()
            except UnicodeDecodeError:
                yield f"{where()} is not UTF-8 text: {value[:40]!r}"
    tensors = [attribute.t] if kind == onnx.AttributeProto.TENSOR else attribute.tensors
    for tensor in tensors:
        problem = _tensor_problem(tensor, folder)
        if problem is not None:
            yield f"the tensor of {where()}{problem}"
    sparse = [attribute.sparse_tensor] if kind == onnx.AttributeProto.SPARSE_TENSOR else attribute.sparse_tensors
    for tensor in sparse:
        yield from _tensor_problems(tensor.values, f"the sparse tensor values of {where()}", folder)
        yield from _tensor_problems(tensor.indices, f"the sparse tensor indices of {where()}", folder)
    bodies = [attribute.g] if kind == onnx.AttributeProto.GRAPH else attribute.graphs
    for body in bodies:
        yield from _graph_problems(body, f" in the body {_shown(attribute.name)} of {label()}", folder, texts_checked)
    types = [attribute.tp] if kind == onnx.AttributeProto.TYPE_PROTO else attribute.type_protos
    for type_proto in types:
        yield from _type_problems(type_proto, where(), typed=False)


_PLAIN_ATTRIBUTES = frozenset({onnx.AttributeProto.INT, onnx.AttributeProto.INTS, onnx.AttributeProto.FLOAT,
                               onnx.AttributeProto.FLOATS})
_TEXT_ATTRIBUTES = frozenset({onnx.AttributeProto.STRING, onnx.AttributeProto.STRINGS})


def _names_are_utf8(serialized: bytes | None) -> bool:
    """Whether every name and string attribute in a model's bytes is known to be UTF-8, told at the speed
    of parsing: protobuf checks UTF-8 as it parses the string fields of a proto3 message but not of
    onnx's proto2 ones, so the bytes are parsed as `_UTF8_NAMES`, a proto3 copy of the fields that
    `model_problems` reads as text (a few more, such as a body's graph name: those only cost the slow way).
    False, leaving it to the joins, without the bytes or past 64 MiB (that parse copies the weights)."""
    if serialized is None or len(serialized) >= _SCAN_RAW_DATA_FROM:
        return False
    try:
        _UTF8_NAMES.FromString(serialized)
    except DecodeError:
        return False
    return True


def _utf8_names_message():
    """The proto3 message class behind `_names_are_utf8`: onnx's messages cut down to their names, string
    attributes and the messages that hold them, under the same field numbers."""
    text = {"ModelProto": ["domain"], "OperatorSetIdProto": ["domain"], "GraphProto": ["name"],
            "NodeProto": ["input", "output", "name", "op_type", "domain"], "AttributeProto": ["name", "s", "strings"],
            "TensorProto": ["name"], "ValueInfoProto": ["name"]}
    held = {"ModelProto": ["graph", "opset_import", "functions"], "FunctionProto": ["node"],
            "GraphProto": ["node", "initializer", "sparse_initializer", "input", "output", "value_info"],
            "NodeProto": ["attribute"], "SparseTensorProto": ["values", "indices"],
            "AttributeProto": ["t", "tensors", "g", "graphs", "sparse_tensor", "sparse_tensors"]}
    field_type = descriptor_pb2.FieldDescriptorProto
    file = descriptor_pb2.FileDescriptorProto(name="surgeon_utf8_names.proto", package="surgeon", syntax="proto3")
    for name in sorted({*text, *held}):
        message = file.message_type.add(name=name)
        for field in getattr(onnx, name).DESCRIPTOR.fields:
            if field.name in text.get(name, ()) or field.name in held.get(name, ()):
                declared = message.field.add(name=field.name, number=field.number, type=field_type.TYPE_STRING,
                                             label=field_type.LABEL_REPEATED if field.is_repeated else
                                             field_type.LABEL_OPTIONAL)
                if field.message_type is not None:
                    declared.type, declared.type_name = field_type.TYPE_MESSAGE, f".surgeon.{field.message_type.name}"
    pool = descriptor_pool.DescriptorPool()
    pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("surgeon.ModelProto"))


_UTF8_NAMES = _utf8_names_message()


def _tensor_problems(tensor: onnx.TensorProto, what: str, folder: Path, raw_length: int | None = None):
    """`_tensor_problem`, as a phrase naming the tensor (`what`)."""
    problem = _tensor_problem(tensor, folder, raw_length)
    if problem is not None:
        yield f"{what}{problem}"


def _tensor_problem(tensor: onnx.TensorProto, folder: Path, raw_length: int | None = None) -> str | None:
    """What is wrong with a tensor, to follow its name: its element type must be an ONNX data type and the
    data it stores (raw, typed or external) exactly what its dims and type take. `raw_length`: the length
    of its raw data where known (`_raw_data_lengths`)."""
    data_type = tensor.data_type
    bits = ELEMENT_BITS.get(data_type)
    if bits is None and data_type != onnx.TensorProto.STRING:
        if data_type == onnx.TensorProto.UNDEFINED:
            return f" has data type {data_type} (UNDEFINED)"
        return f" has data type {data_type}, which is no ONNX data type"
    if type(tensor.name) is not str:
        return ": its name is not UTF-8 text"
    dims = list(tensor.dims)  # a list: protobuf's repeated fields are slow to iterate
    if dims and min(dims) < 0:
        return f" has a negative dimension: dims {dims}"
    count = math.prod(dims)
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        try:
            held = _external_length(tensor, folder)
        except ValueError as exc:
            return f": {exc}"
        if held is None or bits is None:
            return None
        stored_in = "its external data"
    elif tensor.HasField("raw_data"):
        if bits is None:
            return ": a STRING tensor keeps its values in string_data, not in raw_data"
        held = len(tensor.raw_data) if raw_length is None else raw_length
        stored_in = "its raw_data"
    else:
        field = onnx.helper.tensor_dtype_to_field(data_type)
        entries, held = typed_entries(data_type, count), len(getattr(tensor, field))
        if held == entries:
            return None
        return (f": dims {dims} of {onnx.TensorProto.DataType.Name(data_type)} take {entries} entries in "
                f"{field}, but it holds {held}")
    needed = -(-count * bits // 8)
    if held == needed:
        return None
    return (f": dims {dims} of {onnx.TensorProto.DataType.Name(data_type)} take {needed} bytes, but "
            f"{stored_in} holds {held}")


def _external_length(tensor: onnx.TensorProto, folder: Path) -> int | None:
    """The bytes an external tensor's data holds: its recorded `length`, else from its `offset` to the end of
    its file; None where that file is not there to ask (reported elsewhere)."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    numbers = {}
    for key in ("offset", "length"):
        if key in info:
            try:
                numbers[key] = int(info[key])
            except ValueError:
                raise ValueError(f"its external data {key} {info[key]!r} is not a number") from None
            if numbers[key] < 0:
                raise ValueError(f"its external data {key} {numbers[key]} is negative")
    if "length" in numbers:
        return numbers["length"]
    location = info.get("location", "")
    data_file = data_file_inside(folder.resolve(), location)
    if not location or data_file is None:
        return None
    try:
        return max(os.stat(data_file).st_size - numbers.get("offset", 0), 0)
    except OSError:
        return None


def _raw_data_lengths(model: onnx.ModelProto, serialized: bytes | None) -> list[int | None] | None:
    """The raw data length of each of the main graph's initializers (None: it has none), read off the model's
    bytes without copying any data; None for a small model (asking protobuf costs less) or bytes that do
    not hold the initializers as expected."""
    if serialized is None or len(serialized) < _SCAN_RAW_DATA_FROM:
        return None
    lengths = []
    try:
        for field, start, end in _wire_fields(serialized, 0, len(serialized)):
            if field != 7:  # ModelProto.graph
                continue
            for graph_field, tensor_start, tensor_end in _wire_fields(serialized, start, end):
                if graph_field == 5:  # GraphProto.initializer; in it, TensorProto.raw_data is field 9
                    raw = [data_end - data_start for tensor_field, data_start, data_end
                           in _wire_fields(serialized, tensor_start, tensor_end) if tensor_field == 9]
                    lengths.append(raw[-1] if raw else None)  # the last one counts, as in protobuf
    except (IndexError, ValueError):
        return None
    return lengths if len(lengths) == len(model.graph.initializer) else None


def _wire_fields(data: bytes, pos: int, end: int):
    """(field number, start, end) of each length-delimited field of the protobuf message in data[pos:end]."""
    while pos < end:
        key, pos = _varint(data, pos)
        wire_type = key & 7
        if wire_type == 2:
            length, pos = _varint(data, pos)
            yield key >> 3, pos, pos + length
            pos += length
        elif wire_type == 0:
            pos = _varint(data, pos)[1]
        elif wire_type in (1, 5):
            pos += 8 if wire_type == 1 else 4
        else:
            raise ValueError(f"wire type {wire_type}")
    if pos != end:
        raise ValueError("a field runs past its message")


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7


def set_text_field(message, field: str, value: str | bytes) -> None:
    """Set string `field` of protobuf `message` to `value`, bytes that are not UTF-8 included: protobuf
    hands such a field over as bytes (free text such as a doc_string may hold Latin-1, and runtimes run
    the model) but refuses them back through setattr; merging them in as parsed wire bytes keeps them."""
    if isinstance(value, str):
        setattr(message, field, value)
        return
    number = message.DESCRIPTOR.fields_by_name[field].number
    carrier = type(message)()
    carrier.MergeFromString(_varint_bytes(number << 3 | 2) + _varint_bytes(len(value)) + value)
    message.MergeFrom(carrier)


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _non_utf8(texts):
    """The (field, value) pairs whose value protobuf could not decode as UTF-8 (it hands over the bytes)."""
    return [(field, text) for field, text in texts if type(text) is not str]


def _shown(text) -> str:
    """`text` quoted for a message; bytes that are not UTF-8 with their invalid bytes escaped."""
    return f"'{text.decode('utf-8', 'backslashreplace') if isinstance(text, bytes) else text}'"


#: onnx's text formats, which it picks from these extensions (surgeon reads binary protobuf only).
_TEXT_FORMATS = {".json": "JSON", ".textproto": "textproto", ".pbtxt": "textproto", ".prototxt": "textproto",
                 ".txtpb": "textproto", ".onnxtxt": "onnxtxt"}


def is_git_lfs_pointer(head: bytes) -> bool:
    """Whether a file that starts with `head` is a Git LFS pointer: what a clone without `git lfs pull` holds
    in place of a large file (a model, an .npz of inputs)."""
    return head.startswith(b"version https://git-lfs")


def _refuse_other_formats(path: Path, serialized: bytes) -> None:
    """Name what a file that is no binary ONNX model is, where that is known: a Git LFS pointer, or one of
    onnx's text formats."""
    if is_git_lfs_pointer(serialized):
        raise ModelError("a Git LFS pointer, not the model: fetch the file (git lfs pull)", file=path)
    kind = _TEXT_FORMATS.get(path.suffix.lower())
    if kind is not None:
        raise ModelError(f"not a binary ONNX model: surgeon reads binary protobuf models only, not onnx's {kind} "
                         "text format", file=path,
                         hint=f"convert it with onnx.save(onnx.load('{path.name}'), '{path.stem}.onnx')")


def data_file_inside(folder: Path, location: str) -> Path | None:
    """The file an external-data `location` names in the model's (resolved) `folder`; None where it is
    absolute or leads out of the folder, which surgeon refuses to read."""
    resolved = Path(os.path.normpath(folder / location))
    return resolved if not Path(location).is_absolute() and resolved.is_relative_to(folder) else None


def _external_data_files(model: onnx.ModelProto, path: Path, check: bool = True) -> list[Path]:
    """The external-data files of `model` (read from `path`); `check`: each must be a regular file inside the
    model's folder (else ModelError, in the words of `surgeon check` SG012, which reports them without it)."""
    if not _has_external_data(model):
        # Attribute tensors (Constant values) are walked only beside external initializers, as onnx's
        # converter writes them: a walk over every node's attributes costs 0.1 s on 20,000 nodes.
        return []
    folder = path.resolve().parent
    files: dict[Path, None] = {}
    for tensor in _all_tensors(model.graph):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        if not check:
            files[Path(os.path.normpath(path.parent / location))] = None
            continue
        if not location:
            raise ModelError(f"tensor '{tensor.name}' is marked external but names no data file", file=path)
        if data_file_inside(folder, location) is None:
            raise ModelError(f"initializer '{tensor.name}' reads external data from '{location}', outside "
                             f"{folder.name}/; keep data files beside the model", file=path)
        data_file = path.parent / location
        if not data_file.is_file():
            why = "which does not exist" if not data_file.exists() else "which is not a regular file"
            raise ModelError(f"cannot read the model's external data: initializer '{tensor.name}' is stored in "
                             f"'{location}', {why}", file=path)
        files[Path(os.path.normpath(data_file))] = None
    return list(files)


def _all_tensors(graph: onnx.GraphProto):
    """The initializers and attribute tensors of `graph` and its subgraphs (where onnx keeps external data)."""
    yield from graph.initializer
    yield from _tensors_below_the_top(graph)


def _has_external_data(model: onnx.ModelProto) -> bool:
    return any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)


def over_two_gb(model: onnx.ModelProto) -> bool:
    """Whether the model is over protobuf's 2 GB limit (so it can only be saved with external data).

    The weights it holds decide without protobuf where they alone are past the limit: the upb backend
    sizes a message by serializing it (17 s and 4 GB more for a 2.25 GB model), then refuses."""
    if _held_tensor_bytes(model) > TWO_GB:
        return True
    try:
        return model.ByteSize() > TWO_GB
    except EncodeError:  # the upb backend refuses even to size a message past the limit
        return True


def _held_tensor_bytes(model: onnx.ModelProto) -> int:
    return sum(tensor_bytes(t) for t in _all_tensors(model.graph) if t.data_location != onnx.TensorProto.EXTERNAL)


def serialize_model(model: onnx.ModelProto) -> bytes | None:
    """The model's bytes, or None for a model over protobuf's 2 GB limit (saved with external data).

    Serialized once: asking protobuf for the size first would serialize it twice under upb."""
    if _held_tensor_bytes(model) > TWO_GB:  # a serialization past the limit allocates it all, then fails
        return None
    try:
        data = model.SerializeToString()
    except (ValueError, EncodeError):  # protobuf refuses messages over 2 GB (EncodeError: upb backend)
        if over_two_gb(model):
            return None
        raise
    return None if len(data) > TWO_GB else data


def save_model_atomic(model: onnx.ModelProto, path, external_data: bool | None = None,
                      serialized: bytes | None = None, check=None) -> list[Path]:
    """Write `model` to `path` through a temporary file beside it, then rename; return the files written.

    Models over 2 GB (protobuf's limit) are written with external data in `<name>.data`; `model` is left
    as it was. `serialized`: the model's bytes from `serialize_model`, when the caller has them already
    (the checker read them). `check(path)`: called on the written temporary file before the rename (how
    onnx.checker reads a model over 2 GB); if it raises, nothing is written.
    """
    path = Path(path)
    if serialized is not None and not external_data and not _has_external_data(model):
        # What onnx.save_model writes for such a model, without its walk over every tensor for
        # external data (a third of a save on 20,000 nodes).
        return [write_bytes_atomic(path, serialized)]
    if external_data is None:
        external_data = over_two_gb(model)
    _last_guard(path, *([path.with_name(f"{path.name}.data")] if external_data else []))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=path.parent, prefix=_TEMP_PREFIX) as tmp:
        tmp_model = Path(tmp) / path.name
        if external_data:
            data_name = f"{path.name}.data"
            write_with_external_data(model, tmp_model, data_name)
            if check is not None:
                check(tmp_model)
            os.replace(Path(tmp) / data_name, path.parent / data_name)
            os.replace(tmp_model, path)
            return [path, path.parent / data_name]
        onnx.save_model(model, str(tmp_model), format="protobuf")  # whatever the extension, as when serialized
        if check is not None:
            check(tmp_model)
        os.replace(tmp_model, path)
    return [path]


def write_with_external_data(model: onnx.ModelProto, path: Path, data_name: str, size_threshold: int = 1024,
                             ir_version: int | None = None) -> None:
    """Write `model` to `path`, the raw data of its tensors of `size_threshold` bytes or more in the file
    `data_name` beside it, without changing `model`.

    Not `onnx.save_model(save_as_external_data=True)` where it can be helped: that moves the data out of
    the model, and reading it back for the caller (validation reads the in-memory result) leaves the
    model's memory (a upb arena) holding both copies. Here each top-level initializer's bytes are
    written as they are and the model file gets a header copy without them. Large tensors inside If/Loop
    bodies or node attributes, rare, go through onnx's saver after all. `ir_version`: the one the file
    declares, if not the model's.
    """
    if any(_large(t, size_threshold) for t in _tensors_below_the_top(model.graph)):
        declared = model.ir_version
        model.ir_version = ir_version or declared
        try:
            onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                            location=data_name, size_threshold=size_threshold)
        finally:
            model.ir_version = declared
            onnx.external_data_helper.load_external_data_for_model(model, str(path.parent))
        return
    header = model_header(model)
    if ir_version is not None:
        header.ir_version = ir_version
    with open(path.parent / data_name, "wb") as data:
        for tensor in model.graph.initializer:
            if not _large(tensor, size_threshold):
                header.graph.initializer.append(tensor)  # external already, typed fields, or small
                continue
            moved = header.graph.initializer.add()
            _copy_fields(tensor, moved, skip=("raw_data", "data_location", "external_data"))
            moved.data_location = onnx.TensorProto.EXTERNAL
            raw = tensor.raw_data
            for key, value in (("location", data_name), ("offset", str(data.tell())), ("length", str(len(raw)))):
                moved.external_data.add(key=key, value=value)
            data.write(raw)
    path.write_bytes(header.SerializeToString())


def model_header(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of `model` without the graph's initializers: all but its weights, in a few kilobytes."""
    header = onnx.ModelProto()
    _copy_fields(model, header, skip=("graph",))
    _copy_fields(model.graph, header.graph, skip=("initializer",))
    return header


def weightless_copy(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model_header(model)` with the initializers back as names, types and dims, without their data: what
    inference and the inliner need of the weights, in a few kilobytes."""
    header = model_header(model)
    for tensor in model.graph.initializer:
        header.graph.initializer.add(name=tensor.name, data_type=tensor.data_type, dims=tensor.dims)
    return header


def inlined_header(model: onnx.ModelProto) -> onnx.ModelProto:
    """`model_header(model)` with the local functions inlined. onnx's inliner serializes the model it is
    given, which fails past protobuf's 2 GB limit ('Failed to serialize proto'): it gets the weights'
    names, types and shapes (it renames what the bodies define away from every name in the graph), not
    their data. It leaves the calls of a function at other opsets than the model's in place, silently: each
    called function is brought to the model's first (surgeon.opset_conversion.aligned_function; PassError
    where it cannot be). ModelError where the inliner refuses the model (a function that calls itself)."""
    from surgeon.opset_conversion import aligned_function  # imports onnx-graphsurgeon: only where needed

    header = weightless_copy(model)
    called = called_functions(header)
    functions = [aligned_function(f, header) if (f.domain, f.name) in called else f for f in header.functions]
    del header.functions[:]
    header.functions.extend(functions)
    try:
        inlined = onnx.inliner.inline_local_functions(header)
    except (onnx.checker.ValidationError, RuntimeError) as exc:
        raise ModelError(f"onnx's inliner refused the model: {first_line(exc)}") from exc
    del inlined.graph.initializer[:]  # inlining adds no initializers: the model's own are all there are
    return inlined


def called_functions(model: onnx.ModelProto) -> set[tuple[str, str]]:
    """The (domain, name) of the local functions the graph calls, directly or through other functions."""
    functions = {(f.domain, f.name): f for f in model.functions}
    called, reading = set(), [model.graph]
    while reading:
        for node in all_nodes(reading.pop()):
            key = (node.domain, node.op_type)
            if key in functions and key not in called:
                called.add(key)
                reading.append(functions[key])
    return called


def take_header(model: onnx.ModelProto, header: onnx.ModelProto) -> None:
    """Make `model`, in place, `header` (from `model_header`) with `model`'s own initializers: how a tool
    that works on the header reaches a model past 2 GB without a second copy of its weights."""
    for field, _ in model.ListFields():
        if field.name != "graph":
            model.ClearField(field.name)
    for field, _ in model.graph.ListFields():
        if field.name != "initializer":
            model.graph.ClearField(field.name)
    _copy_fields(header, model, skip=("graph",))
    _copy_fields(header.graph, model.graph, skip=("initializer",))


def _large(tensor: onnx.TensorProto, size_threshold: int) -> bool:
    return tensor.HasField("raw_data") and tensor_bytes(tensor) >= size_threshold


def _tensors_below_the_top(graph: onnx.GraphProto):
    """The tensors of node attributes and of If/Loop bodies (not the graph's own initializers)."""
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for body in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from _all_tensors(body)


def _copy_fields(source, target, skip: tuple[str, ...]) -> None:
    """Every set field of protobuf message `source` but those in `skip` into `target` (same type)."""
    for field, value in source.ListFields():
        if field.name in skip:
            continue
        current = getattr(target, field.name)
        if hasattr(current, "extend"):  # a repeated field
            current.extend(value)
        elif hasattr(current, "CopyFrom"):  # a message
            current.CopyFrom(value)
        elif field.type == field.TYPE_STRING:
            set_text_field(target, field.name, value)
        else:
            setattr(target, field.name, value)


def write_text_atomic(path, text: str) -> Path:
    """Write a text file through a temporary file beside it."""
    return write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path, data: bytes) -> Path:
    """Write a file through a temporary file beside it, then rename: readers never see half of it."""
    path = Path(path)
    _last_guard(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=_TEMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode of a new file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


#: Temporary files and folders beside an output: short, so that an output name the file system takes
#: needs no longer one.
_TEMP_PREFIX = ".surgeon-"


def _last_guard(*paths: Path) -> None:
    """The rename would replace a device or fail on a folder: refuse here too, for writers that ran no guard."""
    guard_outputs([(path, "this output", None) for path in paths])


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def guard_outputs(outputs, inputs=(), models=(), discard: str | None = None) -> None:
    """Refuse, before any work starts, an output path that would destroy something or cannot be written.

    Every write goes through a temporary file renamed over the path, which replaces whatever the path
    names. `outputs`: (path, what, option) for every file a command will write, sidecars and reports
    included; `what` names the file in messages ("the run report"), `option` is how to choose another
    path ("-o"). `inputs`: (path, what) for every file the command reads (recipes, data files, a model
    already read with its data files by `read_model`); `models`: (path, what) of models not read yet,
    whose external-data files count too (read, without the data, only when some output exists).
    Raises SurgeonError (exit 2) naming the path when an output
    - names a folder (an existing one, or written with a trailing slash) or lies below a file;
    - exists and is not a regular file (a device such as /dev/null, a pipe, a socket): `discard` says
      how to drop the result instead;
    - is one of the inputs, under any spelling or link, or another of the outputs.
    """
    planned = []
    written: dict[str, tuple[str, str]] = {}
    for path, what, option in outputs:
        raw = os.fspath(path)
        hint = f"choose another {option}" if option else None
        if not raw or raw.endswith(("/", os.sep)) or (os.altsep and raw.endswith(os.altsep)):
            raise SurgeonError(f"names a folder; {what} needs a file name", file=raw or "''", hint=hint)
        path = Path(raw)
        _check_folder(path, what, hint)
        _check_name_lengths(path, what, hint)
        try:
            status = os.stat(path)
        except OSError:  # not there (or a dangling link, which the rename replaces): nothing to lose
            status = None
        if status is not None and stat.S_ISDIR(status.st_mode):
            raise SurgeonError(f"is a folder; cannot write {what} there", file=path, hint=hint)
        if status is not None and not stat.S_ISREG(status.st_mode):
            raise SurgeonError(f"is {_kind(status.st_mode)}, not a regular file: refusing to replace it with {what}",
                               file=path, hint=discard or hint)
        key = os.path.realpath(path)
        if key in written:
            other, other_option = written[key]
            raise SurgeonError(f"{other} and {what} would both be written to {path}",
                               hint=f"choose another {other_option}" if other_option else hint)
        written[key] = (what, option)
        planned.append((path, what, hint, (key, (status.st_dev, status.st_ino) if status is not None else None)))
    sources = [(p, what) for p, what in inputs if p is not None]
    existing = any(identity[1] is not None for *_, identity in planned)
    for model, what in models:  # data files are read from the model: only worth it when an output exists
        if model is not None:
            sources += model_inputs(model_files(model) if existing else [Path(model)], what)
    sources = [(Path(p), what, _identity(p)) for p, what in sources]
    for path, what, hint, identity in planned:
        for source, source_what, source_identity in sources:
            if _same(identity, source_identity):
                shown = "" if os.path.normpath(path) == os.path.normpath(source) else f" {path}"
                raise SurgeonError(f"refusing to overwrite {source_what} {source} with {what}{shown}", hint=hint)


def _check_folder(path: Path, what: str, hint: str | None) -> None:
    """The nearest existing folder above `path` must be a folder (not a file) that this user can write to."""
    for folder in path.parents:
        try:
            status = os.stat(folder)
        except (FileNotFoundError, NotADirectoryError):
            continue  # created on writing (or a file further up, found on the next round)
        except OSError:
            return  # unreadable: let the write report it
        if not stat.S_ISDIR(status.st_mode):
            raise SurgeonError(f"cannot write {what} there: {folder} is a file, not a folder", file=path, hint=hint)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise SurgeonError(f"cannot write {what} there: folder {folder} is not writable", file=path, hint=hint)
        return


def _check_name_lengths(path: Path, what: str, hint: str | None) -> None:
    """Each name in `path` must fit the file system's limit (NAME_MAX, 255 bytes on most), found before any
    folder on the way is made."""
    folder = next((p for p in path.absolute().parents if p.is_dir()), Path("/"))
    try:
        limit = os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return
    for name in path.parts:
        if len(os.fsencode(name)) > limit:
            shown = name if len(name) <= 40 else f"{name[:20]}...{name[-12:]}"
            raise SurgeonError(f"cannot write {what} there: the name '{shown}' is {len(os.fsencode(name))} bytes "
                               f"long, over the file system's limit of {limit}", file=path, hint=hint)


def _identity(path):
    path = Path(path)
    try:
        status = os.stat(path)
    except OSError:
        return os.path.realpath(path), None
    return os.path.realpath(path), (status.st_dev, status.st_ino)


def _same(a, b) -> bool:
    return a[0] == b[0] or (a[1] is not None and a[1] == b[1])


def _kind(mode: int) -> str:
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISFIFO(mode):
        return "a pipe"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "a special file"


def model_files(path) -> list[Path]:
    """A model's files (itself, then its external data) without loading the data; just `path` if unreadable."""
    try:
        return read_model(path, load_external_data=False)[1]
    except ModelError:
        return [Path(path)]


def model_inputs(files, what: str = "the input model") -> list[tuple[Path, str]]:
    """`guard_outputs` inputs for a model's files as `read_model` lists them: the model, then its data files."""
    if not files:
        return []
    model, *data = files
    return [(model, what)] + [(f, f"{what}'s external data") for f in data]


@contextlib.contextmanager
def stdout_to_stderr():
    """Send what is printed on stdout to stderr while the block runs, by native code on file descriptor 1
    and by Python on `sys.stdout` (which need not be fd 1: a capture, a notebook): onnx.checker's C++
    prints "Warning: Model contains experimental ops: ..." and onnxsim "Checking 0/2...", which would
    corrupt a JSON or SARIF report printed there (`surgeon check --format json`, `surgeon run --json`)."""
    import sys

    with contextlib.suppress(AttributeError, OSError, ValueError):
        sys.stdout.flush()  # what was printed before the block stays on stdout
    with contextlib.redirect_stdout(sys.stderr):
        try:
            saved = os.dup(1)
        except OSError:  # no usable fd 1
            yield
            return
        try:
            os.dup2(2, 1)
            yield
        finally:
            _flush_native_stdout()
            os.dup2(saved, 1)
            os.close(saved)


def _flush_native_stdout() -> None:
    import ctypes

    try:
        ctypes.CDLL(None).fflush(None)
    except (OSError, AttributeError):
        pass
