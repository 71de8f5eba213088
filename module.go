// Package atomspherecors is a Caddy HTTP handler that gives a REST API
// per-account CORS rules: each account lists the origins that may call
// its API from a browser and the methods each origin may use.
package atomspherecors

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"atomspherecors/internal/policy"
	"atomspherecors/internal/rulestore"
)

func init() {
	caddy.RegisterModule(Handler{})
	caddy.RegisterModule(errorsGuard{})
}

// Rule allows one origin to call an account's API with some methods: an
// origin (scheme, host and optional port) and its methods (default GET,
// POST and DELETE). See policy.Rule for every field.
type Rule = policy.Rule

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

	// Turns off the path guard. By default a request whose target a
	// common backend could read as another account than Caddy's cleaned
	// path does (path parameters such as "..;/", backslashes, double
	// encoding, overlong UTF-8, encoded slashes or dots) is refused with
	// 400 before any CORS decision. Turn it off only for upstreams known
	// to read paths exactly as Caddy does. Default: false (guard on).
	DisablePathGuard bool `json:"disable_path_guard,omitempty"`

	// The CORS rules of each account, by account ID. An account ID is
	// one path segment (not empty, no "/"). An account that is not
	// listed, or has no rules, allows no origin. Rules with the same
	// origin are merged, their methods united.
	Accounts map[string][]Rule `json:"accounts"`

	// Takes the accounts from a rules store in Caddy's storage instead
	// of from Accounts, which must then be empty (docs/store.md).
	Store *StoreConfig `json:"store,omitempty"`

	ix        *policy.Index
	store     *rulestore.Store // the store ix serves the accounts of; nil for inline accounts
	logger    *zap.Logger
	errLogger *zap.Logger

	// warnDeferred logs once that deferred header operations before
	// this handler make it refuse requests (see outerheaders.go).
	warnDeferred *sync.Once
	// warnVary logs once that deferred header operations before this
	// handler take out its Vary (see outerheaders.go).
	warnVary *sync.Once

	// errs are the error routes of the server, which this handler runs
	// itself on account paths; nil when the server has none.
	errs *errorRoutes

	// obs receives every decision: metrics and access log
	// (decision.go).
	obs observation
}

// errorRoutes are a server's error routes, compiled on first use: they
// are provisioned after the handlers of the server's routes.
type errorRoutes struct {
	srv   *caddyhttp.Server
	chain atomic.Pointer[caddyhttp.Handler]
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
	if err := checkCaddyInternals(); err != nil {
		return err
	}
	h.errLogger = ctx.Logger(errorLog{})
	h.warnDeferred = new(sync.Once)
	h.warnVary = new(sync.Once)
	if err := h.provisionObservability(ctx); err != nil {
		return err
	}
	srv, inServer := ctx.Value(caddyhttp.ServerCtxKey).(*caddyhttp.Server)
	// With a handler that could rewrite the path before this one, the
	// path guard reads the original target too.
	rewrites := inServer && serverRewrites(srv)
	ix, err := newIndex(h, rewrites, nil)
	if err != nil {
		return err
	}
	h.ix = ix
	if err := h.provisionStore(ctx, rewrites); err != nil {
		return err
	}
	// Errors on account paths go through the server's error routes, which
	// start with a route of ours (see errorpolicy.go); this handler runs
	// them itself, inside its own writer.
	if inServer {
		installed, err := installErrorPolicies(ctx, srv, h)
		if err != nil {
			return err
		}
		if installed || srv.Errors != nil && len(srv.Errors.Routes) > 0 {
			h.errs = &errorRoutes{srv: srv}
		}
	}
	// The index holds everything requests need; Caddy keeps its own copy
	// of the JSON, so let the decoded rules go (a large config would
	// otherwise be held twice).
	h.Accounts = nil
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

// errAmbiguousPath refuses a target that the path guard found could be
// read as another account by the upstream.
var errAmbiguousPath error = caddyhttp.HandlerError{
	StatusCode: http.StatusBadRequest,
	Err:        errors.New("request path could name another account upstream"),
	Trace:      "atomsphere_cors",
}

// errHandshakeDenied refuses a connection upgrade (a WebSocket handshake)
// from an origin the account does not allow. Browsers apply no CORS
// check to a WebSocket: whatever the handshake's response says, the page
// reads the socket, so the module refuses it instead (docs/behaviour.md
// §3).
var errHandshakeDenied error = caddyhttp.HandlerError{
	StatusCode: http.StatusForbidden,
	Err:        errors.New("connection upgrade refused: the account does not allow this origin"),
	Trace:      "atomsphere_cors",
}

// newIndex checks the handler's config and compiles it (policy.NewIndex),
// with the problems of its store settings in their place.
func newIndex(h *Handler, rewrites bool, live policy.Source) (*policy.Index, error) {
	c := policy.Config{
		Rewrites:        rewrites,
		Live:            live,
		PathPrefixes:    h.PathPrefixes,
		Accounts:        h.Accounts,
		AllowHeaders:    h.AllowHeaders,
		ExposeHeaders:   h.ExposeHeaders,
		PreflightStatus: h.PreflightStatus,
		PathGuard:       !h.DisablePathGuard,
		Check:           func(p *policy.Problems) { checkStore(h, p) },
		CleanPath:       func(p string) string { return caddyhttp.CleanPath(p, true) },
		OriginalRequest: func(r *http.Request) (http.Request, bool) {
			orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request)
			return orig, ok
		},
	}
	if h.MaxAge != nil {
		d := time.Duration(*h.MaxAge)
		c.MaxAge = &d
	}
	return policy.NewIndex(c)
}

