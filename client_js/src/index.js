/**
 * tidings-client: the browser and Node client of the Tidings push server.
 *
 *     import { Tidings } from "tidings-client";
 *     const t = new Tidings("wss://push.example.com/ws", { token: () => fetchToken() });
 *     t.on("notification", (n) => showToast(n));
 *     t.inbox.on("change", (s) => setBadge(s.unread));
 *     t.subscribe("news/+", (msg) => render(msg));
 *
 * See README.md for the API and docs/protocol.md for the wire protocol.
 * @module
 */

export { Tidings } from "./tidings.js";
export { TidingsError, CLIENT_CODES } from "./errors.js";
export { Inbox, InboxState } from "./inbox.js";
export { PushControl, serverOrigin } from "./push.js";
export { Preferences } from "./preferences.js";
export { Ledger, BoundedSet } from "./ledger.js";
export { backoffDelay } from "./backoff.js";
export { matches, isWildcard } from "./topics.js";
export { Core, SUBPROTOCOLS, tokenSubject } from "./core.js";
