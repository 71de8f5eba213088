package atomspherecors

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// nextHandler is a caddyhttp.Handler made of a function, as in
// caddyserver/caddy modules/caddyhttp/headers/headers_test.go.
type nextHandler func(http.ResponseWriter, *http.Request) error

func (f nextHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) error { return f(w, r) }

// Next behaviours: what the handler after atomsphere_cors does.
var (
	// nextOK is a plain API: 200 and a body.
	nextOK = func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "next")
		return nil
	}
	// nextNotFound answers 404 itself.
	nextNotFound = func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(http.StatusNotFound)
		_, _ = io.WriteString(w, "next")
		return nil
	}
	// nextUpstreamCORS is a proxied upstream with its own CORS policy.
	nextUpstreamCORS = func(w http.ResponseWriter, r *http.Request) error {
		setUpstreamCORS(w)
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "next")
		return nil
	}
	// nextAuthError is basic_auth refusing: a Caddy error, nothing written.
	nextAuthError = func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Www-Authenticate", `Basic realm="restricted"`)
		return caddyhttp.Error(http.StatusUnauthorized, errors.New("not authenticated"))
	}
	// nextUpstreamCORSThenError sets upstream headers, then fails
	// without writing (the error path of docs/behaviour.md §3 and §4).
	nextUpstreamCORSThenError = func(w http.ResponseWriter, r *http.Request) error {
		setUpstreamCORS(w)
		return caddyhttp.Error(http.StatusBadGateway, errors.New("upstream failed"))
	}
	// nextUpstreamWriteOnly writes the body without WriteHeader.
	nextUpstreamWriteOnly = func(w http.ResponseWriter, r *http.Request) error {
		setUpstreamCORS(w)
		_, _ = io.WriteString(w, "next")
		return nil
	}
	// nextUpstreamReadFrom copies the body with io.Copy (ReaderFrom).
	nextUpstreamReadFrom = func(w http.ResponseWriter, r *http.Request) error {
		setUpstreamCORS(w)
		_, err := io.Copy(w, io.LimitReader(strings.NewReader("next"), 4))
		return err
	}
	// nextUpstreamFlush flushes before writing anything else.
	nextUpstreamFlush = func(w http.ResponseWriter, r *http.Request) error {
		setUpstreamCORS(w)
		if err := http.NewResponseController(w).Flush(); err != nil {
			return err
		}
		_, _ = io.WriteString(w, "next")
		return nil
	}
	// nextUpstreamLowerCase puts a non-canonical key in the header map.
	nextUpstreamLowerCase = func(w http.ResponseWriter, r *http.Request) error {
		w.Header()["access-control-allow-origin"] = []string{"*"}
		w.Header()["ACCESS-CONTROL-ALLOW-CREDENTIALS"] = []string{"true"}
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "next")
		return nil
	}
	// nextSetsOurHeader replaces our headers with Set.
	nextSetsOurHeader = func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Access-Control-Allow-Origin", "https://evil.example")
		w.Header().Set("Access-Control-Allow-Credentials", "false")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "next")
		return nil
	}
	// nextUpstreamVaryOrigin sends its own Vary: Origin.
	nextUpstreamVaryOrigin = func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Add("Vary", "Origin, Accept-Encoding")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "next")
		return nil
	}
)

// setUpstreamCORS writes the CORS headers of an upstream with a policy
// of its own, and its Vary.
func setUpstreamCORS(w http.ResponseWriter) { setUpstreamHeaders(w, upstreamCORSUntouched()) }

// upstreamCORS is the CORS policy of an upstream that has one of its own:
// any origin, the given credentials, methods and allowed headers, an
// exposed x-secret, a day's max age, and Vary: Accept-Encoding.
func upstreamCORS(credentials, methods, allowHeaders string) http.Header {
	return http.Header{
		"Access-Control-Allow-Origin":      {"*"},
		"Access-Control-Allow-Credentials": {credentials},
		"Access-Control-Allow-Methods":     {methods},
		"Access-Control-Allow-Headers":     {allowHeaders},
		"Access-Control-Expose-Headers":    {"x-secret"},
		"Access-Control-Max-Age":           {"86400"},
		"Vary":                             {"Accept-Encoding"},
	}
}

// setUpstreamHeaders writes hdr (one value a field) into w's header as
// an upstream does: each field set, Vary added to.
func setUpstreamHeaders(w http.ResponseWriter, hdr http.Header) {
	h := w.Header()
	for k, v := range hdr {
		if k == "Vary" {
			h.Add(k, v[0])
		} else {
			h.Set(k, v[0])
		}
	}
}

// behaviourCase is one request through ServeHTTP, in the shape of
// jub0bs/cors MiddlewareTestCase.
type behaviourCase struct {
	desc       string
	method     string
	path       string // request target, as a client sends it
	reqHeaders http.Header
	respBefore http.Header // response headers set by handlers before this one
	next       func(http.ResponseWriter, *http.Request) error

	wantStatus     int
	wantErr        bool // ServeHTTP returns a caddyhttp.HandlerError of wantStatus
	wantHeaders    http.Header
	wantBody       string
	wantNextCalled bool
}

const (
	pathA    = "/api/rest/v1/account-123456/Atom/3456"
	mydomain = "https://mydomain.com"
)

