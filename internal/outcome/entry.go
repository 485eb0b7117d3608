package outcome

import (
	"encoding/json"
	"time"

	accesslogdatav3 "github.com/envoyproxy/go-control-plane/envoy/data/accesslog/v3"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/m1-agent/m1/authz"
	"github.com/m1-agent/m1/internal/store"
)

// MetadataNamespace is the dynamic-metadata namespace of Envoy's ext_authz
// filter, where m1-authz's allow puts decision_id (DESIGN §6).
const MetadataNamespace = "envoy.filters.http.ext_authz"

// metadataDecisionID is the field of MetadataNamespace that holds the id.
const metadataDecisionID = "decision_id"

// Reasons an entry is not trusted (m1_access_log_entries_ignored_total).
const (
	reasonNoDecisionID     = "no_decision_id"    // neither metadata nor header names a decision
	reasonUnknown          = "unknown_decision"  // an id this process did not decide (or decided too long ago)
	reasonDuplicate        = "duplicate"         // the decision's outcome was recorded already
	reasonForged           = "forged"            // the header names another decision than the metadata
	reasonUnverifiedHeader = "unverified_header" // header only, and the request never reached an upstream
	reasonMalformed        = "malformed"         // the id is not an id (too long, odd characters, not a string)
	reasonDenied           = "denied"            // a call this process (or an ext_authz) denied: nothing ran
	reasonNotToolCall      = "not_tool_call"     // an allowed MCP or HTTP request that is not a tool call
	reasonNotHTTP          = "not_http"          // TCP access-log entries
	reasonTooManyStreams   = "too_many_streams"  // a stream refused (counted once per stream)
	reasonBadMessage       = "bad_message"       // a message over the size limit or undecodable: its stream ends
	reasonInternalError    = "internal_error"    // handling the entry panicked
)

// Outcome label values and result reasons.
const (
	OutcomeSucceeded = "succeeded"
	OutcomeFailed    = "failed"

	resultOK                 = "ok"                  // the tool answered below 400
	resultToolError          = "tool_error"          // the tool answered 400 or above
	resultUpstreamFailure    = "upstream_failure"    // Envoy could not complete the call upstream
	resultClientDisconnected = "client_disconnected" // the caller went away first
)

// maxIDLen bounds a decision id read from an entry; m1-authz's are 28 hex
// digits.
const maxIDLen = 64

// maxDetailText bounds each free-text field copied from an entry into the
// audit event.
const maxDetailText = 256

