/**
 * Reconnect delays: exponential backoff with full jitter.
 *
 * docs/protocol.md, "Close codes": reconnect with exponential backoff and
 * jitter. Full jitter (a uniform draw between 0 and the capped exponential)
 * spreads the reconnects of many clients after a server restart, so they do
 * not arrive in waves.
 * @module
 */

/**
 * The delay before reconnect attempt `attempt` (0 for the first).
 * @param {number} attempt failed attempts since the last successful connect
 * @param {number} min the first cap, in ms (`minBackoff`)
 * @param {number} max the largest cap, in ms (`maxBackoff`)
 * @param {() => number} [random] a source of uniform numbers in [0, 1)
 * @returns {number} ms, in [0, min(max, min * 2^attempt))
 */
export function backoffDelay(attempt, min, max, random = Math.random) {
  const cap = Math.min(max, min * 2 ** Math.min(Math.max(attempt, 0), 40));
  return random() * cap;
}
