// Reference broadcast server on Node's `ws` package (no Tidings logic).
//
//   node bench/refservers/node_ws/server.js PORT [HOST]
//
// Subscribers connect to any path but /publish and get one "ready" text frame
// once registered. Every message received on a /publish connection is sent to
// every subscriber with ws's send(): the idiomatic ws broadcast (ws has no
// broadcast helper; each send frames and writes per client). No compression.
// Prints "READY <port>" once listening; exits on SIGTERM/SIGINT.
'use strict';
const { WebSocketServer } = require('ws');

const port = parseInt(process.argv[2] || '0', 10);
const host = process.argv[3] || '127.0.0.1';
const subscribers = new Set();
const wss = new WebSocketServer({ host, port, perMessageDeflate: false, backlog: 4096,
                                  clientTracking: false });

wss.on('connection', (ws, req) => {
  if (req.url === '/publish') {
    ws.on('message', (data, isBinary) => {
      for (const sub of subscribers) {
        if (sub.readyState === 1) sub.send(data, { binary: isBinary });
      }
    });
    return;
  }
  subscribers.add(ws);
  ws.on('close', () => subscribers.delete(ws));
  ws.on('error', () => subscribers.delete(ws));
  ws.send('ready');
});

wss.on('listening', () => {
  process.stdout.write(`READY ${wss.address().port}\n`);
});

const stop = () => { wss.close(); process.exit(0); };
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
