// Types of tidings-client (the sources are JSDoc-typed ES modules in src/).

export type Offset = string;

/** Stable error codes: the server's (docs/protocol.md, "Errors") and the client's own. */
export type ErrorCode =
  | "malformed" | "unknown_op" | "bad_request" | "unsupported" | "bad_topic" | "forbidden"
  | "too_many_subscriptions" | "too_large" | "not_found" | "unavailable" | "internal"
  | "connect_required" | "token_missing" | "token_invalid" | "token_expired"
  | "queue_full" | "connection_lost" | "closed" | "unauthorized" | "disconnected"
  | "token_unavailable" | "unsubscribed"
  | (string & {});

export declare const CLIENT_CODES: readonly string[];

export declare class TidingsError extends Error {
  constructor(code: ErrorCode, message?: string, details?: { op?: string; closeCode?: number });
  readonly name: "TidingsError";
  /** Stable, for programs. */
  code: ErrorCode;
  /** The command that failed. */
  op?: string;
  /** The WebSocket close code, for connection errors. */
  closeCode?: number;
  static fromReply(error: unknown, op?: string): TidingsError;
  toJSON(): { code: string; message: string; op?: string; closeCode?: number };
  static fromJSON(obj: { code: string; message: string; op?: string; closeCode?: number }): TidingsError;
}

export interface MsgpackCodec {
  encode(value: unknown): Uint8Array;
  decode(bytes: Uint8Array): unknown;
}

export interface TidingsOptions {
  /** A JWT, or a function that gets one (called for each connect, and again after a 4001). */
  token: string | (() => string | Promise<string>);
  /** A stable id for this device (browser profile). */
  device?: string;
  /** Default "json". */
  encoding?: "json" | "msgpack";
  /** `import * as msgpack from "@msgpack/msgpack"`, for encoding "msgpack". */
  msgpack?: MsgpackCodec;
  /** First backoff cap in ms (default 500). */
  minBackoff?: number;
  /** Largest backoff cap in ms (default 30000). */
  maxBackoff?: number;
  /** Commands kept while disconnected (default 100). */
  queueLimit?: number;
  /** Inbox items per page (default 20). */
  pageSize?: number;
  /** One connection for all tabs of the origin and user (default true; needs Web Locks + BroadcastChannel). */
  sharedConnection?: boolean;
  /** Connect right after construction (default true). */
  autoConnect?: boolean;
  /** A WebSocket constructor; Node 20 has none: pass the `ws` package's. */
  WebSocket?: unknown;
  /** A Web Locks LockManager (default navigator.locks). */
  locks?: unknown;
  /** A BroadcastChannel constructor (default globalThis.BroadcastChannel). */
  BroadcastChannel?: unknown;
  /** The backoff's random source, for tests (default Math.random). */
  random?: () => number;
}

export interface Session {
  user: string | null;
  device: string;
  node: string;
}

export interface MessagePush {
  type: "message";
  topic: string;
  offset: Offset;
  /** The payload: a JSON value, text, or bytes (msgpack mode). */
  data?: unknown;
  /** Bytes that are not JSON or text, base64 (JSON mode). */
  data_b64?: string;
  retained: boolean;
  ts: number;
}

export interface Notification {
  id: string;
  offset: Offset;
  title: string;
  body: string;
  data: unknown;
  category: string;
  priority: "low" | "normal" | "high";
  media: { image?: string; video?: string; audio?: string } | null;
  ts: number;
  /** The user's unread count right after it (live pushes). */
  unread?: number;
  /** Recovered at connect: its current read state. */
  read?: boolean;
  /** Ids of unread notifications this one replaced (collapse_key). */
  replaces?: string[];
  /** True when it was missed while disconnected and recovered at connect. */
  recovered: boolean;
}

export interface ReadEvent {
  /** "expire": notifications that reached their ttl left the inbox (no device). */
  type: "read" | "unread" | "archive" | "expire";
  ids?: string[];
  all?: boolean;
  unread: number;
  device?: string;
  offset?: Offset;
}

export interface DismissEvent {
  /** Notifications read, archived or expired (on any device of the user). */
  ids: string[];
  all: boolean;
  /** The device that did it ("api" for a backend; null when they expired). */
  device: string | null;
  action: "read" | "archive" | "expire";
}

