package policy

import (
	"net/http"
	"strings"
)

// The request headers Decide reads, in canonical form.
const (
	hdrOrigin    = "Origin"
	hdrReqMethod = "Access-Control-Request-Method"
)

// One request, one decision. Decide reads the request and the compiled
// rules and says what the module does with it, without writing, logging
// or counting anything; ServeHTTP then observes the decision (metrics,
// access log, debug log) and responds to it. The explain command calls
// the same Decide.

// Kind is what a request is to the module.
type Kind uint8

const (
	// Untouched is a request outside the account paths: it goes on to
	// the next handler, and the module changes nothing.
	Untouched Kind = iota
	// Preflight is OPTIONS with Origin and a non-empty
	// Access-Control-Request-Method (Fetch standard, "CORS-preflight
	// request"): the module answers it.
	Preflight
	// Normal is any other request on an account path: it goes on to the
	// next handler, with the module's CORS headers when allowed.
	Normal

	NumKinds
)

// String is the kind's label in the metrics and the access log.
func (k Kind) String() string {
	return [NumKinds]string{"untouched", "preflight", "normal"}[k]
}

// Reason says why a request on an account path is denied; Allowed when
// it is not.
type Reason uint8

const (
	Allowed Reason = iota
	NoOrigin
	RepeatedOrigin
	NoRules
	OriginNotAllowed
	MalformedOrigin
	MethodNotAllowed
	RepeatedRequestMethod
	// AmbiguousPath is the path guard's refusal (docs/behaviour.md §5).
	AmbiguousPath
	// DeferredHeaders is the refusal of a request under a header handler
	// that defers Access-Control-* operations (docs/behaviour.md §4).
	DeferredHeaders

	NumReasons
)

// reasonLabels are the reasons as the debug log, the access log and the
// metrics name them.
var reasonLabels = [NumReasons]string{
	Allowed:               "",
	NoOrigin:              "no Origin header",
	RepeatedOrigin:        "repeated Origin header",
	NoRules:               "account has no rules",
	OriginNotAllowed:      "origin not allowed",
	MalformedOrigin:       "malformed Origin header",
	MethodNotAllowed:      "method not allowed",
	RepeatedRequestMethod: "repeated Access-Control-Request-Method header",
	AmbiguousPath:         "ambiguous path",
	DeferredHeaders:       "deferred Access-Control-* header operations",
}

// String is the reason's label: "" for Allowed.
func (r Reason) String() string { return reasonLabels[r] }

// Decision is what the module does with one request.
type Decision struct {
	Kind   Kind
	Reason Reason
	// Reading names, for a path guard refusal (AmbiguousPath), the
	// backend reading that named another account. (Here, beside Kind
	// and Reason, it takes no room of its own.)
	Reading Reading
	Account string         // the account of the path; "" when untouched
	Rule    *AllowedOrigin // the rule that allows the request; nil when denied
	Origin  string         // the request's one Origin when allowed, byte for byte
}

// Allowed reports whether the request is allowed.
func (d Decision) Allowed() bool { return d.Reason == Allowed && d.Kind != Untouched }

// Refused reports whether the request is refused before any CORS
// decision (the path guard, deferred header operations): it is answered
// with an error status and never reaches the next handler.
func (d Decision) Refused() bool { return d.Reason == AmbiguousPath || d.Reason == DeferredHeaders }

// KindOf tells a preflight from a normal request.
func KindOf(r *http.Request) Kind {
	if preflightMethods(r, r.Header[hdrOrigin]) != nil {
		return Preflight
	}
	return Normal
}

// preflightMethods returns the Access-Control-Request-Method lines of r
// when r, whose Origin lines are origin, is a preflight: OPTIONS with an
// Origin and a non-empty Access-Control-Request-Method (Fetch standard,
// "CORS-preflight request"); nil for any other request.
func preflightMethods(r *http.Request, origin []string) []string {
	if r.Method != http.MethodOptions || len(origin) == 0 {
		return nil
	}
	if m := r.Header[hdrReqMethod]; len(m) > 1 || len(m) == 1 && m[0] != "" {
		return m
	}
	return nil
}

// Decide decides r: its account, under Caddy's reading of the path
// (docs/behaviour.md §1), checked against the readings of common backends
// when the path guard is on (Config.PathGuard, §5); then the account's
// rule for the one Origin, and whether it lists the method (§2, §3).
func (ix *Index) Decide(r *http.Request) Decision {
	var d Decision
	ix.DecideTo(&d, r)
	return d
}

// DecideTo is Decide into d, which must be the zero Decision: a caller on
// the request path keeps the decision on its own stack, not copied back.
func (ix *Index) DecideTo(d *Decision, r *http.Request) {
	// A plain path reads as AccountOf reads it, with nothing to clean.
	id, ok, _, skip := ix.startOf(r.URL.Path)
	plain := plainPath(r.URL.Path, skip)
	if !plain {
		id, ok = ix.AccountOf(r.URL.Path)
	}
	if ix.guard {
		var reading Reading
		if guardedTarget(r, plain) {
			reading = ix.ambiguous(r, id, ok)
		}
		if !reading.Fired() && ix.rewrites {
			reading = ix.originalReadsOther(r, id, ok)
		}
		if reading.Fired() {
			d.Kind, d.Reason, d.Account, d.Reading = KindOf(r), AmbiguousPath, id, reading
			return
		}
	}
	if !ok {
		return
	}
	// Each header is read once: a lookup hashes its name.
	d.Kind, d.Account = Normal, id
	origin := r.Header[hdrOrigin]
	reqMethod := preflightMethods(r, origin)
	if reqMethod != nil {
		d.Kind = Preflight
	}
	d.Rule, d.Reason = ix.match(id, origin)
	if d.Rule == nil {
		return
	}
	var method string
	if d.Kind == Preflight {
		if len(reqMethod) > 1 {
			d.Rule, d.Reason = nil, RepeatedRequestMethod
			return
		}
		method = reqMethod[0]
	} else {
		method = methodOf(r)
	}
	if !d.Rule.Methods.allows(method) {
		d.Rule, d.Reason = nil, MethodNotAllowed
		return
	}
	d.Origin = origin[0]
}

// Method is the method the decision is about: the requested one of a
// preflight, the request's own otherwise.
func (d Decision) Method(r *http.Request) string {
	if d.Kind == Preflight {
		return r.Header[hdrReqMethod][0]
	}
	return methodOf(r)
}

// methodOf is the method a rule must allow for a normal request: its own,
// except that a WebSocket over HTTP/2 or HTTP/3, an extended CONNECT
// (RFC 8441, RFC 9220), is judged as the GET whose handshake it replaces.
// Go's servers give its protocol as a ":protocol" header (HTTP/2) or as
// the request's Proto.
func methodOf(r *http.Request) string {
	if r.Method == http.MethodConnect && (len(r.Header[":protocol"]) > 0 || r.Proto != "" && !strings.HasPrefix(r.Proto, "HTTP/")) {
		return http.MethodGet
	}
	return r.Method
}
