// node-oidc-provider as the OAuth2 authorization server of ferry's token
// exchange tests: oidc-provider's own client authentication, token issuance,
// introspection and revocation, plus the RFC 8693 token-exchange grant
// registered through its extension point (`registerGrantType`). The grant
// exchanges a JWT naming a pod's identity (the subject token), signed by a
// key the test trusts, for an opaque access token whose `sub` is the JWT's.
//
// Usage: node server.mjs CONFIG.json, where CONFIG is
//   { issuer, port, tls: { cert_file, key_file }, access_token_ttl_seconds,
//     clients: [oidc-provider client metadata...],
//     token_exchange: { subject_issuer, subject_audience,
//                       subject_jwks: { keys: [...] } } }   (optional)
//
// Logs one line per request (method, path, status, OAuth error code) and
// never a query string, a body, a token or a secret.

import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:https';

import * as jose from 'jose';
import Provider, { errors } from 'oidc-provider';

const TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const JWT_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:jwt';
const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const SUBJECT_TOKEN_ALGORITHMS = ['ES256', 'EdDSA'];

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node server.mjs CONFIG.json');
  process.exit(2);
}
const config = JSON.parse(readFileSync(configPath, 'utf8'));

// Scopes oidc-provider does not know are not checked against a client's
// registered `scope`: every scope any client has must be listed here, or a
// client could ask for one it was never given.
const scopes = new Set(['openid']);
for (const client of config.clients) {
  for (const scope of (client.scope ?? '').split(' ').filter(Boolean)) {
    scopes.add(scope);
  }
}

// A fresh signing key per run: oidc-provider signs nothing these tests read
// (access tokens are opaque), but without one it uses a development key and
// says so at every start.
const { privateKey } = await jose.generateKeyPair('ES256', { extractable: true });
const signingKey = { ...(await jose.exportJWK(privateKey)), alg: 'ES256', use: 'sig' };

const provider = new Provider(config.issuer, {
  clients: config.clients,
  // No authorization endpoint flows: only client_credentials and the token
  // exchange are offered, so a client needs no redirect_uris and has no
  // grant it was not given.
  responseTypes: [],
  clientDefaults: {
    grant_types: [],
    response_types: [],
    // The one key above is ES256; oidc-provider's default is RS256.
    id_token_signed_response_alg: 'ES256',
  },
  clientAuthMethods: ['client_secret_basic', 'client_secret_post', 'private_key_jwt'],
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  scopes: [...scopes],
  ttl: {
    AccessToken: config.access_token_ttl_seconds,
    ClientCredentials: config.access_token_ttl_seconds,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // Any client may introspect any token: clients all authenticate
    // (`none` is not among clientAuthMethods), as resource servers would.
    introspection: { enabled: true, allowedPolicy: () => true },
    // Only the client a token was issued to may revoke it (oidc-provider's
    // default, said here so it does not remind us at every revocation).
    revocation: { enabled: true, allowedPolicy: revocationAllowed },
    // client_credentials names its audience with RFC 8707's `resource`; the
    // token stays opaque, its `aud` the resource.
    resourceIndicators: {
      enabled: true,
      getResourceServerInfo: (_ctx, resource, client) => ({
        audience: resource,
        scope: client.scope ?? '',
        accessTokenFormat: 'opaque',
      }),
    },
  },
});

if (config.token_exchange) {
  registerTokenExchange(provider, config.token_exchange);
}

// The request log: no query strings (they can carry tokens), no bodies.
// Registered first, so it sees the answer as it leaves.
provider.use(async (ctx, next) => {
  await next();
  const error = typeof ctx.body?.error === 'string' ? ` ${ctx.body.error}` : '';
  console.log(`${ctx.method} ${ctx.path} ${ctx.status}${error}`);
});

// oidc-provider answers a grant type the client is not registered for with
// `invalid_request`; RFC 6749 §5.2 names that `unauthorized_client`.
provider.use(async (ctx, next) => {
  await next();
  const grantType = ctx.oidc?.params?.grant_type;
  if (
    ctx.oidc?.route === 'token'
    && ctx.status === 400
    && ctx.body?.error === 'invalid_request'
    && ctx.oidc.client
    && typeof grantType === 'string'
    && !ctx.oidc.client.grantTypeAllowed(grantType)
  ) {
    ctx.body = {
      error: 'unauthorized_client',
      error_description: 'the client is not registered for this grant type',
    };
  }
});

provider.on('server_error', (_ctx, error) => {
  console.error(`server_error: ${error?.name}: ${error?.message}`);
});

// oidc-provider checks a client's metadata when the client is first used;
// a test's mistake should stop the server at start instead, saying which
// client and why (never its secret).
for (const { client_id: clientId } of config.clients) {
  try {
    await provider.Client.find(clientId);
  } catch (error) {
    console.error(`client ${clientId}: ${error.error_description ?? error.message}`);
    process.exit(1);
  }
}