export interface IncompleteEvent {
  /** "inbox": notifications may be missing (the inbox is reloaded); "topic": messages on `topic`. */
  scope: "inbox" | "topic";
  topic?: string;
  since: unknown;
}

export interface DisconnectedEvent {
  code: number;
  reason: string;
  willRetry: boolean;
}

export interface TidingsEvents {
  connecting: { attempt: number };
  connected: Session & { unread: number };
  disconnected: DisconnectedEvent;
  notification: Notification;
  message: MessagePush;
  read: ReadEvent;
  dismiss: DismissEvent;
  incomplete: IncompleteEvent;
  error: TidingsError;
}

export interface SubscribeReply {
  offset: Offset | null;
  /** The last page's messages: the client follows the server's `next` pages itself
   * and emits every recovered message as a `message` event. */
  recovered: MessagePush[];
  complete: boolean;
  /** True when this tab (or another) already held the filter. */
  shared?: boolean;
}

export interface InboxItem {
  id: string;
  title: string;
  body: string;
  data: unknown;
  category: string;
  priority: string;
  media: unknown;
  ts: number;
  read: boolean;
  archived: boolean;
}

export interface InboxChange {
  items: InboxItem[];
  unread: number;
  hasMore: boolean;
}

export interface MarkReply {
  unread: number;
  /** The ids whose state changed; absent when `all: true` changed more than 1000. */
  changed?: string[];
  /** Set instead of `changed` when an `all: true` change was over 1000 items. */
  all?: boolean;
}

export interface Device {
  device: string;
  edge: "ws" | "mqtt";
  node: string;
  since: number;
}

export declare class Emitter<Events extends Record<string, unknown>> {
  on<K extends keyof Events & string>(name: K, listener: (data: Events[K]) => void): () => void;
  once<K extends keyof Events & string>(name: K, listener: (data: Events[K]) => void): () => void;
  off<K extends keyof Events & string>(name: K, listener: (data: Events[K]) => void): void;
  listenerCount(name: keyof Events & string): number;
}

export declare class Inbox extends Emitter<{ change: InboxChange }> {
  /** Loaded items, newest first. */
  readonly items: InboxItem[];
  /** The server's unread count. */
  readonly unread: number;
  /** Whether loadMore() can fetch older items. */
  readonly hasMore: boolean;
  read(ids: string | string[]): Promise<MarkReply>;
  readAll(): Promise<MarkReply>;
  markUnread(ids: string | string[]): Promise<MarkReply>;
  archive(ids: string | string[]): Promise<MarkReply>;
  /**
   * The user's feedback on a notification in the inbox, counted once per user
   * and notification (the first wins); `recorded` false when already given or
   * not in the inbox. `comment`: at most 500 characters.
   */
  feedback(id: string, reason: FeedbackReason, comment?: string): Promise<{ recorded: boolean }>;
  loadMore(): Promise<InboxItem[]>;
  refresh(): Promise<void>;
}

/** Why a user gives feedback on a notification (docs/notifications.md, "Feedback"). */
export type FeedbackReason = "not_interested" | "too_many" | "wrong_time" | "other";

/** A user's notification preferences (docs/notifications.md, "Preferences"); every key optional. */
export interface NotificationPreferences {
  /** IANA time zone name, e.g. "Europe/Paris". */
  timezone?: string;
  /** BCP 47 language tag that picks a notification's content, e.g. "zh-CN". */
  locale?: string;
  /** Per category: off, or live pushes on these edges only. */
  categories?: Record<string, { enabled?: boolean; edges?: ("ws" | "mqtt")[] }>;
  /** Local "HH:MM" times; `end` at or before `start` runs past midnight; `days` the days it starts on. */
  quiet_hours?: { start: string; end: string; days?: ("mon" | "tue" | "wed" | "thu" | "fri" | "sat" | "sun")[] };
  /** At most this many live pushes per rolling hour / day, per category (only lower than the operator's). */
  caps?: Record<string, { per_hour?: number; per_day?: number }>;
}

export declare class Preferences {
  /** The stored document ({} when the user never set any). */
  get(): Promise<NotificationPreferences>;
  /** Replace the document, or with {merge: true} merge into it (null removes a key); the stored document. */
  set(prefs: { [K in keyof NotificationPreferences]?: NotificationPreferences[K] | null }, options?: { merge?: boolean }): Promise<NotificationPreferences>;
}

