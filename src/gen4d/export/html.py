"""One self-contained HTML page that plays an animated GLB: for sharing a result as a single file.

The page embeds the GLB (base64) and a small WebGL player written for it: it reads the glTF JSON and binary chunk,
blends the morph targets with the weights of the file's animation at the slider's time (LINEAR, as the glTF spec
says), applies the node's transform and draws the mesh with its vertex colours and normals, lit from the camera.
Drag to orbit, wheel to zoom, a time slider and play / pause. No script, font or image is fetched from the network,
so the page opens offline.
"""

from __future__ import annotations

import base64
import html
import json
import os

from ..files import write_text

_PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="gen4d">
<title>__TITLE__</title>
<style>
  html, body { margin: 0; height: 100%; font-family: system-ui, sans-serif; background: __BG__; }
  #view { width: 100%; height: calc(100% - 56px); display: block; touch-action: none; cursor: grab; }
  #bar { height: 56px; display: flex; align-items: center; gap: 12px; padding: 0 16px; box-sizing: border-box;
         background: #f4f4f5; border-top: 1px solid #ddd; }
  #time { flex: 1; }
  button { min-width: 72px; padding: 6px 12px; }
  #label { font-variant-numeric: tabular-nums; min-width: 9em; text-align: right; }
  #error { position: absolute; top: 16px; left: 16px; color: #b00; }
</style>
</head>
<body>
<canvas id="view"></canvas>
<div id="bar">
  <button id="play">pause</button>
  <input id="time" type="range" min="0" max="1000" value="0" step="1" aria-label="time">
  <span id="label"></span>
</div>
<div id="error"></div>
<script id="asset" type="application/json">__ASSET__</script>
<script>
"use strict";
const ASSET = JSON.parse(document.getElementById("asset").textContent);
const FPS = ASSET.fps;

function parseGlb(bytes) {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (dv.getUint32(0, true) !== 0x46546C67) throw new Error("not a binary glTF file");
  const jsonLength = dv.getUint32(12, true);
  const gltf = JSON.parse(new TextDecoder().decode(bytes.subarray(20, 20 + jsonLength)));
  const binStart = 20 + jsonLength + 8;
  const types = {5126: Float32Array, 5125: Uint32Array, 5123: Uint16Array, 5121: Uint8Array};
  const sizes = {SCALAR: 1, VEC2: 2, VEC3: 3, VEC4: 4};
  function accessor(index) {
    const a = gltf.accessors[index];
    const view = gltf.bufferViews[a.bufferView];
    const Type = types[a.componentType];
    const n = a.count * sizes[a.type];
    const start = binStart + (view.byteOffset || 0) + (a.byteOffset || 0);
    const copy = bytes.slice(start, start + n * Type.BYTES_PER_ELEMENT);
    let out = new Type(copy.buffer);
    if (a.normalized) out = Float32Array.from(out, v => v / (Type === Uint8Array ? 255 : 65535));
    return {data: out, size: sizes[a.type], count: a.count};
  }
  return {gltf, accessor};
}

function nodeMatrix(node) {  // column-major 4x4 of a glTF node (matrix, or T * R * S)
  if (node.matrix) return Float32Array.from(node.matrix);
  const [x, y, z, w] = node.rotation || [0, 0, 0, 1];
  const [sx, sy, sz] = node.scale || [1, 1, 1];
  const t = node.translation || [0, 0, 0];
  return Float32Array.from([
    (1 - 2 * (y * y + z * z)) * sx, (2 * (x * y + z * w)) * sx, (2 * (x * z - y * w)) * sx, 0,
    (2 * (x * y - z * w)) * sy, (1 - 2 * (x * x + z * z)) * sy, (2 * (y * z + x * w)) * sy, 0,
    (2 * (x * z + y * w)) * sz, (2 * (y * z - x * w)) * sz, (1 - 2 * (x * x + y * y)) * sz, 0,
    t[0], t[1], t[2], 1]);
}

function multiply(a, b) {  // column-major a * b
  const o = new Float32Array(16);
  for (let c = 0; c < 4; c++) for (let r = 0; r < 4; r++) {
    let s = 0;
    for (let k = 0; k < 4; k++) s += a[k * 4 + r] * b[c * 4 + k];
    o[c * 4 + r] = s;
  }
  return o;
}

function perspective(fovy, aspect, near, far) {
  const f = 1 / Math.tan(fovy / 2), o = new Float32Array(16);
  o[0] = f / aspect; o[5] = f; o[10] = (far + near) / (near - far); o[11] = -1; o[14] = 2 * far * near / (near - far);
  return o;
}

function lookAt(eye, target, up) {
  const sub = (a, b) => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
  const norm = v => { const l = Math.hypot(...v) || 1; return v.map(x => x / l); };
  const cross = (a, b) => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const dot = (a, b) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const f = norm(sub(target, eye)), s = norm(cross(f, up)), u = cross(s, f);
  return Float32Array.from([s[0], u[0], -f[0], 0, s[1], u[1], -f[1], 0, s[2], u[2], -f[2], 0,
                            -dot(s, eye), -dot(u, eye), dot(f, eye), 1]);
}

