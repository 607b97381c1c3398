// panva's oidc-provider (a certified OpenID Provider) on 127.0.0.1, for the login tests.
//
// Protocol, one JSON object per line:
// - it listens on a free port at once and prints {"listening": "http://127.0.0.1:PORT"};
// - the first line on stdin configures it (the app's redirect URI is known only once the app
//   under test runs, which itself needs the issuer first):
//     {"clients": [{client_id, client_secret, redirect_uris}], "jwks": {"keys": [private JWK]},
//      "accounts": {sub: claims}, "options": {...extra Provider options},
//      "tokenEndpoint": "http://…" (optional, see below)}
//   and it prints {"ready": issuer};
// - later lines {"accounts": {...}} replace the accounts; each is answered {"ok": n}.
//
// Everything else is the provider's default configuration: devInteractions (its own login
// and consent forms; the login name typed there is the account's `sub`), the code flow,
// conformIdTokenClaims (scope claims only in userinfo), and the standard OIDC Core §5.4
// scope-to-claims mapping (the default maps no claims to `email`/`profile`).
// `tokenEndpoint` only changes the token_endpoint the discovery document advertises, so a
// test can put an interposer in front of the real token endpoint to swap the id_token.
import http from 'node:http';
import readline from 'node:readline';

import Provider from 'oidc-provider';

// stdout carries the protocol only: the provider's notices go to stderr.
console.log = console.error; // eslint-disable-line no-console
console.info = console.error; // eslint-disable-line no-console

const STANDARD_CLAIMS = {
  openid: ['sub'],
  email: ['email', 'email_verified'],
  profile: ['name', 'family_name', 'given_name', 'picture', 'updated_at'],
};

let accounts = {};
let handler = (req, res) => {
  res.writeHead(503, { 'content-type': 'text/plain' });
  res.end('not configured yet');
};
const server = http.createServer((req, res) => handler(req, res));

function say(message) {
  process.stdout.write(`${JSON.stringify(message)}\n`);
}

function configure(config) {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: config.clients,
    jwks: config.jwks,
    claims: STANDARD_CLAIMS,
    cookies: { keys: ['test-cookie-key-0123456789abcdef'] },
    async findAccount(ctx, sub) {
      if (!(sub in accounts)) return undefined;
      return {
        accountId: sub,
        async claims() {
          return { ...accounts[sub], sub };
        },
      };
    },
    ...(config.options || {}),
  });
  if (config.tokenEndpoint) {
    provider.use(async (ctx, next) => {
      await next();
      if (ctx.path === '/.well-known/openid-configuration' && ctx.body) {
        ctx.body = { ...ctx.body, token_endpoint: config.tokenEndpoint };
      }
    });
  }
  provider.on('server_error', (ctx, error) => process.stderr.write(`server_error ${error.stack}\n`));
  handler = provider.callback();
  return issuer;
}

let configured = false;
const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const message = JSON.parse(line);
  if ('accounts' in message) accounts = message.accounts;
  if (!configured) {
    configured = true;
    say({ ready: configure(message) });
  } else {
    say({ ok: Object.keys(accounts).length });
  }
});
// The test closes stdin (or dies): stop with it, never linger.
lines.on('close', () => process.exit(0));

server.listen(0, '127.0.0.1', () => {
  say({ listening: `http://127.0.0.1:${server.address().port}` });
});