export declare class Tidings extends Emitter<TidingsEvents> {
  constructor(url: string, options: TidingsOptions);
  readonly url: string;
  state: "idle" | "connecting" | "connected" | "closed";
  /** Where the connection lives: this tab alone, this tab for all tabs, or another tab. */
  role: null | "solo" | "leader" | "follower";
  session: Session | null;
  readonly inbox: Inbox;
  /** Web Push while the app is closed (docs/push.md). */
  readonly push: PushControl;
  /** The signed-in user's notification preferences. */
  readonly preferences: Preferences;
  connect(): Promise<void>;
  close(): void;
  subscribe(filter: string, handler: (msg: MessagePush) => void): Promise<SubscribeReply>;
  unsubscribe(filter: string, handler?: (msg: MessagePush) => void): Promise<void>;
  publish(topic: string, data: unknown, options?: { retain?: boolean }): Promise<{ offset: Offset }>;
  track(id: string, event: "delivered" | "opened" | "clicked" | "dismissed", action?: string): Promise<{ recorded: boolean }>;
  devices(): Promise<Device[]>;
  ping(): Promise<Record<string, never>>;
}

export declare function backoffDelay(attempt: number, min: number, max: number, random?: () => number): number;
export declare function matches(filter: string, topic: string): boolean;
export declare function isWildcard(filter: string): boolean;
export declare function tokenSubject(token: string): string | null;
export declare const SUBPROTOCOLS: { readonly json: "tidings.v1.json"; readonly msgpack: "tidings.v1.msgpack" };

export declare class BoundedSet {
  constructor(limit: number);
  readonly limit: number;
  readonly size: number;
  has(key: string): boolean;
  add(key: string): boolean;
}

export declare class Ledger {
  constructor(options?: { seenLimit?: number; topicLimit?: number });
  userOffset: Offset | null;
  topicOffsets: Map<string, Offset>;
  acceptMessage(msg: { topic: string; offset?: Offset | null }): boolean;
  acceptNotification(n: { id?: string; offset?: Offset | null }): boolean;
  acceptEvent(ev: { offset?: Offset | null }): boolean;
  recordTopicOffset(topic: string, offset: Offset): void;
  merge(filter: string, since: Offset | Record<string, Offset> | null | undefined): void;
  sinceFor(filter: string): Offset | Record<string, Offset> | undefined;
}

export declare class InboxState {
  items: InboxItem[];
  unread: number;
  next: string | null;
  loaded: boolean;
  snapshot(): { items: InboxItem[]; unread: number; next: string | null; loaded: boolean };
  restore(s: { items: InboxItem[]; unread: number; next: string | null; loaded: boolean }): void;
}

/** The single-connection engine a solo or leader client runs (advanced use). */
export declare class Core extends Emitter<TidingsEvents & { inbox: unknown; offsets: unknown }> {
  constructor(options: TidingsOptions & { url: string }, ledger?: Ledger, inbox?: InboxState);
  state: "idle" | "connecting" | "connected" | "closed";
  start(token?: string): void;
  close(): void;
  request(op: string, args?: Record<string, unknown>): Promise<any>;
}

export type PushEndpoint =
  | { kind: "webpush"; subscription: unknown }
  | { kind: "fcm"; token: string }
  | { kind: "apns"; token: string; topic: string };

export interface RegisteredEndpoint {
  device: string;
  kind: "webpush" | "fcm" | "apns";
  created: number;
  subscription?: unknown;
  token?: string;
  topic?: string;
}

export declare class PushControl {
  /** Whether this browser can do Web Push at all. */
  readonly supported: boolean;
  /** The server's VAPID public key (null when Web Push is off there). */
  vapidKey(): Promise<string | null>;
  /** Ask for permission, register tidings-sw.js, subscribe, register the subscription. */
  enable(options?: { serviceWorker?: string; scope?: string }): Promise<RegisteredEndpoint[]>;
  /** Unsubscribe and remove this device's endpoint. */
  disable(options?: { scope?: string }): Promise<number>;
  /** Register an endpoint for this device directly (FCM / APNs tokens, own subscriptions). */
  register(endpoint: PushEndpoint): Promise<RegisteredEndpoint[]>;
  unregister(): Promise<number>;
}

/** The http(s) origin of a ws(s) URL. */
export declare function serverOrigin(wsUrl: string): string;