// ServeHTTP implements caddyhttp.MiddlewareHandler: decide, observe,
// respond.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	var d policy.Decision
	h.ix.DecideTo(&d, r)
	if d.Kind == policy.Untouched {
		return next.ServeHTTP(w, r)
	}
	// A header handler before this one that defers Access-Control-*
	// operations would override whatever this handler writes: such a
	// request is refused below it (outerheaders.go).
	var below http.ResponseWriter
	if !d.Refused() {
		var vary bool
		if below, vary = deferredWriters(w); below != nil {
			d.Rule, d.Reason = nil, policy.DeferredHeaders
		} else if vary {
			h.warnDeferredVary()
		}
	}
	h.observe(r, &d)
	return h.respond(w, r, next, &d, below)
}

// respond answers a decision on an account path: a refusal, a
// preflight, or a normal request that goes on to next. below is the
// deferring writer of a DeferredHeaders refusal. The explain command
// calls it too, with a recorder.
func (h *Handler) respond(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, d *policy.Decision, below http.ResponseWriter) error {
	switch {
	case d.Reason == policy.AmbiguousPath:
		return h.refuse(w, r, errAmbiguousPath, "Origin")
	case d.Reason == policy.DeferredHeaders:
		return h.refuseDeferredCORS(below)
	case d.Kind == policy.Preflight:
		return h.preflight(w, r, d)
	case d.Rule == nil && d.Reason != policy.NoOrigin && isUpgrade(r):
		return h.refuse(w, r, errHandshakeDenied, "Origin")
	}
	return h.normal(w, r, next, d)
}

// noSwitch removes from r what asks to switch protocols (Upgrade, the
// upgrade token of Connection, HTTP/2's :protocol), before error routes
// run for a request on an account path: a reverse_proxy there would
// otherwise complete a WebSocket handshake the module refused, or one
// that failed before it.
func noSwitch(r *http.Request) {
	if !isUpgrade(r) && len(r.Header["Connection"]) == 0 {
		return
	}
	delete(r.Header, "Upgrade")
	delete(r.Header, ":protocol")
	if r.Method == http.MethodConnect && !strings.HasPrefix(r.Proto, "HTTP/") {
		// HTTP/3 gives an extended CONNECT's protocol as Proto, which
		// reverse_proxy takes for a WebSocket.
		r.Proto = "HTTP/" + strconv.Itoa(r.ProtoMajor) + ".0"
	}
	if lines := r.Header["Connection"]; len(lines) > 0 {
		var keep []string
		for _, line := range lines {
			for token := range strings.SplitSeq(line, ",") {
				if token = strings.TrimSpace(token); token != "" && !strings.EqualFold(token, "upgrade") {
					keep = append(keep, token)
				}
			}
		}
		if len(keep) == 0 {
			delete(r.Header, "Connection")
		} else {
			r.Header["Connection"] = []string{strings.Join(keep, ", ")}
		}
	}
}

// isUpgrade reports whether r asks to leave HTTP for another protocol on
// its connection: an Upgrade header (a WebSocket handshake over HTTP/1.1,
// RFC 6455 §4.1) or CONNECT (over HTTP/2, RFC 8441). A browser sends
// Origin with both and reads the connection whatever CORS says.
func isUpgrade(r *http.Request) bool {
	return len(r.Header["Upgrade"]) > 0 || r.Method == http.MethodConnect
}

