/**
 * Topic filters, as the server reads them (docs/protocol.md, "Topics"):
 * `+` matches one level, `#` (last level only) that level and everything
 * below; filters starting with a wildcard do not match topics starting with `$`.
 * @module
 */

/**
 * @param {string} filter
 * @returns {boolean} whether `filter` has a wildcard level
 */
export function isWildcard(filter) {
  return filter.split("/").some((level) => level === "+" || level === "#");
}

/**
 * @param {string} filter a topic filter
 * @param {string} topic a topic name
 * @returns {boolean} whether `filter` matches `topic`
 */
export function matches(filter, topic) {
  const f = filter.split("/");
  const t = topic.split("/");
  if ((f[0] === "+" || f[0] === "#") && topic.startsWith("$")) return false;
  for (let i = 0; i < f.length; i++) {
    if (f[i] === "#") return i === f.length - 1;
    if (i >= t.length) return false;
    if (f[i] !== "+" && f[i] !== t[i]) return false;
  }
  return f.length === t.length;
}
