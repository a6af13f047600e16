// The HTTP API as the pages use it: fetch, JSON in and out, the API's own error messages.

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// fetch `path` (same origin); resolves to { body, ms } or throws ApiError with the API's message.
// An AbortError (a superseded request) is thrown as is, for the caller to ignore.
export async function call(path, { method = "GET", body, json, token, signal, headers = {} } = {}) {
  const init = { method, signal, headers: { ...headers } };
  if (json !== undefined) {
    init.body = JSON.stringify(json);
    init.headers["Content-Type"] = "application/json";
  } else if (body !== undefined) {
    init.body = body;
  }
  if (token) init.headers.Authorization = `Bearer ${token}`;
  const started = performance.now();
  const response = await fetch(path, init);
  const text = await response.text();
  const ms = performance.now() - started;
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    const message = parsed && parsed.error ? parsed.error : `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, parsed && parsed.code, message);
  }
  return { body: parsed, ms };
}

export function percent(value, digits = 1) {
  return value === null || value === undefined ? "–" : `${(value * 100).toFixed(digits)}%`;
}

// document.createElement with properties, attributes and children in one call.
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (key === "class") node.className = value;
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined));
  return node;
}
