// Package atomspherecors is a Caddy HTTP handler that gives a REST API
// per-account CORS rules: each account lists the origins that may call
// its API from a browser and the methods each origin may use.
package atomspherecors

import (
	"errors"
	"io"
	"net/http"
	"strings"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Handler answers CORS preflight requests for an API's accounts and adds
// the CORS headers to the API's normal responses.
//
// A request belongs to an account when its cleaned path starts with one of
// the path prefixes: the account is the next path segment. Other requests
// pass through untouched.
//
// A preflight (OPTIONS with Origin and Access-Control-Request-Method) is
// answered here and never reaches the next handler: with preflight_status
// (204) and the Access-Control-* headers when the account allows the
// origin and the method, and otherwise with a 401 Unauthorized returned as
// a Caddy error, so handle_errors routes see it. A normal request always
// goes on to the next handler; when the account allows its origin and
// method the response carries Access-Control-Allow-Origin and
// Access-Control-Allow-Credentials, also when a later handler fails.
// Access-Control-* headers written by later handlers (an upstream's own
// CORS headers, say) are removed on account paths: this handler is the
// only CORS policy there.
//
// In a Caddyfile the atomsphere_cors directive is ordered before
// basic_auth, so preflights are never authenticated and no order option
// is needed.
type Handler struct {
	// Path prefixes under which the next path segment is an account ID.
	// Each starts and ends with "/"; the first that a request's cleaned
	// path starts with (compared case-insensitively, as Caddy's path
	// matchers do) is used. Default: ["/api/rest/v1/", "/partner/api/rest/v1/"].
	PathPrefixes []string `json:"path_prefixes,omitempty"`

	// Request headers a page may send, listed in
	// Access-Control-Allow-Headers on allowed preflights (lower-cased,
	// joined with ","). Default: cache-control, content-type, expires,
	// last-modified, accept, content-language, authorization, pragma. An
	// empty list sends no Access-Control-Allow-Headers.
	AllowHeaders []string `json:"allow_headers,omitempty"`

	// Response headers a page's script may read, listed in
	// Access-Control-Expose-Headers on allowed normal responses.
	// Default: none.
	ExposeHeaders []string `json:"expose_headers,omitempty"`

	// How long a browser may cache an allowed preflight, sent in
	// Access-Control-Max-Age in whole seconds (rounded down). A duration
	// string such as "1h" or integer nanoseconds; must not be negative.
	// Default: 1h (3600).
	MaxAge *caddy.Duration `json:"max_age,omitempty"`

	// The status of an allowed preflight response, 200-299. Default: 204.
	PreflightStatus int `json:"preflight_status,omitempty"`

	// The CORS rules of each account, by account ID. An account ID is
	// one path segment (not empty, no "/"). An account that is not
	// listed, or has no rules, allows no origin. Rules with the same
	// origin are merged, their methods united.
	Accounts map[string][]Rule `json:"accounts"`

	idx    *index
	logger *zap.Logger
}

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.atomsphere_cors",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision checks the config and compiles it into the lookup index.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	idx, err := newIndex(h)
	if err != nil {
		return err
	}
	h.idx = idx
	// The index holds everything requests need; Caddy keeps its own copy
	// of the JSON, so let the decoded rules go (a large config would
	// otherwise be held twice).
	h.Accounts = nil
	return nil
}

// Validate ensures the handler was provisioned; Provision does the checks.
func (h *Handler) Validate() error {
	if h.idx == nil {
		return errors.New("not provisioned")
	}
	return nil
}

// Header names and values, canonical so they index http.Header directly.
const (
	hdrOrigin        = "Origin"
	hdrReqMethod     = "Access-Control-Request-Method"
	hdrAllowOrigin   = "Access-Control-Allow-Origin"
	hdrAllowCreds    = "Access-Control-Allow-Credentials"
	hdrAllowMethods  = "Access-Control-Allow-Methods"
	hdrAllowHeaders  = "Access-Control-Allow-Headers"
	hdrExposeHeaders = "Access-Control-Expose-Headers"
	hdrMaxAge        = "Access-Control-Max-Age"
	hdrVary          = "Vary"

	varyPreflight = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
)