// preflightHdr is the request header of a preflight.
func preflightHdr(origin, method string) http.Header {
	return http.Header{"Origin": {origin}, "Access-Control-Request-Method": {method}}
}

func originHdr(origin string) http.Header { return http.Header{"Origin": {origin}} }

// wantPreflightOK is the exact CORS header set of an allowed preflight
// with the default allow_headers and max_age.
func wantPreflightOK(origin, methods string) http.Header {
	return http.Header{
		"Access-Control-Allow-Origin":      {origin},
		"Access-Control-Allow-Credentials": {"true"},
		"Access-Control-Allow-Methods":     {methods},
		"Access-Control-Allow-Headers":     {wantAllowHeaders},
		"Access-Control-Max-Age":           {"3600"},
		"Vary":                             {wantVaryPreflight},
	}
}

var wantPreflightDenied = http.Header{"Vary": {wantVaryPreflight}}

func wantNormalOK(origin string) http.Header {
	return http.Header{
		"Access-Control-Allow-Origin":      {origin},
		"Access-Control-Allow-Credentials": {"true"},
		"Vary":                             {"Origin"},
	}
}

var wantNormalDenied = http.Header{"Vary": {"Origin"}}

// withHeader is h with header k set to v (deleted when v is "").
func withHeader(h http.Header, k, v string) http.Header {
	h = h.Clone()
	if v == "" {
		h.Del(k)
	} else {
		h.Set(k, v)
	}
	return h
}

// withVary is h with its Vary lines replaced by vary.
func withVary(h http.Header, vary ...string) http.Header {
	h = h.Clone()
	h["Vary"] = vary
	return h
}

// guardOffCases: with the path guard off, the module reads the account
// from the path as Caddy's path matchers do (docs/behaviour.md §1): dot
// segments resolved, repeated slashes merged, %2F decoded first.
func guardOffCases() []behaviourCase {
	return []behaviourCase{
		untouched("§1 account segment removed by .. (/api/rest/v1/account-123456/../): untouched",
			"OPTIONS", "/api/rest/v1/account-123456/../", preflightHdr(mydomain, "GET")),
		untouched("§1 .. escaping the prefix (/api/rest/v1/../account-123456/x): no account path, untouched",
			"OPTIONS", "/api/rest/v1/../account-123456/x", preflightHdr(mydomain, "GET")),
		allowPreflight("§1 dot-segments resolved: account-987654/../account-123456 belongs to account-123456",
			"/api/rest/v1/account-987654/../account-123456/Atom", preflightHdr(mydomain, "DELETE"), mydomain, "GET, POST, DELETE"),
		denyPreflight("§1 dot-segments resolved: account-123456/../account-987654 belongs to account-987654, which denies the origin",
			"/api/rest/v1/account-123456/../account-987654/Atom", preflightHdr(mydomain, "GET")),
		allowPreflight("§1 single-dot segment resolved: /api/rest/v1/./account-123456/x",
			"/api/rest/v1/./account-123456/x", preflightHdr(mydomain, "GET"), mydomain, "GET, POST, DELETE"),
		allowPreflight("§1 %2F and %2E decoded before cleaning: account-987654%2F%2E%2E%2Faccount-123456 belongs to account-123456",
			"/api/rest/v1/account-987654%2F%2E%2E%2Faccount-123456/x", preflightHdr(mydomain, "GET"), mydomain, "GET, POST, DELETE"),
		denyNormal("§1 %2F decoded: account-123456%2F..%2Faccount-987654 belongs to account-987654",
			"GET", "/api/rest/v1/account-123456%2F..%2Faccount-987654/x", originHdr(mydomain)),
	}
}

// Row builders of the behaviour table: each row says only what differs
// from the plain case (next is a plain API answering 200 "next").

// denyPreflight: 401 as a Caddy error, Vary only, next not run.
func denyPreflight(desc, path string, hdr http.Header) behaviourCase {
	return behaviourCase{desc: desc, method: "OPTIONS", path: path, reqHeaders: hdr,
		next: nextOK, wantStatus: 401, wantErr: true, wantHeaders: wantPreflightDenied}
}

// allowPreflight: preflight_status with the headers for origin and the
// account's methods for it, next not run.
func allowPreflight(desc, path string, hdr http.Header, origin, methods string) behaviourCase {
	return behaviourCase{desc: desc, method: "OPTIONS", path: path, reqHeaders: hdr,
		next: nextOK, wantStatus: 204, wantHeaders: wantPreflightOK(origin, methods)}
}

// denyNormal: next runs and its answer stands, with Vary: Origin only.
func denyNormal(desc, method, path string, hdr http.Header) behaviourCase {
	return behaviourCase{desc: desc, method: method, path: path, reqHeaders: hdr,
		next: nextOK, wantStatus: 200, wantHeaders: wantNormalDenied, wantBody: "next", wantNextCalled: true}
}

// refusedPath: the path guard's 400 as a Caddy error, Vary: Origin
// only, next not run.
func refusedPath(desc, method, path string, hdr http.Header) behaviourCase {
	return behaviourCase{desc: desc, method: method, path: path, reqHeaders: hdr,
		next: nextOK, wantStatus: 400, wantErr: true, wantHeaders: http.Header{"Vary": {"Origin"}}}
}

