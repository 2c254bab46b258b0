// A real third-party client for the interop test: Node's built-in
// WebSocket (node --experimental-websocket). Prints OK and the negotiated
// extensions, or exits 1.
const url = process.argv[2];
const ws = new WebSocket(url);
ws.binaryType = "arraybuffer";
const text = "hello κόσμε";
const data = new Uint8Array(100000).map((_, i) => i % 256);
let step = 0;
const fail = (why) => { console.error("FAIL", why); process.exit(1); };
setTimeout(() => fail("timeout"), 10000);
ws.onopen = () => ws.send(text);
ws.onerror = (ev) => fail("error " + (ev.message || ev.type));
ws.onmessage = (ev) => {
  if (step === 0) {
    if (ev.data !== text) fail("text echo " + ev.data);
    step = 1;
    ws.send(data);
    return;
  }
  const got = new Uint8Array(ev.data);
  if (got.length !== data.length || got.some((b, i) => b !== data[i])) fail("binary echo");
  ws.close(1000, "done");
};
ws.onclose = (ev) => {
  if (step !== 1 || ev.code !== 1000) fail("closed early with " + ev.code);
  console.log("OK", ws.extensions);
  process.exit(0);
};