// preflight answers a preflight: allowed, with preflight_status and the
// Access-Control-* headers; denied, with 401 through the error routes.
func (h *Handler) preflight(w http.ResponseWriter, r *http.Request, d *policy.Decision) error {
	if d.Rule == nil {
		return h.refuse(w, r, errPreflightDenied, varyPreflight)
	}
	// Only this handler's CORS headers go out on a preflight, not those
	// that handlers before it set (a site-level header directive).
	hdr := w.Header()
	hasVary := dropCORS(hdr)
	// One allocation for every value this response sets (see
	// preflightValues).
	v := &preflightValues{
		allowOrigin:  [1]string{d.Origin}, // the request's Origin, byte for byte
		allowCreds:   [1]string{"true"},
		allowMethods: [1]string{d.Rule.Methods.Header},
		maxAge:       [1]string{h.ix.MaxAge()},
		allowHeaders: [1]string{h.ix.AllowHeaders()},
		vary:         [1]string{varyPreflight},
	}
	hdr[hdrAllowOrigin] = v.allowOrigin[:]
	hdr[hdrAllowCreds] = v.allowCreds[:]
	hdr[hdrAllowMethods] = v.allowMethods[:]
	hdr[hdrMaxAge] = v.maxAge[:]
	if h.ix.AllowHeaders() != "" {
		hdr[hdrAllowHeaders] = v.allowHeaders[:]
	}
	// Add to Vary, never replace it, as a denied preflight does.
	setVary(hdr, v.vary[:], hasVary)
	w.WriteHeader(h.ix.Status())
	return nil
}

// normal runs the next handler through a writer that makes the module's
// CORS headers the only ones on the response.
func (h *Handler) normal(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, d *policy.Decision) error {
	cw := &corsWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	if d.Rule != nil {
		cw.v.allowOrigin[0], cw.v.allowCreds[0], cw.v.exposeHeaders[0] = d.Origin, "true", h.ix.ExposeHeaders()
		cw.allowed = true
	}
	cw.v.vary[0] = "Origin"
	cw.vary = true

	err := next.ServeHTTP(cw, r)
	if err != nil {
		err = h.serveError(cw, r, err)
	} else if !cw.wroteHeader {
		// Nothing was written: the server writes the response after we
		// return. Headers set now survive to it.
		cw.finish()
	}
	if hdr := cw.ResponseWriter.Header(); cw.wroteHeader && len(hdr) != cw.keys {
		// net/http sends trailers from the header map after the handler
		// returns: drop the CORS ones set since the header was written.
		// An undeclared trailer is a new key (http.TrailerPrefix + name),
		// so a map with as many keys as finish left has none to drop.
		dropCORSTrailers(hdr)
	}
	return err
}

// refuse answers a request this handler refuses on an account path (a
// denied preflight, an ambiguous path): the error goes to the site's
// error routes, with no Access-Control-* header whoever sets it, and vary
// added to Vary.
func (h *Handler) refuse(w http.ResponseWriter, r *http.Request, err error, vary string) error {
	if h.errs == nil {
		// No error routes: the server writes the status alone, from the
		// header map as it is now.
		hdr := w.Header()
		hasVary := dropCORS(hdr)
		if vary != "" {
			setVary(hdr, []string{vary}, hasVary)
		}
		return err
	}
	cw := &corsWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: w}}
	if vary != "" {
		cw.v.vary[0] = vary
		cw.vary = true
	}
	err = h.serveError(cw, r, err)
	if cw.wroteHeader {
		dropCORSTrailers(w.Header())
	}
	return err
}

