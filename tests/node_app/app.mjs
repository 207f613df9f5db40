// A token client that knows nothing about tokenrelay, used by tests/forward.rs: it POSTs a
// client_credentials request to the URL in argv[2] and prints {"status", "body"} as JSON.
//
// Proxy and trust come only from the environment `tokenrelay ca` prints: HTTPS_PROXY and
// NO_PROXY, NODE_EXTRA_CA_CERTS. Node >= 24 honours NODE_USE_ENV_PROXY=1 by itself; older Node
// (the test machines run 20) gets undici's EnvHttpProxyAgent, which reads the same variables.
import { EnvHttpProxyAgent, fetch as undiciFetch } from 'undici';

const url = process.argv[2];
const major = Number(process.versions.node.split('.')[0]);
const native = major >= 24 && process.env.NODE_USE_ENV_PROXY === '1';
const init = {
  method: 'POST',
  headers: { 'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams({ grant_type: 'client_credentials', scope: 'node' }).toString(),
};
const res = native ? await fetch(url, init) : await undiciFetch(url, { ...init, dispatcher: new EnvHttpProxyAgent() });
const text = await res.text();
let body;
try {
  body = JSON.parse(text);
} catch {
  body = text;
}
console.log(JSON.stringify({ status: res.status, body, via: native ? 'NODE_USE_ENV_PROXY' : 'undici EnvHttpProxyAgent' }));