// errPreflightDenied is the one error of every denied preflight. It is
// built once: a denial costs no allocation, so a flood of them is cheap.
// The reason of each denial is in the debug log instead.
var errPreflightDenied error = caddyhttp.HandlerError{
	StatusCode: http.StatusUnauthorized,
	Err:        errors.New("CORS preflight denied"),
	Trace:      "atomsphere_cors",
}

// ServeHTTP implements caddyhttp.MiddlewareHandler.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	id, ok := h.idx.accountOf(r.URL.Path)
	if !ok {
		// Not an account path: not ours (contract §3).
		return next.ServeHTTP(w, r)
	}
	origin := r.Header[hdrOrigin]
	// A preflight is OPTIONS with Origin and a non-empty
	// Access-Control-Request-Method (contract §4, Fetch "CORS-preflight
	// request"); any other request is a normal one.
	if r.Method == http.MethodOptions && len(origin) > 0 {
		if reqMethod := r.Header[hdrReqMethod]; len(reqMethod) > 1 || len(reqMethod) == 1 && reqMethod[0] != "" {
			return h.preflight(w, id, origin, reqMethod)
		}
	}
	return h.normal(w, r, next, id, origin)
}

func (h *Handler) preflight(w http.ResponseWriter, id string, origin, reqMethod []string) error {
	hdr := w.Header()
	ao, reason := h.idx.match(id, origin)
	if ao != nil {
		switch {
		case len(reqMethod) > 1:
			ao, reason = nil, "repeated Access-Control-Request-Method header"
		case !ao.methods.allows(reqMethod[0]):
			ao, reason = nil, "method not allowed"
		}
	}
	h.log("preflight", id, origin, reqMethod[0], ao != nil, reason)
	if ao == nil {
		// The response varies with these headers whatever the outcome.
		hdr[hdrVary] = append(hdr[hdrVary], varyPreflight)
		return errPreflightDenied
	}

	// One backing array for every value this response sets: no value
	// slice is shared with another request, whatever a later writer does
	// to it (rs/cors#198).
	vals := make([]string, 6)
	vals[0] = origin[0] // the request's Origin, byte for byte
	vals[1] = "true"
	vals[2] = ao.methods.header
	vals[3] = h.idx.maxAge
	vals[4] = h.idx.allowHeaders
	vals[5] = varyPreflight
	hdr[hdrAllowOrigin] = vals[0:1:1]
	hdr[hdrAllowCreds] = vals[1:2:2]
	hdr[hdrAllowMethods] = vals[2:3:3]
	hdr[hdrMaxAge] = vals[3:4:4]
	if vals[4] != "" {
		hdr[hdrAllowHeaders] = vals[4:5:5]
	}
	// Add to Vary, never replace it.
	if v := hdr[hdrVary]; v != nil {
		hdr[hdrVary] = append(v, varyPreflight)
	} else {
		hdr[hdrVary] = vals[5:6:6]
	}
	w.WriteHeader(h.idx.status)
	return nil
}

func (h *Handler) normal(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, id string, origin []string) error {
	cw := &corsWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	ao, reason := h.idx.match(id, origin)
	if ao != nil && !ao.methods.allows(r.Method) {
		ao, reason = nil, "method not allowed"
	}
	if ao != nil {
		cw.vals = [4]string{origin[0], "true", h.idx.exposeHeaders}
		cw.allowed = true
	}
	cw.vals[3] = "Origin"
	h.log("request", id, origin, r.Method, ao != nil, reason)

	err := next.ServeHTTP(cw, r)
	if !cw.wroteHeader {
		// Nothing was written: the response is still to come, from
		// Caddy's error handling (a basic_auth 401, an upstream error) or
		// from the server. Headers set now survive to it.
		cw.finish()
	}
	return err
}

