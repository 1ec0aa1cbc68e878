// HTTP as the tests speak it to the gateway's API: one request helper
// (bearer token, JSON body, a bound on the wait) and responses read as
// status, text and JSON.

/** A fetch response as tests read it: status, body text, and the body as JSON (undefined when it is not JSON). */
export async function readResponse(res) {
  const text = await res.text();
  let json;
  try {
    json = JSON.parse(text);
  } catch {
    json = undefined;
  }
  return { status: res.status, text, json };
}

/**
 * Sends `method` to `url` and resolves with `readResponse` of the answer.
 * `token` (when given) goes as a bearer token; `body` (when given) as JSON.
 * Rejects when there is no answer within `timeoutMs`.
 */
export async function httpRequest(url, { method = "GET", token, body, headers = {}, timeoutMs = 5_000 } = {}) {
  const res = await fetch(url, {
    method,
    headers: {
      ...(token === undefined ? {} : { authorization: `Bearer ${token}` }),
      ...(body === undefined ? {} : { "content-type": "application/json" }),
      ...headers,
    },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(timeoutMs),
  });
  return readResponse(res);
}

/** Whether GET `url` answers 200 within a second (false too while nothing listens there yet). */
export async function answersOk(url) {
  try {
    const res = await fetch(url, { signal: AbortSignal.timeout(1_000) });
    await res.arrayBuffer();
    return res.status === 200;
  } catch {
    return false;
  }
}
