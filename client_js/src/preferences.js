/**
 * The signed-in user's notification preferences (docs/notifications.md,
 * "Preferences"): read them, replace them, or merge a change into them. The
 * server validates every change (an unknown time zone, a malformed time, a
 * cap above the operator's: a TidingsError `bad_request` whose message starts
 * with the field) and announces the stored document to every device of the
 * user on `users/{uid}/preferences` (subscribe to it to follow changes).
 */

/**
 * @typedef {object} PreferencesOwner
 * @property {(method: string, args: any[]) => Promise<any>} call
 */

export class Preferences {
  /** @param {PreferencesOwner} owner */
  constructor(owner) {
    this._owner = owner;
  }

  /**
   * The stored document (`{}` when the user never set any).
   * @returns {Promise<Record<string, any>>}
   */
  get() {
    return this._owner.call("preferences.get", []);
  }

  /**
   * Replace the document with `prefs`, or with `{merge: true}` merge `prefs`
   * into it (JSON Merge Patch: objects merge key by key, `null` removes a key).
   * Resolves with the document as stored.
   * @param {Record<string, any>} prefs
   * @param {{merge?: boolean}} [options]
   * @returns {Promise<Record<string, any>>}
   */
  set(prefs, options = {}) {
    return this._owner.call("preferences.set", [prefs, Boolean(options.merge)]);
  }
}
