// Run a TF.js graph model (model.json + shards) with plain @tensorflow/tfjs (CPU backend, no tfjs-node) on a
// batch of images and write one output tensor as raw little-endian float32.
//
//   NODE_PATH=/work/npmwork/node_modules node tools/tfjs_reference.mjs MODEL.json IN.f32 N OUT.f32 OUTPUT_NODE
//
// IN.f32: N x H x W x 3 float32 (the model's own input units; H, W from the model's input signature).
// Needs the npm packages @tensorflow/tfjs-core, @tensorflow/tfjs-backend-cpu and @tensorflow/tfjs-converter
// (4.22.0), resolved through NODE_PATH or a node_modules folder next to the caller.
import { createRequire } from 'node:module';
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';

const require = createRequire(join(process.cwd(), 'noop.js'));
const tf = require('@tensorflow/tfjs-core');
require('@tensorflow/tfjs-backend-cpu');
const tfconv = require('@tensorflow/tfjs-converter');

const [modelPath, inPath, nStr, outPath, outputName] = process.argv.slice(2);
if (!outputName) {
  console.error('usage: tfjs_reference.mjs MODEL.json IN.f32 N OUT.f32 OUTPUT_NODE');
  process.exit(2);
}
await tf.setBackend('cpu');
await tf.ready();
const json = JSON.parse(readFileSync(modelPath, 'utf8'));
const specs = [];
const buffers = [];
for (const group of json.weightsManifest) {
  specs.push(...group.weights);
  for (const p of group.paths) buffers.push(readFileSync(join(dirname(modelPath), p)));
}
const all = Buffer.concat(buffers);
const weightData = all.buffer.slice(all.byteOffset, all.byteOffset + all.byteLength);
const handler = tf.io.fromMemory({
  modelTopology: json.modelTopology, weightSpecs: specs, weightData,
  format: json.format, generatedBy: json.generatedBy, convertedBy: json.convertedBy,
  signature: json.signature, userDefinedMetadata: json.userDefinedMetadata,
});
const model = await tfconv.loadGraphModel(handler);
const shape = model.inputs[0].shape; // [-1, H, W, 3]
const n = parseInt(nStr, 10);
const raw = readFileSync(inPath);
const data = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
const per = shape[1] * shape[2] * shape[3];
if (data.length !== n * per) throw new Error(`input has ${data.length} floats, expected ${n}x${per}`);
const chunks = [];
for (let i = 0; i < n; i++) {
  const x = tf.tensor4d(data.subarray(i * per, (i + 1) * per), [1, shape[1], shape[2], shape[3]]);
  const y = model.execute(x, outputName);
  chunks.push(Float32Array.from(await y.data()));
  tf.dispose([x, y]);
}
const dim = chunks[0].length;
const out = new Float32Array(n * dim);
chunks.forEach((c, i) => out.set(c, i * dim));
writeFileSync(outPath, Buffer.from(out.buffer));
console.log(JSON.stringify({ tfjs: tf.version_core, backend: tf.getBackend(), n, dim, input: shape, output: outputName }));