function start() {
  const bytes = Uint8Array.from(atob(ASSET.glb), c => c.charCodeAt(0));
  const {gltf, accessor} = parseGlb(bytes);
  const node = gltf.nodes.find(n => n.mesh !== undefined);
  const prim = gltf.meshes[node.mesh].primitives[0];
  const base = accessor(prim.attributes.POSITION);
  const baseNormal = prim.attributes.NORMAL !== undefined ? accessor(prim.attributes.NORMAL).data : null;
  const colorAcc = prim.attributes.COLOR_0 !== undefined ? accessor(prim.attributes.COLOR_0) : null;
  const indices = accessor(prim.indices).data;
  const targets = (prim.targets || []).map(t => ({
    position: accessor(t.POSITION).data, normal: t.NORMAL !== undefined ? accessor(t.NORMAL).data : null}));
  let keyTimes = [0], keyWeights = [new Float32Array(targets.length)];
  const anim = (gltf.animations || [])[0];
  if (anim) {
    const sampler = anim.samplers[anim.channels[0].sampler];
    keyTimes = Array.from(accessor(sampler.input).data);
    const w = accessor(sampler.output).data;
    keyWeights = keyTimes.map((_, k) => w.subarray(k * targets.length, (k + 1) * targets.length));
  }
  const duration = keyTimes[keyTimes.length - 1];
  const frames = keyTimes.length;

  const canvas = document.getElementById("view");
  const gl = canvas.getContext("webgl", {antialias: true});
  if (!gl) throw new Error("this browser has no WebGL");
  if (indices instanceof Uint32Array && !gl.getExtension("OES_element_index_uint")) throw new Error("32-bit indices unsupported");
  const vs = `attribute vec3 p; attribute vec3 n; attribute vec3 c; uniform mat4 mvp; uniform mat4 model;
    varying vec3 vn; varying vec3 vc; void main() { gl_Position = mvp * vec4(p, 1.0); vn = mat3(model) * n; vc = c; }`;
  const fs = `precision mediump float; varying vec3 vn; varying vec3 vc; uniform vec3 light;
    void main() { float d = abs(dot(normalize(vn), light)); gl_FragColor = vec4(vc * (0.35 + 0.65 * d), 1.0); }`;
  function shader(type, src) {
    const s = gl.createShader(type); gl.shaderSource(s, src); gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(gl.getShaderInfoLog(s));
    return s;
  }
  const program = gl.createProgram();
  gl.attachShader(program, shader(gl.VERTEX_SHADER, vs));
  gl.attachShader(program, shader(gl.FRAGMENT_SHADER, fs));
  gl.linkProgram(program);
  gl.useProgram(program);
  const V = base.count;
  const positions = new Float32Array(V * 3), normals = new Float32Array(V * 3), colors = new Float32Array(V * 3);
  for (let i = 0; i < V; i++) for (let k = 0; k < 3; k++)
    colors[i * 3 + k] = colorAcc ? colorAcc.data[i * colorAcc.size + k] : 0.8;
  const buffers = {};
  for (const [name, data] of [["p", positions], ["n", normals], ["c", colors]]) {
    buffers[name] = gl.createBuffer();
    gl.bindBuffer(gl.ARRAY_BUFFER, buffers[name]);
    gl.bufferData(gl.ARRAY_BUFFER, data, gl.DYNAMIC_DRAW);
    const loc = gl.getAttribLocation(program, name);
    gl.enableVertexAttribArray(loc);
    gl.vertexAttribPointer(loc, 3, gl.FLOAT, false, 0, 0);
  }
  const ibo = gl.createBuffer();
  gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, ibo);
  gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, indices, gl.STATIC_DRAW);
  const indexType = indices instanceof Uint32Array ? gl.UNSIGNED_INT : gl.UNSIGNED_SHORT;
  gl.enable(gl.DEPTH_TEST);
  const bg = ASSET.background;
  gl.clearColor(bg[0], bg[1], bg[2], 1);

  const model = nodeMatrix(node);
  const lo = gltf.accessors[prim.attributes.POSITION].min, hi = gltf.accessors[prim.attributes.POSITION].max;
  const centre = [0, 1, 2].map(k => (lo[k] + hi[k]) / 2);
  const c4 = multiply(model, Float32Array.from([1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, centre[0], centre[1], centre[2], 1]));
  const target = [c4[12], c4[13], c4[14]];
  const extent = Math.hypot(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]) || 1;
  const cam = {azimuth: 0.6, elevation: 0.35, distance: 1.6 * extent};

  function weightsAt(t) {  // the animation's LINEAR sampler at time t
    if (t <= keyTimes[0]) return keyWeights[0];
    for (let k = 1; k < keyTimes.length; k++) if (t <= keyTimes[k]) {
      const a = (t - keyTimes[k - 1]) / (keyTimes[k] - keyTimes[k - 1]);
      return keyWeights[k].map((w, i) => (1 - a) * keyWeights[k - 1][i] + a * w);
    }
    return keyWeights[keyWeights.length - 1];
  }
  function pose(t) {
    const w = weightsAt(t);
    positions.set(base.data);
    if (baseNormal) normals.set(baseNormal); else normals.fill(0);
    for (let j = 0; j < targets.length; j++) {
      if (!w[j]) continue;
      const dp = targets[j].position, dn = targets[j].normal;
      for (let i = 0; i < V * 3; i++) positions[i] += w[j] * dp[i];
      if (dn) for (let i = 0; i < V * 3; i++) normals[i] += w[j] * dn[i];
    }
    gl.bindBuffer(gl.ARRAY_BUFFER, buffers.p); gl.bufferSubData(gl.ARRAY_BUFFER, 0, positions);
    gl.bindBuffer(gl.ARRAY_BUFFER, buffers.n); gl.bufferSubData(gl.ARRAY_BUFFER, 0, normals);
  }
  function draw() {
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (canvas.width !== w || canvas.height !== h) { canvas.width = w; canvas.height = h; }
    gl.viewport(0, 0, w, h);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    const ce = Math.cos(cam.elevation);
    const dir = [ce * Math.sin(cam.azimuth), Math.sin(cam.elevation), ce * Math.cos(cam.azimuth)];
    const eye = [0, 1, 2].map(k => target[k] + cam.distance * dir[k]);
    const view = lookAt(eye, target, [0, 1, 0]);
    const mvp = multiply(perspective(0.7, w / Math.max(h, 1), extent * 0.01, extent * 20), multiply(view, model));
    gl.uniformMatrix4fv(gl.getUniformLocation(program, "mvp"), false, mvp);
    gl.uniformMatrix4fv(gl.getUniformLocation(program, "model"), false, model);
    gl.uniform3fv(gl.getUniformLocation(program, "light"), dir);
    gl.drawElements(gl.TRIANGLES, indices.length, indexType, 0);
  }

  const slider = document.getElementById("time"), label = document.getElementById("label");
  const button = document.getElementById("play");
  let playing = true, time = 0, last = performance.now();
  function show(t) {
    time = t;
    pose(t);
    slider.value = duration > 0 ? Math.round(1000 * t / duration) : 0;
    const frame = duration > 0 ? Math.round(t * FPS) : 0;
    label.textContent = `frame ${frame + 1} / ${frames}  ${t.toFixed(2)} s`;
    draw();
  }
  slider.addEventListener("input", () => { playing = false; button.textContent = "play"; show(duration * slider.value / 1000); });
  button.addEventListener("click", () => { playing = !playing; button.textContent = playing ? "pause" : "play"; last = performance.now(); });
  let drag = null;
  canvas.addEventListener("pointerdown", e => { drag = [e.clientX, e.clientY]; canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointerup", () => { drag = null; });
  canvas.addEventListener("pointermove", e => {
    if (!drag) return;
    cam.azimuth -= (e.clientX - drag[0]) * 0.01;
    cam.elevation = Math.max(-1.5, Math.min(1.5, cam.elevation + (e.clientY - drag[1]) * 0.01));
    drag = [e.clientX, e.clientY];
    draw();
  });
  canvas.addEventListener("wheel", e => { e.preventDefault(); cam.distance *= Math.exp(e.deltaY * 0.001); draw(); }, {passive: false});
  window.addEventListener("resize", draw);
  function tick(now) {
    if (playing && duration > 0) show((time + (now - last) / 1000) % (duration + 1 / FPS));
    last = now;
    requestAnimationFrame(tick);
  }
  show(0);
  requestAnimationFrame(tick);
  window.gen4dPlayer = {frames, duration, show, get time() { return time; }};
}

try { start(); } catch (e) { document.getElementById("error").textContent = "cannot show the asset: " + e.message; }
</script>
</body>
</html>
"""


def player_html(glb: bytes, title: str = "gen4d", fps: float = 12.0, background=(1.0, 1.0, 1.0)) -> str:
    """The page's text for the animated GLB ``glb`` (bytes), played at ``fps``; ``background``: RGB in [0, 1]."""
    asset = {"glb": base64.b64encode(glb).decode("ascii"), "fps": float(fps), "background": [float(c) for c in background]}
    bg = "#" + "".join(f"{round(255 * min(max(float(c), 0.0), 1.0)):02x}" for c in background)
    # JSON inside <script>: "</" would end the element early; base64 and numbers never contain it, but stay safe
    data = json.dumps(asset).replace("</", "<\\/")
    return _PAGE.replace("__TITLE__", html.escape(title)).replace("__BG__", bg).replace("__ASSET__", data)


def write_player_html(path: str | os.PathLike, glb: bytes, title: str = "gen4d", fps: float = 12.0, background=(1.0, 1.0, 1.0)) -> None:
    """Write :func:`player_html` to ``path`` (atomically)."""
    write_text(path, player_html(glb, title, fps, background))
