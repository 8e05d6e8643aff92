// Talking to SlaveAPI from the fleet page: JSON requests carrying the
// operator's token, asked for when an answer is 401 and kept for the
// browser tab only (sessionStorage), never in the page's address or storage
// that outlives the tab.

const TOKEN_KEY = "slaveapi-token";

// Milliseconds any one request may take before the page gives up on it.
export const REQUEST_TIMEOUT_MS = 30000;

// How many times a request is sent again with a new token after a 401.
const TOKEN_ATTEMPTS = 3;

export const STATES = ["PENDING", "RUNNING", "SUCCESS", "FAILURE"];

export class ApiError extends Error {
  constructor(status, kind, msg) {
    super(msg);
    this.status = status;
    this.kind = kind;
  }
}

export function storedToken() {
  return sessionStorage.getItem(TOKEN_KEY) || "";
}

export function storeToken(token) {
  if (token) {
    sessionStorage.setItem(TOKEN_KEY, token);
  } else {
    sessionStorage.removeItem(TOKEN_KEY);
  }
}

// The Authorization header for the stored token, if there is one.
export function authHeaders() {
  const token = storedToken();
  return token ? { Authorization: `Bearer ${token}` } : {};
}

async function errorOf(response) {
  const body = await response.json().catch(() => null);
  const kind = (body && body.error) || "http_error";
  const msg = (body && body.msg) || `HTTP ${response.status} ${response.statusText}`;
  return new ApiError(response.status, kind, msg);
}

export class Api {
  // askToken(message) resolves to a token, or to null when the operator
  // declines to give one.
  constructor(askToken) {
    this.askToken = askToken;
  }

  async request(method, path, form) {
    for (let attempt = 0; attempt < TOKEN_ATTEMPTS; attempt++) {
      const init = {
        method,
        headers: { Accept: "application/json", ...authHeaders() },
        signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
      };
      if (form) {
        init.body = new URLSearchParams(form);
      }
      let response;
      try {
        response = await fetch(path, init);
      } catch (error) {
        throw new ApiError(0, "unreachable", `${method} ${path}: ${error.message || error}`);
      }
      if (response.status === 401) {
        // Refused on its headers: nothing was done, so asking again is safe.
        const refusal = await errorOf(response);
        const token = await this.askToken(refusal.message);
        if (!token) {
          throw refusal;
        }
        storeToken(token);
        continue;
      }
      if (!response.ok) {
        throw await errorOf(response);
      }
      return { status: response.status, body: await response.json() };
    }
    throw new ApiError(401, "unauthorized", "the token was refused");
  }

  async get(path) {
    return (await this.request("GET", path)).body;
  }

  async post(path, form) {
    return this.request("POST", path, form);
  }
}

// The path of one machine's resource, its name escaped.
export function slavePath(name, ...rest) {
  return ["/slaves", encodeURIComponent(name), ...rest].join("/");
}
