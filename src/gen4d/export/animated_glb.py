"""One binary glTF 2.0 file (.glb) holding a whole fixed-topology mesh animation as morph targets.

Layout: frame 0 is the base mesh (POSITION, optional NORMAL, COLOR_0, indices). Frame k >= 1 is morph target
``k - 1`` whose POSITION (and NORMAL) are displacements from the base. One animation drives the node's morph
weights: keyframe k is at time ``k / fps`` and has weight 1 on frame k's target and 0 elsewhere (all zero at
k = 0); LINEAR interpolation blends consecutive frames, which is exactly linear interpolation of positions.
NORMAL holds each frame's unit area-weighted vertex normals (:func:`vertex_normals`), the base frame's as the
attribute and the others as displacements, so shading follows the motion.

Axes: gen4d's world is z-up, glTF's is y-up (+y up, +z front). Positions are stored in gen4d's frame and the mesh
node carries the rotation between the two (-90 degrees about x: gen4d's +z becomes glTF's +y, +y becomes -z), as
Blender's own exporter does, so glTF viewers show the asset upright and Blender's importer brings it back z-up.

The glTF JSON and binary chunk are written directly (no glTF library at run time). Every bufferView holds one
accessor, starts on a 4-byte boundary and declares its target; every accessor carries exact min/max.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from .. import Gen4DError
from ..files import atomic_path

__all__ = ["AnimatedGLB", "write_animated_glb", "read_animated_glb", "vertex_normals"]

_GLB_MAGIC = 0x46546C67  # "glTF"
Z_UP_TO_Y_UP = (-float(np.sqrt(0.5)), 0.0, 0.0, float(np.sqrt(0.5)))
"""The mesh node's rotation, a unit quaternion (x, y, z, w): -90 degrees about x."""
_CHUNK_JSON = 0x4E4F534A  # "JSON"
_CHUNK_BIN = 0x004E4942  # "BIN\0"
_ARRAY_BUFFER = 34962
_ELEMENT_ARRAY_BUFFER = 34963
_FLOAT = 5126
_UNSIGNED_SHORT = 5123
_UNSIGNED_INT = 5125
_TRIANGLES = 4
_NUM_COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4}
_DTYPES = {_FLOAT: np.dtype("<f4"), _UNSIGNED_SHORT: np.dtype("<u2"), _UNSIGNED_INT: np.dtype("<u4"), 5121: np.dtype("u1")}


class AnimatedGLB(NamedTuple):
    """Contents of an animated GLB as written by :func:`write_animated_glb`.

    base: ``[V, 3]`` base (frame 0) positions. targets: ``[T, V, 3]`` POSITION displacements (T = frames - 1;
    ``base + targets[k - 1]`` is frame k). times: ``[K]`` keyframe times in seconds. weights: ``[K, T]`` morph
    weights per keyframe. All float32. rotation: the mesh node's rotation quaternion (x, y, z, w).
    """

    base: np.ndarray
    targets: np.ndarray
    times: np.ndarray
    weights: np.ndarray
    rotation: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 1.0)


