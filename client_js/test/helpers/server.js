/**
 * A real Tidings server for the client's tests: `python -m tidings.cli serve`
 * on free loopback ports with a temp data folder, in dev mode (no API keys
 * configured, so `GET /dev/token` exists and a dev API key is made and kept
 * in the data folder). It can be stopped with SIGTERM and started again on
 * the same ports and data folder (a server restart).
 *
 * Waits scale from WAIT (seconds; TIDINGS_TEST_WAIT, as in tests/conftest.py).
 */

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";

export const WAIT = Number(process.env.TIDINGS_TEST_WAIT || "5") * 1000;
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");
const PYTHON = process.env.TIDINGS_PYTHON || process.env.PYTHON || "python3";

/** @returns {Promise<number>} a port free on 127.0.0.1 right now */
export function freePort() {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once("error", rej);
    s.listen(0, "127.0.0.1", () => {
      const { port } = /** @type {import("node:net").AddressInfo} */ (s.address());
      s.close(() => res(port));
    });
  });
}

/**
 * Wait until `check()` returns a truthy value (polled), or fail after `ms`.
 * @template T
 * @param {() => T | Promise<T>} check
 * @param {string} what for the failure message
 * @param {number} [ms]
 * @returns {Promise<T>}
 */
export async function until(check, what, ms = WAIT) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out after ${ms} ms waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export class TestServer {
  /** @param {{name?: string, env?: Record<string, string>}} [options] env: more TIDINGS_* settings */
  constructor(options = {}) {
    this.dir = mkdtempSync(join(tmpdir(), "tidings-js-"));
    this.name = options.name ?? "js-node";
    this.env = options.env ?? {};
    /** @type {import("node:child_process").ChildProcess | null} */
    this.proc = null;
    this.output = "";
    this.wsPort = 0;
    this.apiPort = 0;
    this.mqttPort = 0;
  }

  get wsUrl() { return `ws://127.0.0.1:${this.wsPort}/ws`; }
  get pageUrl() { return `http://127.0.0.1:${this.wsPort}`; }
  get apiUrl() { return `http://127.0.0.1:${this.apiPort}`; }

  /** The dev API key the server made for its data folder. */
  get apiKey() {
    return JSON.parse(readFileSync(join(this.dir, "data", "secrets.json"), "utf8")).dev_api_key;
  }

  /** Start (or start again, on the same ports and data folder); resolves when it serves. */
  async start() {
    if (!this.wsPort) {
      this.wsPort = await freePort();
      this.apiPort = await freePort();
      this.mqttPort = await freePort();
    }
    const env = { ...process.env };
    for (const key of Object.keys(env)) if (key.startsWith("TIDINGS_")) delete env[key];
    Object.assign(env, {
      TIDINGS_WS_HOST: "127.0.0.1", TIDINGS_WS_PORT: String(this.wsPort),
      TIDINGS_API_HOST: "127.0.0.1", TIDINGS_API_PORT: String(this.apiPort),
      TIDINGS_MQTT_HOST: "127.0.0.1", TIDINGS_MQTT_PORT: String(this.mqttPort),
      TIDINGS_STORE_PATH: join(this.dir, "data"), TIDINGS_NODE_NAME: this.name,
      TIDINGS_NODE_SHUTDOWN_TIMEOUT: "2",
    }, this.env);
    const proc = spawn(PYTHON, ["-m", "tidings.cli", "serve"], {
      cwd: ROOT, env, stdio: ["ignore", "pipe", "pipe"] });
    this.proc = proc;
    proc.stdout.on("data", (d) => { this.output += d; });
    proc.stderr.on("data", (d) => { this.output += d; });
    const exited = new Promise((res) => proc.once("exit", res));
    await Promise.race([
      until(async () => (await fetch(`${this.apiUrl}/healthz`)).ok, "the server's /healthz", 4 * WAIT),
      exited.then((code) => { throw new Error(`the server exited (${code}):\n${this.output}`); }),
    ]);
  }

  /** SIGTERM, then wait for the process to end (it tells clients to reconnect). */
  async stop() {
    const proc = this.proc;
    if (!proc || proc.exitCode !== null) return;
    const exited = new Promise((res) => proc.once("exit", res));
    proc.kill("SIGTERM");
    const timer = setTimeout(() => proc.kill("SIGKILL"), 3 * WAIT);
    await exited;
    clearTimeout(timer);
    this.proc = null;
  }

  /** Stop and remove the data folder. */
  async dispose() {
    await this.stop();
    rmSync(this.dir, { recursive: true, force: true });
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {any} [body]
   */
  async api(method, path, body) {
    const res = await fetch(this.apiUrl + path, {
      method,
      headers: { Authorization: `Bearer ${this.apiKey}`, "Content-Type": "application/json" },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`${method} ${path}: ${res.status} ${text}`);
    return text ? JSON.parse(text) : null;
  }

  /** @param {string} user @returns {Promise<string>} a dev token (may publish to demo/# and news/#) */
  async devToken(user) {
    const res = await fetch(`${this.pageUrl}/dev/token?user=${encodeURIComponent(user)}`);
    if (!res.ok) throw new Error(`/dev/token: ${res.status}`);
    return (await res.json()).token;
  }

  /**
   * @param {string} user
   * @param {Record<string, any>} fields title, body, ...
   * @returns {Promise<string>} the notification id
   */
  async notify(user, fields) {
    return (await this.api("POST", "/v1/notify", { users: [user], ...fields })).id;
  }

  /** @param {string} topic @param {any} data */
  async publish(topic, data) {
    return (await this.api("POST", "/v1/publish", { topic, data })).offset;
  }

  /** @param {string} user @returns {Promise<number>} */
  async unread(user) {
    return (await this.api("GET", `/v1/users/${encodeURIComponent(user)}/unread`)).unread;
  }

  /** @param {string} id @returns {Promise<any>} `GET /v1/notifications/{id}/stats` */
  async stats(id) {
    return this.api("GET", `/v1/notifications/${encodeURIComponent(id)}/stats`);
  }

  /** @param {string} user @returns {Promise<any[]>} */
  async devices(user) {
    return (await this.api("GET", `/v1/users/${encodeURIComponent(user)}/devices`)).devices;
  }

  /** @returns {Promise<number>} `tidings_ws_connections` from /metrics */
  async wsConnections() {
    const text = await (await fetch(`${this.apiUrl}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith("tidings_ws_connections "));
    if (!line) throw new Error("no tidings_ws_connections in /metrics");
    return Number(line.split(" ")[1]);
  }
}