// validID reports whether id can be a decision id: 1 to maxIDLen bytes of
// [0-9A-Za-z_.-].
func validID(id string) bool {
	if len(id) == 0 || len(id) > maxIDLen {
		return false
	}
	for i := range len(id) {
		c := id[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// decisionID finds the decision an entry is for, or the reason it names
// none this sidecar can vouch for.
func decisionID(e *accesslogdatav3.HTTPAccessLogEntry) (id, reason string) {
	var meta string
	if v, ok := e.GetCommonProperties().GetMetadata().GetFilterMetadata()[MetadataNamespace].GetFields()[metadataDecisionID]; ok {
		s, isString := v.GetKind().(*structpb.Value_StringValue)
		if !isString || !validID(s.StringValue) {
			return "", reasonMalformed
		}
		meta = s.StringValue
	}
	header, hasHeader := e.GetRequest().GetRequestHeaders()[authz.HeaderDecisionID]
	if hasHeader && !validID(header) {
		if meta != "" {
			return "", reasonForged // the allow overwrites the header: only a client's survives a deny
		}
		return "", reasonMalformed
	}
	switch {
	case meta != "" && hasHeader && header != meta:
		return "", reasonForged
	case meta != "":
		return meta, ""
	case !hasHeader:
		return "", reasonNoDecisionID
	case e.GetCommonProperties().GetUpstreamCluster() == "":
		// No router ran: Envoy answered itself (a deny, a 413, a bad
		// path) and the header is whatever the client sent.
		return "", reasonUnverifiedHeader
	}
	return header, ""
}

// flag is one Envoy response flag and its short name (%RESPONSE_FLAGS%).
type flag struct {
	name     string
	set      func(*accesslogdatav3.ResponseFlags) bool
	upstream bool // the call did not complete upstream
	client   bool // the caller ended it
}

var flags = []flag{
	{"LH", (*accesslogdatav3.ResponseFlags).GetFailedLocalHealthcheck, true, false},
	{"UH", (*accesslogdatav3.ResponseFlags).GetNoHealthyUpstream, true, false},
	{"UT", (*accesslogdatav3.ResponseFlags).GetUpstreamRequestTimeout, true, false},
	{"LR", (*accesslogdatav3.ResponseFlags).GetLocalReset, true, false},
	{"UR", (*accesslogdatav3.ResponseFlags).GetUpstreamRemoteReset, true, false},
	{"UF", (*accesslogdatav3.ResponseFlags).GetUpstreamConnectionFailure, true, false},
	{"UC", (*accesslogdatav3.ResponseFlags).GetUpstreamConnectionTermination, true, false},
	{"UO", (*accesslogdatav3.ResponseFlags).GetUpstreamOverflow, true, false},
	{"NR", (*accesslogdatav3.ResponseFlags).GetNoRouteFound, true, false},
	{"DI", (*accesslogdatav3.ResponseFlags).GetDelayInjected, false, false},
	{"FI", (*accesslogdatav3.ResponseFlags).GetFaultInjected, true, false},
	{"RL", (*accesslogdatav3.ResponseFlags).GetRateLimited, true, false},
	{"UAEX", func(f *accesslogdatav3.ResponseFlags) bool { return f.GetUnauthorizedDetails() != nil }, true, false},
	{"RLSE", (*accesslogdatav3.ResponseFlags).GetRateLimitServiceError, true, false},
	{"DC", (*accesslogdatav3.ResponseFlags).GetDownstreamConnectionTermination, false, true},
	{"URX", (*accesslogdatav3.ResponseFlags).GetUpstreamRetryLimitExceeded, true, false},
	{"SI", (*accesslogdatav3.ResponseFlags).GetStreamIdleTimeout, true, false},
	{"IH", (*accesslogdatav3.ResponseFlags).GetInvalidEnvoyRequestHeaders, true, false},
	{"DPE", (*accesslogdatav3.ResponseFlags).GetDownstreamProtocolError, false, true},
	{"UMSDR", (*accesslogdatav3.ResponseFlags).GetUpstreamMaxStreamDurationReached, true, false},
	{"RFCF", (*accesslogdatav3.ResponseFlags).GetResponseFromCacheFilter, false, false},
	{"NFCF", (*accesslogdatav3.ResponseFlags).GetNoFilterConfigFound, true, false},
	{"DT", (*accesslogdatav3.ResponseFlags).GetDurationTimeout, true, false},
	{"UPE", (*accesslogdatav3.ResponseFlags).GetUpstreamProtocolError, true, false},
	{"NC", (*accesslogdatav3.ResponseFlags).GetNoClusterFound, true, false},
	{"OM", (*accesslogdatav3.ResponseFlags).GetOverloadManager, true, false},
	{"DF", (*accesslogdatav3.ResponseFlags).GetDnsResolutionFailure, true, false},
	{"DR", (*accesslogdatav3.ResponseFlags).GetDownstreamRemoteReset, false, true},
}

// result is what one trusted entry says of its call.
type result struct {
	outcome  string // OutcomeSucceeded | OutcomeFailed
	reason   string
	status   int
	duration time.Duration
	detail   string // JSON
}

// detail is the JSON of a result event's Detail.
type detail struct {
	Source              string   `json:"source"`
	ResponseFlags       []string `json:"response_flags,omitempty"`
	ResponseCodeDetails string   `json:"response_code_details,omitempty"`
	UpstreamFailure     string   `json:"upstream_failure,omitempty"`
	UpstreamCluster     string   `json:"upstream_cluster,omitempty"`
	Attempts            uint32   `json:"upstream_attempts,omitempty"`
}

// DetailSource is the source of every result event m1-authz writes, telling
// them from m1-orchestrator's.
const DetailSource = "envoy_access_log"

// classify reads an entry's response code, duration and failure flags.
func classify(e *accesslogdatav3.HTTPAccessLogEntry) result {
	cp := e.GetCommonProperties()
	r := result{status: int(min(e.GetResponse().GetResponseCode().GetValue(), 999))}
	d := detail{
		Source:              DetailSource,
		ResponseCodeDetails: clip(e.GetResponse().GetResponseCodeDetails()),
		UpstreamFailure:     clip(cp.GetUpstreamTransportFailureReason()),
		UpstreamCluster:     clip(cp.GetUpstreamCluster()),
		Attempts:            cp.GetUpstreamRequestAttemptCount(),
	}
	var upstream, client bool
	if f := cp.GetResponseFlags(); f != nil {
		for _, fl := range flags {
			if fl.set(f) {
				d.ResponseFlags = append(d.ResponseFlags, fl.name)
				upstream = upstream || fl.upstream
				client = client || fl.client
			}
		}
	}
	// The caller going away after the tool answered changes nothing of
	// what the tool did: client flags count only without a response.
	switch {
	case upstream || r.status == 0 && !client:
		r.outcome, r.reason = OutcomeFailed, resultUpstreamFailure
	case r.status == 0:
		r.outcome, r.reason = OutcomeFailed, resultClientDisconnected
	case r.status >= 400:
		r.outcome, r.reason = OutcomeFailed, resultToolError
	default:
		r.outcome, r.reason = OutcomeSucceeded, resultOK
	}
	for _, dur := range []*durationpb.Duration{cp.GetDuration(), cp.GetTimeToLastDownstreamTxByte(), cp.GetTimeToLastUpstreamRxByte()} {
		if x := dur.AsDuration(); dur.IsValid() && x > 0 {
			r.duration = x
			break
		}
	}
	b, _ := json.Marshal(d)
	r.detail = string(b)
	return r
}

// clip bounds a free-text field copied from an entry.
func clip(s string) string {
	if len(s) <= maxDetailText {
		return s
	}
	return s[:maxDetailText]
}

// event is the result audit event of c's entry.
func (c *call) event(id string, r result, now time.Time) store.Event {
	return store.Event{
		DecisionID: id, Time: now, Kind: store.KindResult,
		Principal: c.principal, RunID: c.runID, ProposalID: c.proposalID, Tool: c.tool, ArgsSHA256: c.argsSHA256,
		Decision: r.outcome, Reason: r.reason, Status: r.status, Detail: r.detail,
		PolicyRevision: c.revision, TokenJTI: c.jti, LatencyMicros: r.duration.Microseconds(),
	}
}