// untouched: not an account path; next runs, no CORS header, no Vary.
func untouched(desc, method, path string, hdr http.Header) behaviourCase {
	return behaviourCase{desc: desc, method: method, path: path, reqHeaders: hdr,
		next: nextOK, wantStatus: 200, wantHeaders: http.Header{}, wantBody: "next", wantNextCalled: true}
}

// upstreamAllowed and upstreamDenied: a GET on pathA, allowed or not,
// whose next sends CORS headers of its own and Vary: Accept-Encoding; the
// answer carries only the module's, and Vary extended.
func upstreamAllowed(desc string, next func(http.ResponseWriter, *http.Request) error) behaviourCase {
	return behaviourCase{desc: desc, method: "GET", path: pathA, reqHeaders: originHdr(mydomain),
		next: next, wantStatus: 200, wantHeaders: withHeader(wantNormalOK(mydomain), "Vary", "Accept-Encoding, Origin"),
		wantBody: "next", wantNextCalled: true}
}

// upstreamUntouched: a GET from an allowed origin on path, no account
// path, whose next sends CORS headers of its own: they reach the client
// as next wrote them.
func upstreamUntouched(desc, path string) behaviourCase {
	return behaviourCase{desc: desc, method: "GET", path: path, reqHeaders: originHdr(mydomain),
		next: nextUpstreamCORS, wantStatus: 200, wantHeaders: upstreamCORSUntouched(), wantBody: "next", wantNextCalled: true}
}

func upstreamDenied(desc string, next func(http.ResponseWriter, *http.Request) error) behaviourCase {
	return behaviourCase{desc: desc, method: "GET", path: pathA, reqHeaders: originHdr("https://evil.example"),
		next: next, wantStatus: 200, wantHeaders: http.Header{"Vary": {"Accept-Encoding", "Origin"}},
		wantBody: "next", wantNextCalled: true}
}

// allowNormal: next runs, and the answer carries the headers for origin.
func allowNormal(desc, method, path string, hdr http.Header, origin string) behaviourCase {
	return behaviourCase{desc: desc, method: method, path: path, reqHeaders: hdr,
		next: nextOK, wantStatus: 200, wantHeaders: wantNormalOK(origin), wantBody: "next", wantNextCalled: true}
}

// behaviourConfig is the docs/behaviour.md §7 example plus accounts for merging,
// IDN, IPv6, default methods and empty rules.
const behaviourConfig = `{
	"accounts": {
		"account-123456": [
			{"origin": "https://mydomain.com", "methods": ["GET", "POST", "DELETE"]},
			{"origin": "http://localhost:8080", "methods": ["GET"]}
		],
		"account-987654": [{"origin": "https://app.example.org:8443"}],
		"account-merge": [
			{"origin": "https://mydomain.com", "methods": ["get"]},
			{"origin": "https://other.example", "methods": ["POST"]},
			{"origin": "HTTPS://MyDomain.com:443", "methods": ["PUT", "GET"]}
		],
		"account-idn": [
			{"origin": "https://bücher.example"},
			{"origin": "http://[2001:DB8:0:0:0:0:0:1]:8080", "methods": ["GET"]}
		],
		"account-post": [{"origin": "https://mydomain.com", "methods": ["POST"]}],
		"account-empty": []
	}
}`

// behaviourGroup is a part of the behaviour table: its cases run through
// one handler loaded from config.
type behaviourGroup struct {
	name   string
	config string
	cases  []behaviourCase
}

// maxAgeGroup: one account allowing https://mydomain.com GET, max_age
// given as the JSON value maxAge; its allowed preflight carries
// Access-Control-Max-Age wantSeconds.
func maxAgeGroup(name, maxAge, desc, wantSeconds string) behaviourGroup {
	return behaviourGroup{name: name, config: `{
			"max_age": ` + maxAge + `,
			"accounts": {"acct": [{"origin": "https://mydomain.com", "methods": ["GET"]}]}
		}`, cases: []behaviourCase{
		{desc: desc, method: "OPTIONS", path: "/api/rest/v1/acct/x", reqHeaders: preflightHdr(mydomain, "GET"),
			next: nextOK, wantStatus: 204, wantHeaders: withHeader(wantPreflightOK(mydomain, "GET"), "Access-Control-Max-Age", wantSeconds)},
	}}
}