// serveError handles an error on an account path. Caddy runs a site's
// error routes (handle_errors) with its own response writer, outside this
// handler's, so whatever they write (an upstream's CORS headers, say)
// would reach the client. Where the site has error routes, this handler
// runs them itself, through cw, as Caddy's server would: on the original
// request, with the error in the request context and the {http.error.*}
// placeholders set, logged to Caddy's error log. The error is then
// handled, and nil returned. Without error routes, or inside them, the
// error goes back to Caddy, which writes the status alone.
func (h *Handler) serveError(cw *corsWriter, r *http.Request, err error) error {
	if h.errs == nil || r.Context().Value(caddyhttp.ErrorCtxKey) != nil {
		if !cw.wroteHeader {
			cw.finish()
		}
		return err
	}
	restoreOriginal(r)
	noSwitch(r)
	er := h.errs.srv.Errors.WithError(r, err)
	er = er.WithContext(context.WithValue(er.Context(), inModuleWriterKey{}, true))
	err2 := h.errs.compiled().ServeHTTP(newErrorWriter(cw, r), er)

	status, msg, herr := statusOf(err)
	if err2 == nil {
		if ce := h.errLogger.Check(zapcore.DebugLevel, msg); ce != nil {
			ce.Write(errFields(er, status, herr)...)
		}
	} else {
		if ce := h.errLogger.Check(zapcore.ErrorLevel, "error handling handler error"); ce != nil {
			ce.Write(append([]zap.Field{zap.String("error", err2.Error()), zap.Namespace("first_error"),
				zap.String("msg", msg)}, errFields(er, status, herr)...)...)
		}
		cw.WriteHeader(status)
	}
	if !cw.wroteHeader {
		cw.finish()
	}
	return nil
}

// statusOf returns the status and message Caddy's server logs for err,
// and the HandlerError it wraps, if any.
func statusOf(err error) (int, string, caddyhttp.HandlerError) {
	status, msg := http.StatusInternalServerError, err.Error()
	var herr caddyhttp.HandlerError
	if errors.As(err, &herr) {
		status = herr.StatusCode
		if herr.Err != nil {
			msg = herr.Err.Error()
		}
	}
	return status, msg, herr
}

// compiled returns the error routes, compiled once.
func (e *errorRoutes) compiled() caddyhttp.Handler {
	if c := e.chain.Load(); c != nil {
		return *c
	}
	c := e.srv.Errors.Routes.Compile(errorStatus)
	e.chain.Store(&c)
	return c
}

// errorStatus ends the error routes as Caddy's server ends them: with the
// error's status, when no route wrote a response.
var errorStatus caddyhttp.Handler = caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
	var herr caddyhttp.HandlerError
	if err, _ := r.Context().Value(caddyhttp.ErrorCtxKey).(error); errors.As(err, &herr) {
		w.WriteHeader(herr.StatusCode)
	} else {
		w.WriteHeader(http.StatusInternalServerError)
	}
	return nil
})

// restoreOriginal puts back the method, remote address and URI the
// client sent (a rewrite may have changed them), in place, as Caddy's
// server does before it runs its error routes: the {http.request.*}
// placeholders read the request they were set up with.
func restoreOriginal(r *http.Request) {
	orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request)
	if !ok {
		return
	}
	r.Method = orig.Method
	r.RemoteAddr = orig.RemoteAddr
	r.RequestURI = orig.RequestURI
	if orig.URL != nil && r.URL != nil {
		*r.URL = *orig.URL
		if orig.URL.User != nil {
			u := *orig.URL.User
			r.URL.User = &u
		}
	}
}

// errFields are the fields of Caddy's error log entries.
func errFields(r *http.Request, status int, herr caddyhttp.HandlerError) []zap.Field {
	return []zap.Field{
		zap.Object("request", caddyhttp.LoggableHTTPRequest{Request: r}),
		zap.Int("status", status),
		zap.String("err_id", herr.ID),
		zap.String("err_trace", herr.Trace),
	}
}

// errorLog names Caddy's error logger, "http.log.error", so that the
// errors of the error routes this handler runs are logged where Caddy's
// server logs them, under the user's log configuration.
type errorLog struct{}

func (errorLog) CaddyModule() caddy.ModuleInfo { return caddy.ModuleInfo{ID: "http.log.error"} }

// preflightValues are the header values of one allowed preflight, each
// its own one-element array: sliced into the header map, no value slice
// is shared with another response or has room for a later append to
// write into (https://github.com/rs/cors/issues/198).
type preflightValues struct {
	allowOrigin, allowCreds, allowMethods, maxAge, allowHeaders, vary [1]string
}

// responseValues are the header values of one normal response, likewise.
type responseValues struct {
	allowOrigin, allowCreds, exposeHeaders, vary [1]string
}

