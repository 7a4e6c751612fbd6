// Cloudflare's own local R2 (miniflare) serving the S3 API on loopback, for syncbridge's tests.
// Its answers (status codes, error XML, header screening) were captured from a real R2 bucket.
// Usage: node server.mjs CONFIG.json   (CONFIG: {port, persist, buckets: [{name, accessKeyId, secretAccessKey}]})
// Prints "READY <port>" once it listens; stops on SIGTERM.
import { readFileSync } from "node:fs";
import { Miniflare } from "miniflare";

const config = JSON.parse(readFileSync(process.argv[2], "utf8"));
const r2Buckets = {};
config.buckets.forEach((b, i) => {
  r2Buckets[`B${i}`] = { id: b.name, s3Credentials: { accessKeyId: b.accessKeyId, secretAccessKey: b.secretAccessKey } };
});
const mf = new Miniflare({
  modules: true,
  script: "export default { fetch() { return new Response('') } }",
  r2Buckets,
  r2Persist: config.persist,
  host: "127.0.0.1",
  port: config.port,
});
const url = await mf.ready;
process.stdout.write(`READY ${url.port}\n`);
const stop = async () => { await mf.dispose(); process.exit(0); };
process.on("SIGTERM", stop);
process.on("SIGINT", stop);