// TestServeHTTP is the behaviour table: each case's name starts with the
// section of docs/behaviour.md it checks (§1 which requests, §2
// preflights, §3 normal requests, §4 the only CORS policy, §6 origins, §7
// configuration), then says the rule in a sentence.
func TestServeHTTP(t *testing.T) {
	// The allowed answers of the "custom" group.
	customPreflightOK := withHeader(withHeader(wantPreflightOK(mydomain, "GET"),
		"Access-Control-Allow-Headers", "x-custom,content-type"), "Access-Control-Max-Age", "90")
	customNormalOK := withHeader(wantNormalOK(mydomain), "Access-Control-Expose-Headers", "x-request-id,x-total-count")
	groups := []behaviourGroup{
		{name: "defaults", config: behaviourConfig, cases: defaultCases()},
		{name: "path guard off", config: strings.Replace(behaviourConfig, "{", `{"disable_path_guard": true,`, 1), cases: guardOffCases()},
		{name: "custom", config: `{
			"path_prefixes": ["/custom/", "/Other/Prefix/"],
			"allow_headers": ["X-Custom", "Content-Type"],
			"expose_headers": ["X-Request-Id", "x-total-count"],
			"max_age": "90s",
			"preflight_status": 200,
			"accounts": {"acct": [{"origin": "https://mydomain.com", "methods": ["GET"]}]}
		}`, cases: []behaviourCase{
			{desc: "§7 custom prefix, allow_headers, max_age, preflight_status: allowed preflight is 200 with them",
				method: "OPTIONS", path: "/custom/acct/x", reqHeaders: preflightHdr(mydomain, "GET"),
				next: nextOK, wantStatus: 200, wantHeaders: customPreflightOK},
			denyPreflight("§7 custom prefix: denied preflight is still a 401 error",
				"/custom/acct/x", preflightHdr(mydomain, "POST")),
			{desc: "§1 custom prefix given in upper case matches case-insensitively",
				method: "OPTIONS", path: "/other/PREFIX/acct/x", reqHeaders: preflightHdr(mydomain, "GET"),
				next: nextOK, wantStatus: 200, wantHeaders: customPreflightOK},
			untouched("§1 with custom prefixes the default prefix is no account path: untouched",
				"OPTIONS", "/api/rest/v1/acct/x", preflightHdr(mydomain, "GET")),
			{desc: "§3 expose_headers configured: allowed normal response lists them, lower-cased",
				method: "GET", path: "/custom/acct/x", reqHeaders: originHdr(mydomain),
				next: nextOK, wantStatus: 200, wantHeaders: customNormalOK, wantBody: "next", wantNextCalled: true},
			{desc: "§4 expose_headers configured: the upstream's Expose-Headers is replaced by ours",
				method: "GET", path: "/custom/acct/x", reqHeaders: originHdr(mydomain),
				next: nextUpstreamCORS, wantStatus: 200, wantHeaders: withVary(customNormalOK, "Accept-Encoding", "Origin"),
				wantBody: "next", wantNextCalled: true},
			denyNormal("§3 expose_headers configured, origin not allowed: no Expose-Headers, only Vary: Origin",
				"GET", "/custom/acct/x", originHdr("https://evil.example")),
		}},
		{name: "empty allow_headers, sub-second max_age", config: `{
			"allow_headers": [],
			"max_age": "1500ms",
			"accounts": {"acct": [{"origin": "https://mydomain.com"}]}
		}`, cases: []behaviourCase{
			{desc: "§7 allow_headers empty: no Allow-Headers; max_age sent in whole seconds, rounded down",
				method: "OPTIONS", path: "/api/rest/v1/acct/x", reqHeaders: preflightHdr(mydomain, "POST"),
				next: nextOK, wantStatus: 204, wantHeaders: withHeader(withHeader(wantPreflightOK(mydomain, "GET, POST, DELETE"),
					"Access-Control-Allow-Headers", ""), "Access-Control-Max-Age", "1")},
		}},
		maxAgeGroup("max_age in integer nanoseconds, zero", "0",
			"§7 max_age 0 is sent as 0, not replaced by the default", "0"),
		maxAgeGroup("max_age 2m in integer nanoseconds", "120000000000",
			"§7 max_age as integer nanoseconds is sent in seconds", "120"),
	}
	for _, g := range groups {
		h := mustLoadHandler(t, g.config, nil)
		for _, tc := range g.cases {
			t.Run(g.name+"/"+tc.desc, func(t *testing.T) { runBehaviourCase(t, h, tc) })
		}
	}
}

// upstreamCORSUntouched is what nextUpstreamCORS (setUpstreamCORS) writes,
// as it reaches the client off account paths, where the module does nothing.
func upstreamCORSUntouched() http.Header { return upstreamCORS("false", "PUT, PATCH", "x-upstream") }