// log writes one debug entry per decision, built only when debug
// logging is on.
func (h *Handler) log(kind, id string, origin []string, method string, allowed bool, reason string) {
	ce := h.logger.Check(zapcore.DebugLevel, kind)
	if ce == nil {
		return
	}
	outcome := "denied"
	if allowed {
		outcome = "allowed"
	}
	fields := []zap.Field{
		zap.String("account", id),
		zap.Strings("origin", origin),
		zap.String("method", method),
		zap.String("outcome", outcome),
	}
	if !allowed {
		fields = append(fields, zap.String("reason", reason))
	}
	ce.Write(fields...)
}

// corsWriter makes this handler's CORS headers the only ones on a
// normal response of an account path (contract §5 and §6). It applies
// them when the response header is written; ServeHTTP applies them
// itself when the next handler returns without writing (an error).
type corsWriter struct {
	caddyhttp.ResponseWriterWrapper
	vals        [4]string // Allow-Origin, Allow-Credentials, Expose-Headers, Vary
	allowed     bool
	wroteHeader bool
}

// finish removes every Access-Control-* header and sets this handler's.
func (cw *corsWriter) finish() {
	hdr := cw.ResponseWriter.Header()
	for k := range hdr {
		if len(k) >= len("Access-Control-") && strings.EqualFold(k[:len("Access-Control-")], "Access-Control-") {
			delete(hdr, k)
		}
	}
	if cw.allowed {
		hdr[hdrAllowOrigin] = cw.vals[0:1:1]
		hdr[hdrAllowCreds] = cw.vals[1:2:2]
		if cw.vals[2] != "" {
			hdr[hdrExposeHeaders] = cw.vals[2:3:3]
		}
	}
	// Add to Vary, never replace it (a later handler may have set its own).
	if v := hdr[hdrVary]; v == nil {
		hdr[hdrVary] = cw.vals[3:4:4]
	} else if !varyHas(v, "Origin") {
		hdr[hdrVary] = append(v, "Origin")
	}
}

// varyHas reports whether Vary lines name token (or "*").
func varyHas(lines []string, token string) bool {
	for _, line := range lines {
		for line != "" {
			var v string
			v, line, _ = strings.Cut(line, ",")
			v = strings.TrimSpace(v)
			if v == "*" || strings.EqualFold(v, token) {
				return true
			}
		}
	}
	return false
}

func (cw *corsWriter) WriteHeader(status int) {
	if !cw.wroteHeader {
		// 1xx responses are not final, but send the header map too.
		if status >= 200 || status == http.StatusSwitchingProtocols {
			cw.wroteHeader = true
		}
		cw.finish()
	}
	cw.ResponseWriterWrapper.WriteHeader(status)
}

func (cw *corsWriter) Write(b []byte) (int, error) {
	if !cw.wroteHeader {
		cw.WriteHeader(http.StatusOK)
	}
	return cw.ResponseWriterWrapper.Write(b)
}

// ReadFrom must not bypass WriteHeader (ResponseWriterWrapper's goes
// straight to the underlying writer).
func (cw *corsWriter) ReadFrom(src io.Reader) (int64, error) {
	if !cw.wroteHeader {
		cw.WriteHeader(http.StatusOK)
	}
	return cw.ResponseWriterWrapper.ReadFrom(src)
}

// FlushError serves http.ResponseController, which would otherwise
// unwrap to the underlying writer and write the header without us.
func (cw *corsWriter) FlushError() error {
	if !cw.wroteHeader {
		cw.WriteHeader(http.StatusOK)
	}
	return http.NewResponseController(cw.ResponseWriter).Flush()
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
	_ http.ResponseWriter         = (*corsWriter)(nil)
	_ io.ReaderFrom               = (*corsWriter)(nil)
)