class _Builder:
    """Accumulates the binary buffer, bufferViews and accessors of one glTF asset."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.length = 0
        self.buffer_views: list[dict] = []
        self.accessors: list[dict] = []

    def add(self, array: np.ndarray, accessor_type: str, component_type: int, target: int | None, minmax: bool) -> int:
        """Append ``array`` (rows = elements) as its own 4-byte-aligned bufferView + accessor; returns the accessor index."""
        data = np.ascontiguousarray(array, dtype=_DTYPES[component_type])
        raw = data.tobytes()
        view: dict = {"buffer": 0, "byteOffset": self.length, "byteLength": len(raw)}
        if target is not None:
            view["target"] = target
        self.chunks.append(raw)
        self.length += len(raw)
        pad = (-self.length) % 4  # the next view (and the BIN chunk) must start on a 4-byte boundary
        if pad:
            self.chunks.append(b"\x00" * pad)
            self.length += pad
        self.buffer_views.append(view)
        count = data.shape[0]
        accessor: dict = {
            "bufferView": len(self.buffer_views) - 1,
            "componentType": component_type,
            "count": int(count),
            "type": accessor_type,
        }
        if minmax:
            flat = data.reshape(count, _NUM_COMPONENTS[accessor_type])
            # Python floats of the float32 values: JSON keeps them exact, so the validator's comparison is exact.
            cast = float if component_type == _FLOAT else int
            accessor["min"] = [cast(x) for x in flat.min(axis=0)]
            accessor["max"] = [cast(x) for x in flat.max(axis=0)]
        self.accessors.append(accessor)
        return len(self.accessors) - 1

    def add_bytes(self, raw: bytes) -> int:
        """Append raw bytes (an image) as its own 4-byte-aligned bufferView; returns the bufferView index."""
        self.buffer_views.append({"buffer": 0, "byteOffset": self.length, "byteLength": len(raw)})
        self.chunks.append(raw)
        self.length += len(raw)
        pad = (-self.length) % 4
        if pad:
            self.chunks.append(b"\x00" * pad)
            self.length += pad
        return len(self.buffer_views) - 1

    def binary(self) -> bytes:
        return b"".join(self.chunks)


def _glb_bytes(gltf: dict, binary: bytes) -> bytes:
    """Pack JSON + BIN chunks into a GLB container (chunks padded to 4 bytes: JSON with spaces, BIN with zeros)."""
    json_bytes = json.dumps(gltf, separators=(",", ":"), allow_nan=False).encode("utf-8")
    json_bytes += b" " * ((-len(json_bytes)) % 4)
    binary += b"\x00" * ((-len(binary)) % 4)
    total = 12 + 8 + len(json_bytes) + (8 + len(binary) if binary else 0)
    out = [struct.pack("<III", _GLB_MAGIC, 2, total), struct.pack("<II", len(json_bytes), _CHUNK_JSON), json_bytes]
    if binary:
        out += [struct.pack("<II", len(binary), _CHUNK_BIN), binary]
    return b"".join(out)


def vertex_normals(vertices, faces) -> np.ndarray:
    """Unit area-weighted vertex normals ``[V, 3]`` float32; vertices without faces get ``(0, 0, 1)``."""
    v = torch.as_tensor(np.asarray(vertices), dtype=torch.float64)
    f = torch.as_tensor(np.asarray(faces).astype(np.int64))
    face_n = torch.linalg.cross(v[f[:, 1]] - v[f[:, 0]], v[f[:, 2]] - v[f[:, 0]])  # length = 2 * area
    n = torch.zeros_like(v)
    for c in range(3):
        n.index_add_(0, f[:, c], face_n)
    length = n.norm(dim=1, keepdim=True)
    n = torch.where(length > 1e-20, n / length.clamp_min(1e-300), torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64))
    return n.float().numpy()


def write_animated_glb(
    path: str | os.PathLike,
    vertices_per_frame,
    faces,
    colors,
    fps: float = 24.0,
    normals: bool = True,
    name: str = "gen4d",
    uvs=None,
    texture_png: bytes | None = None,
) -> None:
    """Write a fixed-topology mesh sequence as one animated GLB (morph targets + a weights animation).

    vertices_per_frame: ``[F, V, 3]`` positions per frame (world units). faces: ``[Fc, 3]`` vertex indices,
    counter-clockwise from outside. colors: ``[V, 3]`` or ``[V, 4]`` RGB(A) in [0, 1] (clamped).
    fps: frames per second (keyframe k is at ``k / fps`` s). normals: also write unit base normals and per-frame
    normal displacements, so shading follows the motion. With F == 1 a static mesh without animation is written.
    uvs + texture_png: a UV-textured mesh instead (``[V, 2]`` TEXCOORD_0, origin top-left as glTF's, and the PNG
    bytes of the base colour texture, embedded); ``colors`` is then None.
    """
    verts = np.asarray(vertices_per_frame, dtype=np.float32)
    faces = np.asarray(faces)
    textured = texture_png is not None
    if textured == (colors is not None) or textured != (uvs is not None):
        raise ValueError("give colors, or uvs with texture_png")
    cols = np.clip(np.asarray(colors if not textured else np.zeros((verts.shape[1], 3)), dtype=np.float32), 0.0, 1.0)
    if verts.ndim != 3 or verts.shape[2] != 3 or verts.shape[0] < 1 or verts.shape[1] < 1:
        raise ValueError(f"vertices_per_frame must be [F>=1, V>=1, 3], got {verts.shape}")
    num_frames, num_verts = verts.shape[:2]
    if faces.ndim != 2 or faces.shape[1] != 3 or len(faces) == 0:
        raise ValueError(f"faces must be [Fc>=1, 3], got {faces.shape}")
    if faces.min() < 0 or faces.max() >= num_verts:
        raise ValueError(f"face indices must lie in [0, {num_verts}), got [{faces.min()}, {faces.max()}]")
    if cols.shape not in ((num_verts, 3), (num_verts, 4)):
        raise ValueError(f"colors must be [{num_verts}, 3|4], got {cols.shape}")
    if not np.isfinite(verts).all():
        raise Gen4DError("animated mesh has non-finite vertex positions")
    if not fps > 0:
        raise ValueError(f"fps must be > 0, got {fps}")

    b = _Builder()
    base = verts[0]
    attributes = {"POSITION": b.add(base, "VEC3", _FLOAT, _ARRAY_BUFFER, minmax=True)}
    frame_normals = None
    if normals:
        frame_normals = np.stack([vertex_normals(v, faces) for v in verts])
        attributes["NORMAL"] = b.add(frame_normals[0], "VEC3", _FLOAT, _ARRAY_BUFFER, minmax=True)
    material: dict = {"name": "vertex_colors", "pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 1.0}}
    extra: dict = {}
    if textured:
        uv = np.asarray(uvs, dtype=np.float32)
        if uv.shape != (num_verts, 2):
            raise ValueError(f"uvs must be [{num_verts}, 2], got {uv.shape}")
        attributes["TEXCOORD_0"] = b.add(uv, "VEC2", _FLOAT, _ARRAY_BUFFER, minmax=True)
        extra = {
            "images": [{"bufferView": b.add_bytes(texture_png), "mimeType": "image/png"}],
            "samplers": [{"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}],  # linear, clamped
            "textures": [{"sampler": 0, "source": 0}],
        }
        material = {"name": "texture", "pbrMetallicRoughness": {"baseColorTexture": {"index": 0}, "metallicFactor": 0.0, "roughnessFactor": 1.0}}
    else:
        attributes["COLOR_0"] = b.add(cols, "VEC4" if cols.shape[1] == 4 else "VEC3", _FLOAT, _ARRAY_BUFFER, minmax=True)
    index_type = _UNSIGNED_SHORT if num_verts < 65535 else _UNSIGNED_INT  # 65535 is the reserved restart value
    indices = b.add(faces.reshape(-1), "SCALAR", index_type, _ELEMENT_ARRAY_BUFFER, minmax=True)

    targets = []
    for k in range(1, num_frames):
        target = {"POSITION": b.add(verts[k] - base, "VEC3", _FLOAT, _ARRAY_BUFFER, minmax=True)}
        if frame_normals is not None:
            target["NORMAL"] = b.add(frame_normals[k] - frame_normals[0], "VEC3", _FLOAT, _ARRAY_BUFFER, minmax=True)
        targets.append(target)

    primitive: dict = {"attributes": attributes, "indices": indices, "mode": _TRIANGLES, "material": 0}
    mesh: dict = {"name": name, "primitives": [primitive]}
    gltf: dict = {
        "asset": {"version": "2.0", "generator": "gen4d"},
        # glTF's default material is fully metallic, which renders vertex colours dark without an environment
        # map; a rough dielectric shows them as they are.
        "materials": [material],
        **extra,
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": name, "rotation": list(Z_UP_TO_Y_UP)}],
        "meshes": [mesh],
    }
    if targets:
        primitive["targets"] = targets
        mesh["weights"] = [0.0] * len(targets)
        mesh["extras"] = {"targetNames": [f"frame_{k:04d}" for k in range(1, num_frames)]}  # read by three.js, Blender
        times = np.arange(num_frames, dtype=np.float32) / np.float32(fps)
        weights = np.zeros((num_frames, len(targets)), dtype=np.float32)
        weights[np.arange(1, num_frames), np.arange(len(targets))] = 1.0
        # Animation data is read by the CPU, not bound as vertex data: no bufferView target.
        t_acc = b.add(times, "SCALAR", _FLOAT, None, minmax=True)  # input accessors require min/max
        w_acc = b.add(weights.reshape(-1), "SCALAR", _FLOAT, None, minmax=False)
        gltf["animations"] = [
            {
                "name": "morph",
                "samplers": [{"input": t_acc, "output": w_acc, "interpolation": "LINEAR"}],
                "channels": [{"sampler": 0, "target": {"node": 0, "path": "weights"}}],
            }
        ]
    binary = b.binary()
    gltf["buffers"] = [{"byteLength": len(binary)}]
    gltf["bufferViews"] = b.buffer_views
    gltf["accessors"] = b.accessors
    data = _glb_bytes(gltf, binary)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


# --------------------------------------------------------------------------------------------------- reading
def _parse_glb(data: bytes) -> tuple[dict, bytes]:
    if len(data) < 20:
        raise Gen4DError("not a GLB file: too short")
    magic, version, length = struct.unpack_from("<III", data, 0)
    if magic != _GLB_MAGIC or version != 2:
        raise Gen4DError("not a glTF 2.0 binary file (bad magic or version)")
    offset, gltf, binary = 12, None, b""
    while offset + 8 <= min(length, len(data)):
        chunk_len, chunk_type = struct.unpack_from("<II", data, offset)
        chunk = data[offset + 8 : offset + 8 + chunk_len]
        if chunk_type == _CHUNK_JSON and gltf is None:
            gltf = json.loads(chunk.decode("utf-8"))
        elif chunk_type == _CHUNK_BIN and not binary:
            binary = chunk
        offset += 8 + chunk_len
    if gltf is None:
        raise Gen4DError("GLB file has no JSON chunk")
    return gltf, binary


def _read_accessor(gltf: dict, binary: bytes, index: int) -> np.ndarray:
    """Accessor data as ``[count, components]`` (or ``[count]`` for scalars); no sparse support."""
    acc = gltf["accessors"][index]
    dtype = _DTYPES[acc["componentType"]]
    ncomp = _NUM_COMPONENTS[acc["type"]]
    count = acc["count"]
    if "bufferView" not in acc:  # glTF: an accessor without a bufferView is all zeros
        out = np.zeros((count, ncomp), dtype=dtype)
    else:
        view = gltf["bufferViews"][acc["bufferView"]]
        start = view.get("byteOffset", 0) + acc.get("byteOffset", 0)
        elem = dtype.itemsize * ncomp
        stride = view.get("byteStride", elem)
        buf = np.frombuffer(binary, dtype=np.uint8, count=stride * (count - 1) + elem if count else 0, offset=start)
        rows = np.lib.stride_tricks.as_strided(buf, shape=(count, elem), strides=(stride, 1)) if count else buf.reshape(0, elem)
        out = np.ascontiguousarray(rows).view(dtype).reshape(count, ncomp)
    return out[:, 0] if ncomp == 1 else out


def read_animated_glb(path: str | os.PathLike) -> AnimatedGLB:
    """Read back the first primitive's base positions and POSITION morph targets and the first animation's
    weights sampler of a GLB (as written by :func:`write_animated_glb`). Without an animation, times and weights
    are empty.
    """
    path = Path(path)
    if not path.is_file():
        raise Gen4DError(f"GLB file not found: {path}")
    gltf, binary = _parse_glb(path.read_bytes())
    prim = gltf["meshes"][0]["primitives"][0]
    base = _read_accessor(gltf, binary, prim["attributes"]["POSITION"]).astype(np.float32)
    targets = [_read_accessor(gltf, binary, t["POSITION"]).astype(np.float32) for t in prim.get("targets", [])]
    targets_arr = np.stack(targets) if targets else np.zeros((0,) + base.shape, np.float32)
    times = np.zeros(0, np.float32)
    weights = np.zeros((0, len(targets)), np.float32)
    for anim in gltf.get("animations", []):
        for channel in anim["channels"]:
            if channel["target"].get("path") == "weights":
                sampler = anim["samplers"][channel["sampler"]]
                times = _read_accessor(gltf, binary, sampler["input"]).astype(np.float32)
                weights = _read_accessor(gltf, binary, sampler["output"]).astype(np.float32).reshape(len(times), -1)
                break
        if len(times):
            break
    node = next((n for n in gltf.get("nodes", []) if n.get("mesh") == 0), {})
    return AnimatedGLB(base, targets_arr, times, weights, tuple(float(v) for v in node.get("rotation", (0.0, 0.0, 0.0, 1.0))))