const server = createServer(
  { cert: readFileSync(config.tls.cert_file), key: readFileSync(config.tls.key_file) },
  provider.callback(),
);
server.on('error', (error) => {
  console.error(`listening on 127.0.0.1:${config.port}: ${error.code ?? error.message}`);
  process.exit(1);
});
server.listen(config.port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on https://127.0.0.1:${config.port} as ${config.issuer}`);
});

/**
 * Registers RFC 8693's token exchange: a client registered for it trades a
 * subject token (a JWT from `trust.subject_issuer` for
 * `trust.subject_audience`, signed by a key in `trust.subject_jwks`) for an
 * opaque access token naming the JWT's `sub`, with the scopes and audiences
 * it asked for.
 */
function registerTokenExchange(provider, trust) {
  const keys = jose.createLocalJWKSet(trust.subject_jwks);
  const parameters = [
    'audience',
    'requested_token_type',
    'scope',
    'subject_token',
    'subject_token_type',
  ];

  async function tokenExchange(ctx) {
    const { client, params } = ctx.oidc;
    if (!params.subject_token) {
      throw new errors.InvalidRequest('missing required parameter subject_token');
    }
    if (params.subject_token_type !== JWT_TOKEN_TYPE) {
      throw new errors.InvalidRequest(`subject_token_type must be ${JWT_TOKEN_TYPE}`);
    }
    if (
      params.requested_token_type !== undefined
      && params.requested_token_type !== ACCESS_TOKEN_TYPE
    ) {
      throw new errors.InvalidRequest(`requested_token_type must be ${ACCESS_TOKEN_TYPE}`);
    }

    const subject = await verifySubjectToken(params.subject_token);
    const scope = allowedScope(client, params.scope);
    const audiences = [params.audience ?? []].flat();

    const token = new provider.AccessToken({
      accountId: subject.sub,
      client,
      gty: TOKEN_EXCHANGE,
      scope,
    });
    // One audience goes through the model's own setter; RFC 8693 allows
    // several, which oidc-provider's setter refuses, so those are kept as
    // the list.
    if (audiences.length === 1) {
      token.setAudience(audiences[0]);
    } else if (audiences.length > 1) {
      token.aud = audiences;
    }
    ctx.oidc.entity('AccessToken', token);
    const accessToken = await token.save();

    ctx.body = {
      access_token: accessToken,
      issued_token_type: ACCESS_TOKEN_TYPE,
      token_type: token.tokenType,
      expires_in: token.expiration,
      ...(scope ? { scope } : {}),
    };
  }

  /** The subject token's claims, or `invalid_grant` saying why not (never the token). */
  async function verifySubjectToken(subjectToken) {
    let payload;
    try {
      ({ payload } = await jose.jwtVerify(subjectToken, keys, {
        algorithms: SUBJECT_TOKEN_ALGORITHMS,
        issuer: trust.subject_issuer,
        audience: trust.subject_audience,
        requiredClaims: ['exp', 'sub'],
      }));
    } catch (error) {
      throw invalidGrant(subjectTokenRefusal(error));
    }
    if (typeof payload.sub !== 'string' || payload.sub === '') {
      throw invalidGrant('subject token has no sub');
    }
    return payload;
  }

  provider.registerGrantType(TOKEN_EXCHANGE, tokenExchange, parameters, ['audience']);
}

/** RFC 7009: a client may revoke only the tokens issued to it. */
function revocationAllowed(_ctx, client, token) {
  if (token.clientId !== client.clientId) {
    throw new errors.InvalidRequest('client is not authorized to revoke the presented token');
  }
  return true;
}

/**
 * An `invalid_grant` error saying `description`: oidc-provider's own keeps
 * its argument out of the response and always says "grant request is
 * invalid".
 */
function invalidGrant(description) {
  const error = new errors.InvalidGrant();
  error.error_description = description;
  return error;
}

/** Why jose refused a subject token, in words that quote nothing from it. */
function subjectTokenRefusal(error) {
  switch (error?.code) {
    case 'ERR_JWT_EXPIRED':
      return 'subject token expired';
    case 'ERR_JWT_CLAIM_VALIDATION_FAILED':
      return `subject token ${error.claim} claim is not acceptable`;
    case 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED':
    case 'ERR_JWKS_NO_MATCHING_KEY':
    case 'ERR_JWKS_MULTIPLE_MATCHING_KEYS':
    case 'ERR_JOSE_ALG_NOT_ALLOWED':
      return 'subject token signature is not from a trusted key';
    default:
      return 'subject token is not a valid JWT';
  }
}

/**
 * The scopes asked for, if the client is registered for every one of them;
 * `invalid_scope` otherwise. No scope asked, no scope given.
 */
function allowedScope(client, requested) {
  const asked = [...new Set((requested ?? '').split(' ').filter(Boolean))];
  const registered = new Set((client.scope ?? '').split(' ').filter(Boolean));
  const refused = asked.filter((scope) => !registered.has(scope));
  if (refused.length > 0) {
    throw new errors.InvalidScope('requested scope is not allowed', refused.join(' '));
  }
  return asked.join(' ') || undefined;
}
