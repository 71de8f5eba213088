package atomspherecors

import (
	"net"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// observation is where a handler's decisions go besides the debug log: the
// metrics, the access log entry of the request, and, for the explain
// command, a record.
type observation struct {
	// srv is the server the handler runs in, whose access log config
	// says whether a request is logged; nil outside a server.
	srv *caddyhttp.Server

	// record, when set, receives the decisions instead of the metrics:
	// the handler is the explain command's copy (explain.go).
	record *decisionRecord
}

// decisionRecord is one decision, as the explain command reports it.
type decisionRecord struct {
	decided bool
	kind    string // "preflight" or "normal"
	account string
	allowed bool
	reason  string
}

// provisionObservability registers the metrics in the config's registry
// and finds the server whose access log the decisions go to.
func (h *Handler) provisionObservability(ctx caddy.Context) error {
	h.obs.srv, _ = ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	return registerMetrics(ctx)
}

// decided is called once for every decision on a request: it counts it,
// puts it in the request's access log entry when the server logs the
// request, and writes the debug entry (log). kind is the debug entry's
// message: "preflight", "request", or the check that refused the
// request before it was told apart ("path guard", "header operations").
func (h *Handler) decided(r *http.Request, kind, id string, origin []string, method string, allowed bool, reason string) {
	preflight := kind == "preflight" || kind != "request" && isPreflight(r)
	if rec := h.obs.record; rec != nil {
		*rec = decisionRecord{decided: true, kind: kindNormal, account: id, allowed: allowed, reason: reason}
		if preflight {
			rec.kind = kindPreflight
		}
	} else if preflight {
		preflightCounters.count(allowed, reason)
	} else {
		normalCounters.count(allowed, reason)
	}
	if srv := h.obs.srv; srv != nil && srv.Logs != nil {
		accessLogDecision(srv.Logs, r, id, allowed, reason)
	}
	h.log(kind, id, origin, method, allowed, reason)
}

// accessLogDecision adds the decision to the request's access log entry,
// as the field atomsphere_cors: {account, outcome, reason}, when the
// server logs the request.
func accessLogDecision(logs *caddyhttp.ServerLogConfig, r *http.Request, id string, allowed bool, reason string) {
	if !logsHost(logs, r.Host) {
		return
	}
	extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	if !ok || extra == nil {
		return
	}
	d := &decisionFields{account: id, outcome: "denied", reason: reason}
	if allowed {
		d.outcome = "allowed"
	}
	extra.Set(zap.Object("atomsphere_cors", d))
}

// logsHost reports whether a server with access log config logs logs a
// request for host, as Caddy's server decides it (Server.shouldLogRequest
// in modules/caddyhttp/server.go, which is not exported).
func logsHost(logs *caddyhttp.ServerLogConfig, host string) bool {
	if len(logs.LoggerNames) == 0 && len(logs.SkipHosts) == 0 {
		return !logs.SkipUnmappedHosts
	}
	h, _, err := net.SplitHostPort(host)
	if err != nil {
		h = host
	}
	for name := range logs.LoggerNames {
		if certmagic.MatchWildcard(h, name) {
			return true
		}
	}
	for _, skip := range logs.SkipHosts {
		if certmagic.MatchWildcard(h, skip) {
			return false
		}
	}
	return !logs.SkipUnmappedHosts
}

// decisionFields is the access log's atomsphere_cors object.
type decisionFields struct {
	account, outcome, reason string
}

func (d *decisionFields) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("account", d.account)
	enc.AddString("outcome", d.outcome)
	if d.reason != "" {
		enc.AddString("reason", d.reason)
	}
	return nil
}
