// Package toolcall is M1's wire format: what one HTTP request that Envoy
// sends to ext_authz means as a tool call (DESIGN §3), read exactly one way
// or refused. It is a leaf: it imports the ext_authz protos, a JSON
// tokenizer and the table of deny codes, and nothing of the policy engine,
// the caches or Redis, so that the orchestrator and the CLI compute the
// same tool name and arguments hash as the sidecar without linking the
// decision pipeline (deps_test.go keeps it that way).
//
// # Parse
//
// [Parse] takes the attributes.request.http of a CheckRequest, its
// [Headers] (from [HeadersOf], which reads either the headers map or, with
// Envoy's encode_raw_headers, the header_map, joining repeated names with
// ",") and [Options]: the MCP path, the prefix of the REST tool paths and
// the largest body accepted. It returns a [Call] whose Kind is one of
//
//   - [KindToolCall]: a JSON-RPC tools/call posted to the MCP path, or a
//     POST to ToolsPathPrefix + name. Tool, Args (the arguments object as
//     sent) and ArgsSHA256 are set.
//   - [KindMCP]: any other message on the MCP path (initialize, ping, a
//     response, the GET session stream, DELETE).
//   - [KindHTTP]: everything else, passed to the policy unparsed.
//
// # What it refuses, and why
//
// The policy decides on the call Parse saw, and an approval binds the
// SHA-256 of its arguments; the tool then reads the same bytes with its
// own parser. Any body two parsers could read differently would let an
// approved call run as another, so Parse refuses it with an [*Error]
// instead of choosing a reading:
//
//   - body_too_large: Envoy marked the body partial, it exceeds
//     MaxBodyBytes, or content-length promises more than was sent;
//   - bad_request: not JSON, invalid UTF-8, data after the value, a
//     JSON-RPC batch, duplicate member names or names equal under Unicode
//     case folding ("path" and "PATH"), a JSON-RPC key that differs from
//     method, params, name or arguments only in case, arguments nested
//     deeper than 64 levels (counted from the arguments object, so MCP
//     and REST agree), body and raw_body that differ, a short
//     content-length;
//   - number_not_canonical: a number that an IEEE-754 double does not
//     hold exactly (9007199254740993), so RFC 8785 would hash it like its
//     neighbour; 1.0, 1e2 and -0 pass;
//   - unsupported_media_type: a content-type other than JSON in UTF-8;
//   - bad_path: an empty, "." or ".." segment, a backslash or NUL, bad
//     percent-encoding, a tool name outside [ValidName], a query string on
//     a tool path (the approval covers the body only);
//   - header_mismatch: MCP routing headers (mcp-method, mcp-name) that say
//     something other than the body.
//
// [Error.Code] is a stable code of internal/deny and [Error.Status] its
// HTTP status, from the same table; the sidecar denies with them as they
// are.
//
// # Names, hashes, numbers
//
// [ValidName] is the one rule for tool names, [A-Za-z0-9_.-]{1,128}, used
// by the parser, the tokens and the CLI. The arguments hash is the hex
// SHA-256 of the arguments' RFC 8785 (JCS) form, so formatting, member
// order and number spelling do not change it. [ArgsSHA256] computes it for
// a tool and arguments by running Parse on a synthetic REST request, so
// callers outside the sidecar (the m1 token commands, the orchestrator,
// the proposals filed at the gateway) refuse and hash exactly as the
// sidecar does.
//
// # Fuzzing
//
// FuzzParseCall (fuzz_test.go, seeds in testdata/fuzz) checks that Parse
// never panics, is deterministic, only refuses with 400 or 413 on bodies
// without headers, never accepts two member names equal under case folding,
// and hashes every accepted call as an independent RFC 8785 implementation
// does.
//
// Parse, HeadersOf and ArgsSHA256 are safe for concurrent use.
package toolcall
