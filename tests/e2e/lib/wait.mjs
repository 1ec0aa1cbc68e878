// Waiting without timing assertions: a sleep, and polling until a condition
// holds with a bound after which the test fails saying what it waited for.

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** Polls `fn` until it returns a truthy value (resolving with it); rejects with `what` (or `what()`) after `ms`. */
export async function until(fn, ms, what, every = 200) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`${typeof what === "function" ? what() : what} (waited ${ms} ms)`);
    await sleep(every);
  }
}
