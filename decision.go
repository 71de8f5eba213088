package atomspherecors

import (
	"net"
	"net/http"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"atomspherecors/internal/policy"
)

// observation is where a handler's decisions go besides the debug log: the
// metrics and the access log entry of the request.
type observation struct {
	// srv is the server the handler runs in, whose access log config
	// says whether a request is logged; nil outside a server.
	srv *caddyhttp.Server
	// logs is set when a decision may go further than the counters: the
	// server has an access log config, or the handler's logger writes
	// debug entries. Both are fixed for the life of a config.
	logs bool
}

// provisionObservability registers the metrics in the config's registry,
// finds the server whose access log the decisions go to and sets the
// handler's logger.
func (h *Handler) provisionObservability(ctx caddy.Context) error {
	h.obs.srv, _ = ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	h.setLogger(ctx.Logger())
	return registerMetrics(ctx)
}

// setLogger sets the handler's logger, and whether observe has more to
// do than count.
func (h *Handler) setLogger(l *zap.Logger) {
	h.logger = l
	h.obs.logs = h.obs.srv != nil && h.obs.srv.Logs != nil || l.Core().Enabled(zapcore.DebugLevel)
}

// observe records one decision on an account path: it counts it, puts
// it in the request's access log entry when the server logs the
// request, and writes the debug entry.
func (h *Handler) observe(r *http.Request, d *policy.Decision) {
	decisions.count(d)
	if h.obs.logs {
		h.log(r, d)
	}
}

// log puts a decision in the request's access log entry and the debug
// log.
func (h *Handler) log(r *http.Request, d *policy.Decision) {
	if srv := h.obs.srv; srv != nil && srv.Logs != nil {
		accessLogDecision(srv.Logs, r, d)
	}
	if ce := h.logger.Check(zapcore.DebugLevel, debugMessage(d)); ce != nil {
		outcome := "denied"
		if d.Allowed() {
			outcome = "allowed"
		}
		fields := []zap.Field{
			zap.String("account", d.Account),
			zap.Strings("origin", r.Header[hdrOrigin]),
			zap.String("method", d.Method(r)),
			zap.String("outcome", outcome),
		}
		if !d.Allowed() {
			fields = append(fields, zap.String("reason", d.Reason.String()))
		}
		if d.Reading.Fired() {
			fields = append(fields, zap.Stringer("reading", d.Reading))
		}
		ce.Write(fields...)
	}
}

// debugMessage is the message of a decision's debug entry: the kind of
// request, or the check that refused it before it was told apart.
func debugMessage(d *policy.Decision) string {
	switch {
	case d.Reason == policy.AmbiguousPath:
		return "path guard"
	case d.Reason == policy.DeferredHeaders:
		return "header operations"
	case d.Kind == policy.Preflight:
		return "preflight"
	}
	return "request"
}

// accessLogDecision adds the decision to the request's access log entry,
// as the field atomsphere_cors: {account, outcome, reason}, when the
// server logs the request.
func accessLogDecision(logs *caddyhttp.ServerLogConfig, r *http.Request, dec *policy.Decision) {
	if !logsHost(logs, r.Host) {
		return
	}
	extra, ok := r.Context().Value(caddyhttp.ExtraLogFieldsCtxKey).(*caddyhttp.ExtraLogFields)
	if !ok || extra == nil {
		return
	}
	d := &decisionFields{account: dec.Account, outcome: "denied", reason: dec.Reason.String(), reading: dec.Reading.String()}
	if dec.Allowed() {
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
	account, outcome, reason, reading string
}

func (d *decisionFields) MarshalLogObject(enc zapcore.ObjectEncoder) error {
	enc.AddString("account", d.account)
	enc.AddString("outcome", d.outcome)
	if d.reason != "" {
		enc.AddString("reason", d.reason)
	}
	if d.reading != "" {
		enc.AddString("reading", d.reading)
	}
	return nil
}
