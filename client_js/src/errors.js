/**
 * Typed errors: every rejected promise and every `error` event carries a
 * {@link TidingsError} whose `code` is the server's stable error code
 * (docs/protocol.md, "Errors") or one of the client's own codes below.
 * @module
 */

/**
 * Codes the client itself produces (the server's codes pass through as sent).
 * - `queue_full`: a command was made while disconnected and the queue already
 *   holds `queueLimit` commands;
 * - `connection_lost`: a `publish` was sent but the connection ended before its
 *   reply, so whether it happened is unknown (it is not sent again);
 * - `closed`: the client was closed;
 * - `unauthorized`: the server refused the token (close 4001/4003) and the
 *   token callback gave no new one.
 */
export const CLIENT_CODES = Object.freeze(["queue_full", "connection_lost", "closed", "unauthorized"]);

export class TidingsError extends Error {
  /**
   * @param {string} code stable, for programs (e.g. `forbidden`, `bad_topic`)
   * @param {string} [message] for humans
   * @param {{op?: string, closeCode?: number}} [details]
   */
  constructor(code, message, details = {}) {
    super(message || code);
    this.name = "TidingsError";
    /** @type {string} */
    this.code = code;
    /** @type {string | undefined} the command that failed */
    this.op = details.op;
    /** @type {number | undefined} the WebSocket close code, for connection errors */
    this.closeCode = details.closeCode;
  }

  /**
   * The error of a server reply `{ok: false, error: {code, message}}`.
   * @param {any} error the reply's `error` object
   * @param {string} [op]
   * @returns {TidingsError}
   */
  static fromReply(error, op) {
    const code = typeof error?.code === "string" ? error.code : "internal";
    const message = typeof error?.message === "string" ? error.message : code;
    return new TidingsError(code, message, { op });
  }

  /** @returns {{code: string, message: string, op?: string, closeCode?: number}} a cloneable form */
  toJSON() {
    return { code: this.code, message: this.message, op: this.op, closeCode: this.closeCode };
  }

  /**
   * @param {{code: string, message: string, op?: string, closeCode?: number}} obj
   * @returns {TidingsError}
   */
  static fromJSON(obj) {
    return new TidingsError(obj.code, obj.message, { op: obj.op, closeCode: obj.closeCode });
  }
}