func defaultCases() []behaviourCase {
	allOK := wantPreflightOK(mydomain, "GET, POST, DELETE")
	return []behaviourCase{
		// §1: which requests it acts on.
		untouched("§1 path outside every prefix: untouched, next runs, no CORS headers, no Vary",
			"OPTIONS", "/other/account-123456/x", preflightHdr(mydomain, "DELETE")),
		upstreamUntouched("§1 path outside every prefix: a later handler's CORS headers are left alone", "/other/x"),
		untouched("§1 prefix without its trailing slash (/api/rest/v1) is no account path: untouched",
			"OPTIONS", "/api/rest/v1", preflightHdr(mydomain, "GET")),
		untouched("§1 empty account segment (/api/rest/v1/): untouched",
			"OPTIONS", "/api/rest/v1/", preflightHdr(mydomain, "GET")),
		upstreamUntouched("§1 empty account segment after merging slashes (/api/rest/v1//): untouched", "/api/rest/v1//"),
		refusedPath("§5 account segment removed by .. (/api/rest/v1/account-123456/../): a raw-path router reads account-123456",
			"OPTIONS", "/api/rest/v1/account-123456/../", preflightHdr(mydomain, "GET")),
		refusedPath("§5 .. escaping the prefix (/api/rest/v1/../account-123456/x): a raw-path router reads the account \"..\"",
			"OPTIONS", "/api/rest/v1/../account-123456/x", preflightHdr(mydomain, "GET")),
		allowPreflight("§1 first default prefix: account is the next segment",
			pathA, preflightHdr(mydomain, "GET"), mydomain, "GET, POST, DELETE"),
		allowPreflight("§1 second default prefix /partner/api/rest/v1/: account is the next segment",
			"/partner/api/rest/v1/account-123456/Atom/1", preflightHdr(mydomain, "GET"), mydomain, "GET, POST, DELETE"),
		allowPreflight("§1 account path with nothing after the account ID",
			"/api/rest/v1/account-123456", preflightHdr(mydomain, "GET"), mydomain, "GET, POST, DELETE"),
		allowPreflight("§1 prefix in another case matches, as Caddy path matchers do",
			"/API/Rest/V1/account-123456/x", preflightHdr(mydomain, "GET"), mydomain, "GET, POST, DELETE"),
		denyPreflight("§1 account IDs are exact: ACCOUNT-123456 is an unknown account, preflight 401",
			"/api/rest/v1/ACCOUNT-123456/x", preflightHdr(mydomain, "GET")),
		refusedPath("§5 dot segments across accounts: account-987654/../account-123456 is account-987654 for a raw-path router",
			"OPTIONS", "/api/rest/v1/account-987654/../account-123456/Atom", preflightHdr(mydomain, "DELETE")),
		refusedPath("§5 dot segments across accounts: account-123456/../account-987654",
			"GET", "/api/rest/v1/account-123456/../account-987654/Atom", originHdr(mydomain)),
		refusedPath("§5 single-dot segment before the account: /api/rest/v1/./account-123456/x",
			"OPTIONS", "/api/rest/v1/./account-123456/x", preflightHdr(mydomain, "GET")),
		allowPreflight("§1 dot segments inside the account's path resolved: account-123456/x/../Atom",
			"/api/rest/v1/account-123456/x/../Atom", preflightHdr(mydomain, "DELETE"), mydomain, "GET, POST, DELETE"),
		allowPreflight("§1 repeated slashes merged: /api/rest/v1//account-123456//x",
			"//api//rest/v1//account-123456//x", preflightHdr(mydomain, "GET"), mydomain, "GET, POST, DELETE"),
		allowPreflight("§1 percent-encoded account segment read decoded: account%2D123456 is account-123456",
			"/api/rest/v1/account%2D123456/x", preflightHdr(mydomain, "GET"), mydomain, "GET, POST, DELETE"),
		refusedPath("§5 %2F and %2E: account-987654 for a raw-path router, account-123456 for Caddy: refused",
			"OPTIONS", "/api/rest/v1/account-987654%2F%2E%2E%2Faccount-123456/x", preflightHdr(mydomain, "GET")),
		refusedPath("§5 %2F: account-123456 for a raw-path router, account-987654 for Caddy: refused",
			"GET", "/api/rest/v1/account-123456%2F..%2Faccount-987654/x", originHdr(mydomain)),

		// §1: the Origin header.
		allowPreflight("§1 Origin in upper case matches after normalisation; ACAO echoes it byte for byte",
			pathA, preflightHdr("HTTPS://MyDomain.COM", "GET"), "HTTPS://MyDomain.COM", "GET, POST, DELETE"),
		allowNormal("§1 Origin with the explicit default port :443 matches the rule without port",
			"GET", pathA, originHdr("https://mydomain.com:443"), "https://mydomain.com:443"),
		denyPreflight("§1 http://localhost:80 is http://localhost, not the allowed http://localhost:8080: denied",
			pathA, preflightHdr("http://localhost:80", "GET")),
		allowPreflight("§1 http origin with port: GET only for http://localhost:8080",
			pathA, preflightHdr("http://localhost:8080", "GET"), "http://localhost:8080", "GET"),
		allowPreflight("§1 IDN rule matches the punycode Origin a browser sends",
			"/api/rest/v1/account-idn/x", preflightHdr("https://xn--bcher-kva.example", "DELETE"), "https://xn--bcher-kva.example", "GET, POST, DELETE"),
		allowNormal("§1 IDN rule matches a Unicode Origin, normalised to punycode",
			"GET", "/api/rest/v1/account-idn/x", originHdr("https://BÜCHER.example"), "https://BÜCHER.example"),
		allowPreflight("§1 IPv6 rule in long form matches the compressed Origin",
			"/api/rest/v1/account-idn/x", preflightHdr("http://[2001:db8::1]:8080", "GET"), "http://[2001:db8::1]:8080", "GET"),
		allowNormal("§1 IPv6 Origin in another spelling is normalised",
			"GET", "/api/rest/v1/account-idn/x", originHdr("http://[2001:DB8:0::0:1]:8080"), "http://[2001:DB8:0::0:1]:8080"),
		denyPreflight("§1 IPv6 Origin on another port is denied",
			"/api/rest/v1/account-idn/x", preflightHdr("http://[2001:db8::1]:8081", "GET")),
		denyPreflight("§1 repeated Origin header lines match no rule, even when both are allowed",
			pathA, http.Header{"Origin": {mydomain, mydomain}, "Access-Control-Request-Method": {"GET"}}),
		denyNormal("§1 repeated Origin on a normal request: next runs, only Vary: Origin",
			"GET", pathA, http.Header{"Origin": {mydomain, "https://evil.example"}}),
		denyPreflight("§1 Origin: null matches no rule",
			pathA, preflightHdr("null", "GET")),
		denyPreflight("§1 malformed Origin (no scheme) matches no rule",
			pathA, preflightHdr("mydomain.com", "GET")),
		denyNormal("§1 malformed Origin (with a path) matches no rule",
			"GET", pathA, originHdr("https://mydomain.com/")),
		denyPreflight("§1 two origins in one Origin line match no rule",
			pathA, preflightHdr("https://mydomain.com, https://mydomain.com", "GET")),
		denyPreflight("§1 http:// downgrade of an https origin is denied",
			pathA, preflightHdr("http://mydomain.com", "GET")),
		denyPreflight("§1 allowed host on another port is denied",
			pathA, preflightHdr("https://mydomain.com:8443", "GET")),
		denyPreflight("§1 suffix attack https://mydomain.com.evil.com is denied",
			pathA, preflightHdr("https://mydomain.com.evil.com", "GET")),
		denyNormal("§1 prefix attack https://evilmydomain.com is denied",
			"GET", pathA, originHdr("https://evilmydomain.com")),
		allowPreflight("§1 rule with a port: that port is allowed, with the default methods",
			"/api/rest/v1/account-987654/x", preflightHdr("https://app.example.org:8443", "DELETE"), "https://app.example.org:8443", "GET, POST, DELETE"),
		denyPreflight("§1 rule with a port: the same host without the port is denied",
			"/api/rest/v1/account-987654/x", preflightHdr("https://app.example.org", "GET")),

		// §2: preflights.
		allowPreflight("§2 preflight, origin allowed, DELETE: 204 with all methods for the origin",
			pathA, preflightHdr(mydomain, "DELETE"), mydomain, "GET, POST, DELETE"),
		denyPreflight("§2 preflight, origin allowed, method not allowed (PUT): 401, no Access-Control-*, same Vary, empty body",
			pathA, preflightHdr(mydomain, "PUT")),
		denyPreflight("§2 preflight, origin not allowed: 401",
			pathA, preflightHdr("https://evil.example", "GET")),
		denyPreflight("§2 preflight for an unknown account: 401",
			"/api/rest/v1/account-000000/x", preflightHdr(mydomain, "GET")),
		denyPreflight("§2 preflight for an account with no rules: 401",
			"/api/rest/v1/account-empty/x", preflightHdr(mydomain, "GET")),
		allowPreflight("§2 preflight, HEAD treated as GET: allowed where GET is",
			pathA, preflightHdr("http://localhost:8080", "HEAD"), "http://localhost:8080", "GET"),
		denyPreflight("§2 preflight, HEAD where only POST is allowed: 401",
			"/api/rest/v1/account-post/x", preflightHdr(mydomain, "HEAD")),
		denyPreflight("§2 preflight, method compared case-sensitively as in Fetch: delete is not DELETE",
			pathA, preflightHdr(mydomain, "delete")),
		{desc: "§2 preflight, requested headers do not decide the outcome: 204 with the configured Allow-Headers",
			method: "OPTIONS", path: pathA, reqHeaders: http.Header{
				"Origin": {mydomain}, "Access-Control-Request-Method": {"POST"},
				"Access-Control-Request-Headers": {"x-not-allowed,x-evil"}},
			next: nextOK, wantStatus: 204, wantHeaders: allOK},
		denyPreflight("§2 preflight with two Access-Control-Request-Method lines: 401",
			pathA, http.Header{"Origin": {mydomain}, "Access-Control-Request-Method": {"GET", "POST"}}),
		{desc: "§2 preflight never reaches next: upstream CORS headers absent, ours exact",
			method: "OPTIONS", path: pathA, reqHeaders: preflightHdr(mydomain, "POST"),
			next: nextUpstreamCORS, wantStatus: 204, wantHeaders: allOK},
		{desc: "§2 denied preflight never reaches next",
			method: "OPTIONS", path: pathA, reqHeaders: preflightHdr(mydomain, "PATCH"),
			next: nextUpstreamCORS, wantStatus: 401, wantErr: true, wantHeaders: wantPreflightDenied},
		{desc: "§2 allowed preflight extends an existing Vary, never replaces it",
			method: "OPTIONS", path: pathA, reqHeaders: preflightHdr(mydomain, "GET"),
			respBefore: http.Header{"Vary": {"Accept-Encoding"}},
			next:       nextOK, wantStatus: 204, wantHeaders: func() http.Header {
				h := wantPreflightOK(mydomain, "GET, POST, DELETE")
				h["Vary"] = []string{"Accept-Encoding", wantVaryPreflight}
				return h
			}()},
		{desc: "§2 denied preflight extends an existing Vary, never replaces it",
			method: "OPTIONS", path: pathA, reqHeaders: preflightHdr("https://evil.example", "GET"),
			respBefore: http.Header{"Vary": {"Accept-Encoding"}},
			next:       nextOK, wantStatus: 401, wantErr: true, wantHeaders: http.Header{"Vary": {"Accept-Encoding", wantVaryPreflight}}},
		allowPreflight("§2 same-origin rules merged: methods united in the order written (GET, PUT)",
			"/api/rest/v1/account-merge/x", preflightHdr(mydomain, "PUT"), mydomain, "GET, PUT"),
		allowPreflight("§2 merged account: another origin keeps its own methods (POST only)",
			"/api/rest/v1/account-merge/x", preflightHdr("https://other.example", "POST"), "https://other.example", "POST"),
		denyPreflight("§2 merged account: another origin is not given the merged methods",
			"/api/rest/v1/account-merge/x", preflightHdr("https://other.example", "GET")),
		denyNormal("§2 OPTIONS without Access-Control-Request-Method is a normal request: next runs, Vary: Origin",
			"OPTIONS", pathA, originHdr(mydomain)),
		denyNormal("§2 OPTIONS with an empty Access-Control-Request-Method is a normal request",
			"OPTIONS", pathA, preflightHdr(mydomain, "")),
		denyNormal("§2 OPTIONS with Access-Control-Request-Method but no Origin is a normal request",
			"OPTIONS", pathA, http.Header{"Access-Control-Request-Method": {"GET"}}),

		// §3: normal requests.
		allowNormal("§3 normal GET, origin allowed: next runs, ACAO and ACAC, Vary: Origin",
			"GET", pathA, originHdr(mydomain), mydomain),
		allowNormal("§3 normal POST, origin allowed",
			"POST", pathA, originHdr(mydomain), mydomain),
		{desc: "§3 normal GET, origin not allowed: next's status stands, only Vary: Origin",
			method: "GET", path: pathA, reqHeaders: originHdr("https://evil.example"),
			next: nextNotFound, wantStatus: 404, wantHeaders: wantNormalDenied, wantBody: "next", wantNextCalled: true},
		denyNormal("§3 normal PUT, method not allowed for the origin: next runs, only Vary: Origin",
			"PUT", pathA, originHdr(mydomain)),
		denyNormal("§3 normal DELETE from an origin allowed GET only: only Vary: Origin",
			"DELETE", pathA, originHdr("http://localhost:8080")),
		{desc: "§3 normal request without Origin: next runs, only Vary: Origin",
			method: "GET", path: pathA,
			next: nextOK, wantStatus: 200, wantHeaders: wantNormalDenied, wantBody: "next", wantNextCalled: true},
		allowNormal("§3 normal HEAD treated as GET: allowed where GET is",
			"HEAD", pathA, originHdr("http://localhost:8080"), "http://localhost:8080"),
		denyNormal("§3 normal HEAD where only POST is allowed: only Vary: Origin",
			"HEAD", "/api/rest/v1/account-post/x", originHdr(mydomain)),
		denyNormal("§3 normal request for an unknown account: next runs, only Vary: Origin",
			"GET", "/api/rest/v1/account-000000/x", originHdr(mydomain)),
		denyNormal("§3 normal request for an account with no rules: only Vary: Origin",
			"GET", "/api/rest/v1/account-empty/x", originHdr(mydomain)),
		{desc: "§3 allowed, a later handler fails (basic_auth 401): error passes through with ACAO and ACAC",
			method: "GET", path: pathA, reqHeaders: originHdr(mydomain),
			next: nextAuthError, wantStatus: 401, wantErr: true, wantHeaders: wantNormalOK(mydomain), wantNextCalled: true},
		{desc: "§3 not allowed, a later handler fails (basic_auth 401): only Vary: Origin",
			method: "GET", path: pathA, reqHeaders: originHdr("https://evil.example"),
			next: nextAuthError, wantStatus: 401, wantErr: true, wantHeaders: wantNormalDenied, wantNextCalled: true},
		{desc: "§3 allowed normal request extends an existing Vary, never replaces it",
			method: "GET", path: pathA, reqHeaders: originHdr(mydomain),
			respBefore: http.Header{"Vary": {"Accept-Encoding"}},
			next:       nextOK, wantStatus: 200, wantHeaders: withVary(wantNormalOK(mydomain), "Accept-Encoding", "Origin"), wantBody: "next", wantNextCalled: true},
		{desc: "§3 denied normal request extends an existing Vary; Origin already there is not repeated",
			method: "GET", path: pathA, reqHeaders: originHdr("https://evil.example"),
			respBefore: http.Header{"Vary": {"Accept-Encoding, origin"}},
			next:       nextOK, wantStatus: 200, wantHeaders: http.Header{"Vary": {"Accept-Encoding", "origin"}},
			wantBody: "next", wantNextCalled: true},

		// §4: the module is the only CORS policy.
		upstreamAllowed("§4 allowed: upstream ACAO * and other Access-Control-* removed, ours only, upstream Vary kept and extended",
			nextUpstreamCORS),
		upstreamDenied("§4 denied: upstream Access-Control-* removed, Vary kept and extended",
			nextUpstreamCORS),
		{desc: "§4 no Origin: upstream Access-Control-* removed",
			method: "GET", path: pathA,
			next: nextUpstreamCORS, wantStatus: 200, wantHeaders: http.Header{"Vary": {"Accept-Encoding", "Origin"}},
			wantBody: "next", wantNextCalled: true},
		{desc: "§4 existing Vary before and upstream Vary after are both kept, Origin added once",
			method: "GET", path: pathA, reqHeaders: originHdr(mydomain),
			respBefore: http.Header{"Vary": {"Cookie"}},
			next:       nextUpstreamCORS, wantStatus: 200, wantHeaders: withVary(wantNormalOK(mydomain), "Cookie", "Accept-Encoding", "Origin"), wantBody: "next", wantNextCalled: true},
		{desc: "§4 upstream's own Vary: Origin is not repeated",
			method: "GET", path: pathA, reqHeaders: originHdr(mydomain),
			next: nextUpstreamVaryOrigin, wantStatus: 200, wantHeaders: withVary(wantNormalOK(mydomain), "Origin", "Accept-Encoding"), wantBody: "next", wantNextCalled: true},
		{desc: "§4 allowed, error path: upstream headers set, then an error without writing: ours only",
			method: "GET", path: pathA, reqHeaders: originHdr(mydomain),
			next: nextUpstreamCORSThenError, wantStatus: 502, wantErr: true, wantHeaders: withVary(wantNormalOK(mydomain), "Accept-Encoding", "Origin"), wantNextCalled: true},
		{desc: "§4 denied, error path: upstream ACAO * removed",
			method: "GET", path: pathA, reqHeaders: originHdr("https://evil.example"),
			next: nextUpstreamCORSThenError, wantStatus: 502, wantErr: true,
			wantHeaders: http.Header{"Vary": {"Accept-Encoding", "Origin"}}, wantNextCalled: true},
		{desc: "§4 upstream writes the body without WriteHeader: headers still ours only",
			method: "POST", path: pathA, reqHeaders: originHdr(mydomain),
			next: nextUpstreamWriteOnly, wantStatus: 200, wantHeaders: withVary(wantNormalOK(mydomain), "Accept-Encoding", "Origin"), wantBody: "next", wantNextCalled: true},
		upstreamDenied("§4 upstream copies the body with io.Copy (ReadFrom): headers still ours only",
			nextUpstreamReadFrom),
		upstreamAllowed("§4 upstream flushes before writing: headers still ours only",
			nextUpstreamFlush),
		{desc: "§4 upstream header keys in non-canonical case are removed too",
			method: "GET", path: pathA, reqHeaders: originHdr("https://evil.example"),
			next: nextUpstreamLowerCase, wantStatus: 200, wantHeaders: wantNormalDenied, wantBody: "next", wantNextCalled: true},
		{desc: "§4 upstream Set of our own header is replaced by our value",
			method: "GET", path: pathA, reqHeaders: originHdr(mydomain),
			next: nextSetsOurHeader, wantStatus: 200, wantHeaders: wantNormalOK(mydomain), wantBody: "next", wantNextCalled: true},
	}
}