// corsWriter makes this handler's CORS headers the only ones on a
// response of an account path (docs/behaviour.md §4). It
// applies them when the response header is written; the handler applies
// them itself when nothing was written (an error goes back to Caddy).
type corsWriter struct {
	caddyhttp.ResponseWriterWrapper
	v           responseValues
	keys        int  // keys in the header map when finish ran
	vary        bool // add v.vary to Vary unless Vary names it already
	allowed     bool
	wroteHeader bool
	// The bools come last, together: the writer is allocated once per
	// request, and this order keeps it in a smaller size class.
}

// finish removes every Access-Control-* header (and trailer, declared or
// not) and sets this handler's.
func (cw *corsWriter) finish() {
	hdr := cw.ResponseWriter.Header()
	hasVary := dropCORS(hdr)
	if cw.allowed {
		hdr[hdrAllowOrigin] = cw.v.allowOrigin[:]
		hdr[hdrAllowCreds] = cw.v.allowCreds[:]
		if cw.v.exposeHeaders[0] != "" {
			hdr[hdrExposeHeaders] = cw.v.exposeHeaders[:]
		}
	}
	if cw.vary {
		setVary(hdr, cw.v.vary[:], hasVary)
	}
	cw.keys = len(hdr)
}

// isCORS reports whether a header name starts with "Access-Control-",
// in any case.
func isCORS(k string) bool {
	const p = "Access-Control-"
	return len(k) >= len(p) && strings.EqualFold(k[:len(p)], p)
}

// dropCORS removes every Access-Control-* header from hdr, the trailers
// announced for later (http.TrailerPrefix keys), and Access-Control-*
// names from the Trailer header, so none is sent as a trailer either.
// It reports whether hdr has a Vary key, which spares the callers that
// add to Vary a lookup when it has none (setVary).
func dropCORS(hdr http.Header) (hasVary bool) {
	for k, v := range hdr {
		switch {
		case k == hdrVary:
			hasVary = true
		case isCORS(k):
			delete(hdr, k)
		case len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix:
			if isCORS(k[len(http.TrailerPrefix):]) {
				delete(hdr, k)
			}
		case k == "Trailer":
			if names := withoutCORSNames(v); len(names) == 0 {
				delete(hdr, k)
			} else {
				hdr[k] = names
			}
		}
	}
	return hasVary
}

// dropCORSTrailers removes the Access-Control-* trailers set after the
// header was written (only http.TrailerPrefix keys are sent then: the
// declared trailers were fixed when the header was written).
func dropCORSTrailers(hdr http.Header) {
	for k := range hdr {
		if len(k) > len(http.TrailerPrefix) && k[:len(http.TrailerPrefix)] == http.TrailerPrefix && isCORS(k[len(http.TrailerPrefix):]) {
			delete(hdr, k)
		}
	}
}

// withoutCORSNames returns the Trailer header lines without the
// Access-Control-* names (the lines themselves when they have none).
func withoutCORSNames(lines []string) []string {
	found := false
	for _, line := range lines {
		for name := range strings.SplitSeq(line, ",") {
			if isCORS(strings.TrimSpace(name)) {
				found = true
			}
		}
	}
	if !found {
		return lines
	}
	var keep []string
	for _, line := range lines {
		for name := range strings.SplitSeq(line, ",") {
			if name = strings.TrimSpace(name); name != "" && !isCORS(name) {
				keep = append(keep, name)
			}
		}
	}
	if len(keep) == 0 {
		return nil
	}
	return []string{strings.Join(keep, ", ")}
}

// addVary adds value (one line, of capacity 1 so that no later append
// writes into it) to Vary unless Vary names each of its tokens (or "*")
// already: Vary is extended, never replaced.
func addVary(hdr http.Header, value []string) {
	v := hdr[hdrVary]
	if v == nil {
		hdr[hdrVary] = value
		return
	}
	for rest := value[0]; rest != ""; {
		var token string
		token, rest, _ = strings.Cut(rest, ",")
		if !varyHas(v, strings.TrimSpace(token)) {
			hdr[hdrVary] = append(v, value[0])
			return
		}
	}
}

// setVary is addVary for a header map that has a Vary key or not, as
// dropCORS told: without one, value is set without a lookup.
func setVary(hdr http.Header, value []string, hasVary bool) {
	if hasVary {
		addVary(hdr, value)
	} else {
		hdr[hdrVary] = value
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
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
	_ caddyfile.Unmarshaler       = (*Handler)(nil)
	_ http.ResponseWriter         = (*corsWriter)(nil)
	_ io.ReaderFrom               = (*corsWriter)(nil)
)
