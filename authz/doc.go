// Package authz is M1's decision pipeline: an Envoy ext_authz v3
// Authorization service that reads the call (package toolcall), runs the
// hard checks on an approval token, evaluates the Rego policy (through a
// decision cache when the policy allows it), records a single use, and
// answers allow or deny in the wire shapes of DESIGN §6.
//
// Every decision is a CheckResponse: [Service.Check] never answers with a
// gRPC error, a panic becomes an internal_error deny, and any failure on
// the decision path is a deny with a stable code from internal/deny, whose
// table also gives its HTTP status.
//
// # The order of the checks
//
// Check loads the policy in force once; a [Service.SetPolicy] during the
// check does not change its decision, cache key, response or audit event.
// Then, the first failure deciding:
//
//  1. The request: no attributes.request.http is bad_request; otherwise
//     [toolcall.Parse] refuses what it cannot read exactly one way, with
//     its code (body_too_large, bad_request, bad_path, …).
//  2. The principal, provisionally: source.principal, replaced by the
//     [Options].PrincipalHeader's value when set and valid; when neither
//     names one, PeerPrincipal (the SPIFFE ID of the Check caller).
//  3. A token in Options.ApprovalHeader ("Bearer " optional) runs hard
//     checks 1–7 in [TokenVerifier] (approval.Verifier; without one, any
//     token is token_invalid), check 8 on tool calls (Claims.Bind: tool
//     and arguments hash, or the grant's patterns), and check 9: not
//     revoked ([RevocationChecker]; an error is state_unavailable) and not
//     issued before the [Epoch] (state_reset). The token's sub becomes the
//     principal and its run id the x-m1-run-id. A call without a token
//     goes on: the policy decides whether it needs one.
//  4. [RateLimiter], tool calls only: rate_limited with retry-after, before
//     the policy, so that a refused call uses up no approval.
//  5. Check 10, the policy: policy_denied with the policy's reason, status,
//     body and headers; policy_error when it fails or times out (the
//     details go to the operator's log under the decision id).
//  6. Approvals held at the gateway, when configured (below).
//  7. Check 11, on an allowed tool call with a token: the use is recorded
//     ([UseStore]). A policy deny consumes nothing; a token on a non-tool
//     call is verified but never consumed.
//
// # Caching
//
// A decision is cached only when the policy analysis says it depends on
// input.m1 alone (policy.Engine.Cacheable) and Options.Cache is set;
// [Service.Caching] says which and why. The key hashes the bundle revision,
// the decision path and the parts of input.m1 the policy reads, the
// arguments standing as their hash. [DecisionCache] is cache.Memory (L1,
// per process) or cache.Tiered, an L1 in front of a shared L2
// (cache/rediscache) that it consults on an L1 miss only while a Redis
// round trip is cheaper than an evaluation. SetPolicy moves the cache to
// the new revision with SetRevision; each evaluation's time is reported
// with ObserveEval.
//
// # Single use
//
// [UseStore] has one method, Use, taking a state.Use{JTI, IssuedAt, Exp,
// MaxUses}: 1 for an approval (token_replayed the second time), max_uses
// for a grant (grant_exhausted). Fencing against the loss of shared state
// (DESIGN §7) is the store's job on every use: a store that can lose data
// refuses a token issued before its epoch with an error wrapping
// state.ErrStateReset (state_reset), atomically with the use. The pipeline
// never chooses whether a use is fenced; Options.Epoch is only an earlier
// answer at check 9. Any other error is state_unavailable.
//
// # Responses and audit
//
// An allow sets x-m1-decision-id, x-m1-principal and x-m1-run-id,
// overwriting what the client sent, and removes the approval token and any
// other client-sent x-m1-* header (x_m1_* too) before the tool sees the
// request. A deny M1 writes itself has the JSON body {"error", "reason",
// "decision_id"}. Every decision is counted in Metrics and handed to
// the [Auditor], which must not block: arguments are kept only for allowed
// calls of tools the registry marks non-sensitive, and a deny's reason is
// clipped to 1 KiB. A shadow policy ([Service.SetShadow]) is evaluated off
// the decision path; where it would have decided otherwise the Auditor
// gets a shadow_diff event.
//
// # Approvals held at the gateway
//
// With [GatewayOptions].Approvals set (DESIGN §10), a tool call without a
// token that the policy denied token_missing, from a trusted principal
// (header or mTLS peer, never a token), asks the orchestrator for the
// call's approval. An approved one is claimed and goes through checks
// 1–11 as if the client had sent it, and must name the same principal; a
// pending call is denied approval_pending with retry-after (on the MCP
// path, a JSON-RPC URL-elicitation error with HTTP 200); a rejected one
// approval_rejected. An orchestrator that fails or exceeds
// GatewayOptions.Timeout leaves the deny token_missing.
//
// # Options
//
// [New] checks [Options] and fails naming the field: Logger, Metrics,
// Now, Uses, Revocations, a lower-case ApprovalHeader, Parse.MCPPath and
// Parse.MaxBodyBytes are required; Cache, Tokens, Epoch, Audit,
// RateLimit, PrincipalHeader, PeerPrincipal and Gateway are optional, nil
// or zero turning the feature off; ShadowMetrics is required for a shadow
// policy. A nil engine denies every call policy_error until SetPolicy.
// A Service is safe for concurrent use.
package authz