// runBehaviourCase drives ServeHTTP with one case and checks the
// status, the exact Access-Control-* and Vary headers, the body and
// whether next ran.
func runBehaviourCase(t *testing.T, h *Handler, tc behaviourCase) {
	t.Helper()
	req := httptest.NewRequest(tc.method, "http://api.example"+tc.path, nil)
	for k, vs := range tc.reqHeaders {
		req.Header[k] = append([]string(nil), vs...)
	}
	repl := caddy.NewReplacer()
	req = req.WithContext(context.WithValue(req.Context(), caddy.ReplacerCtxKey, repl))
	rec := httptest.NewRecorder()
	for k, vs := range tc.respBefore {
		rec.Header()[k] = append([]string(nil), vs...)
	}

	nextCalled := false
	next := nextHandler(func(w http.ResponseWriter, r *http.Request) error {
		nextCalled = true
		return tc.next(w, r)
	})
	err := h.ServeHTTP(rec, req, next)

	res := rec.Result()
	status := res.StatusCode
	if tc.wantErr {
		var he caddyhttp.HandlerError
		if !errors.As(err, &he) {
			t.Fatalf("ServeHTTP returned %v, want a caddyhttp.HandlerError with status %d", err, tc.wantStatus)
		}
		if rec.Flushed || rec.Body.Len() > 0 {
			t.Errorf("response was written on the error path: body %q", rec.Body.String())
		}
		status = he.StatusCode
		// On the error path Caddy writes the header map as it stands.
		res.Header = rec.Header()
	} else if err != nil {
		t.Fatalf("ServeHTTP returned %v, want nil", err)
	}
	if status != tc.wantStatus {
		t.Errorf("status %d, want %d", status, tc.wantStatus)
	}
	assertCORSHeaders(t, res.Header, tc.wantHeaders)
	if body := rec.Body.String(); body != tc.wantBody {
		t.Errorf("body %q, want %q", body, tc.wantBody)
	}
	if nextCalled != tc.wantNextCalled {
		t.Errorf("next called: %v, want %v", nextCalled, tc.wantNextCalled)
	}
}

// assertCORSHeaders compares the Access-Control-* and Vary headers of
// got with want exactly: missing, wrong and unexpected values all fail.
// Access-Control-* values are compared line for line; Vary is compared
// as its list of tokens, in order, so "A, B" and "A" + "B" are equal.
func assertCORSHeaders(t testing.TB, got, want http.Header) {
	t.Helper()
	g, w := corsHeaders(got), corsHeaders(want)
	g["Vary"], w["Vary"] = varyTokens(g["Vary"]), varyTokens(w["Vary"])
	for _, hdr := range []http.Header{g, w} {
		if len(hdr["Vary"]) == 0 {
			delete(hdr, "Vary")
		}
	}
	if !reflect.DeepEqual(g, w) {
		t.Errorf("CORS headers:\n got  %v\n want %v", g, w)
	}
}

func varyTokens(lines []string) []string {
	var out []string
	for _, l := range lines {
		for v := range strings.SplitSeq(l, ",") {
			if v = strings.TrimSpace(v); v != "" {
				out = append(out, v)
			}
		}
	}
	return out
}
