/**
 * A small event emitter shared by the client, its inbox and its connection.
 *
 * A listener that throws does not stop the others, nor the client: the error
 * is reported (`reportError` in browsers, `console.error` elsewhere).
 * @module
 */

/** @typedef {(data: any) => void} Listener */

export class Emitter {
  /** @type {Map<string, Set<Listener>>} */
  #listeners = new Map();

  /**
   * Call `listener` on every `name` event.
   * @param {string} name
   * @param {Listener} listener
   * @returns {() => void} a function that removes the listener
   */
  on(name, listener) {
    let set = this.#listeners.get(name);
    if (!set) this.#listeners.set(name, (set = new Set()));
    set.add(listener);
    return () => this.off(name, listener);
  }

  /**
   * Call `listener` on the next `name` event only.
   * @param {string} name
   * @param {Listener} listener
   * @returns {() => void}
   */
  once(name, listener) {
    /** @type {Listener} */
    const wrapper = (data) => {
      this.off(name, wrapper);
      listener(data);
    };
    return this.on(name, wrapper);
  }

  /**
   * @param {string} name
   * @param {Listener} listener
   */
  off(name, listener) {
    this.#listeners.get(name)?.delete(listener);
  }

  /**
   * @param {string} name
   * @param {any} [data]
   */
  emit(name, data) {
    const set = this.#listeners.get(name);
    if (!set) return;
    for (const listener of [...set]) {
      try {
        listener(data);
      } catch (err) {
        report(err);
      }
    }
  }

  /**
   * @param {string} name
   * @returns {number} how many listeners `name` has
   */
  listenerCount(name) {
    return this.#listeners.get(name)?.size ?? 0;
  }
}

/**
 * Report an error thrown by app code (a listener, a message handler) without
 * letting it stop the client.
 * @param {unknown} err
 */
export function report(err) {
  const g = /** @type {any} */ (globalThis);
  if (typeof g.reportError === "function") g.reportError(err);
  else console.error("tidings: a listener threw", err);
}
