package atomspherecors

// The attack table: each row names a way a page (or a hostile upstream)
// could try to get a credentialed cross-origin read of an account it is
// not allowed, and shows it denied by a real Caddy with the module in
// front of a reverse_proxy. Every request is written by hand on a raw
// TCP connection, so the request-target and header lines reach Caddy
// exactly as listed (dot segments, %2F, repeated headers included).
//
// Ports: admin localhost:2994, site 127.0.0.1:9400 (loopback only).

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/idna"
)

const (
	secAddr = "127.0.0.1:9400"

	secAllowed = "https://mydomain.com"  // account-123456: GET POST DELETE
	secGetOnly = "http://localhost:8080" // account-123456: GET
	acctA      = "/api/rest/v1/account-123456"
	acctB      = "/api/rest/v1/account-987654" // allows neither origin above
)

// secCaddyfile puts the module in front of a hostile upstream (%s).
const secCaddyfile = `{
	admin localhost:2994
	http_port 9400
	default_bind 127.0.0.1
}
http://:9400 {
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET POST DELETE
			origin http://localhost:8080 GET
		}
		account account-987654 {
			origin https://app.example.org:8443
			origin https://bücher.example GET
			origin http://0x7f.1:8080 GET
		}
	}
	reverse_proxy %s
}`

// hostileUpstream answers every request with its own CORS policy: it
// reflects the Origin with credentials, or sends Access-Control-Allow-Origin: *
// on paths containing /star/. It keeps its own Vary and reports the
// request-target it received.
// hostileUpstreamAddr starts a hostileUpstream for the test and returns
// its address.
func hostileUpstreamAddr(t *testing.T) string {
	up := hostileUpstream()
	t.Cleanup(up.Close)
	return up.Listener.Addr().String()
}

func hostileUpstream() *httptest.Server {
	return httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Vary", "Accept-Encoding")
		h.Set("X-Upstream-Target", r.RequestURI)
		if strings.Contains(r.URL.Path, "/star/") {
			h.Set("Access-Control-Allow-Origin", "*")
		} else {
			h["Access-Control-Allow-Origin"] = r.Header["Origin"]
			h.Set("Access-Control-Allow-Credentials", "true")
		}
		h.Set("Access-Control-Allow-Methods", "GET, POST, PUT, PATCH, DELETE")
		h.Set("Access-Control-Expose-Headers", "X-Secret")
		_, _ = io.WriteString(w, "account data")
	}))
}

// secRow is one request of the attack table and its expected outcome.
type secRow struct {
	name    string
	method  string
	target  string      // the request-target, sent byte for byte
	headers [][2]string // header lines, in order, repeats allowed

	status int
	// acao is the Access-Control-Allow-Origin expected; "" means the
	// response must carry no Access-Control-* header at all.
	acao string
	// upstreamTarget, when set, is the request-target the upstream
	// must have received.
	upstreamTarget string
	// outside marks a path outside every account: passed through
	// untouched, the upstream's own headers included.
	outside bool
}

func hOrigin(o string) [2]string { return [2]string{"Origin", o} }
func hACRM(m string) [2]string   { return [2]string{"Access-Control-Request-Method", m} }

func hdrs(lines ...[2]string) [][2]string { return lines }

// preflightRow and getRow build the two requests of an Origin trick: a
// preflight and a simple GET, both on account-123456 unless path is given.
func preflightRow(name, path string, lines ...[2]string) secRow {
	return secRow{name: name + " (preflight)", method: "OPTIONS", target: path,
		headers: slices.Concat(lines, hdrs(hACRM("GET"))), status: 401}
}

func getRow(name, path string, lines ...[2]string) secRow {
	return secRow{name: name + " (GET)", method: "GET", target: path, headers: lines, status: 200}
}

// both makes the preflight and the GET row of one denied request.
func both(name, path string, lines ...[2]string) []secRow {
	return []secRow{preflightRow(name, path, lines...), getRow(name, path, lines...)}
}

func TestSecurityAttackTable(t *testing.T) {
	upAddr := hostileUpstreamAddr(t)
	startCaddy(t, "caddyfile", fmt.Sprintf(secCaddyfile, upAddr))

	cyrillic := "https://mydom\u0430in.com" // "а" is U+0430, not ASCII "a"
	puny, err := idna.Lookup.ToASCII("mydom\u0430in.com")
	if err != nil || puny == "mydomain.com" {
		t.Fatalf("punycode of the look-alike: %q, %v", puny, err)
	}
	atom := acctA + "/Atom/1"
	var rows []secRow
	add := func(r ...secRow) { rows = append(rows, r...) }

	// Controls: the config does allow these, so the denials below are
	// the module's doing, not a broken setup.
	add(secRow{name: "control: allowed origin, preflight DELETE", method: "OPTIONS", target: atom,
		headers: hdrs(hOrigin(secAllowed), hACRM("DELETE")), status: 204, acao: secAllowed})
	add(secRow{name: "control: allowed origin, GET; the upstream's reflected headers replaced by the module's",
		method: "GET", target: atom, headers: hdrs(hOrigin(secAllowed)), status: 200, acao: secAllowed})
	add(secRow{name: "same origin: mixed case of the allowed origin is that origin, ACAO echoes the request's bytes",
		method: "GET", target: atom, headers: hdrs(hOrigin("HTTPS://MyDomain.COM")), status: 200, acao: "HTTPS://MyDomain.COM"})
	add(secRow{name: "same origin: the explicit default port :443", method: "OPTIONS", target: atom,
		headers: hdrs(hOrigin("https://mydomain.com:443"), hACRM("POST")), status: 204, acao: "https://mydomain.com:443"})
	add(secRow{name: "same origin: an international rule origin matches its punycode", method: "GET",
		target: acctB + "/x", headers: hdrs(hOrigin("https://xn--bcher-kva.example")), status: 200, acao: "https://xn--bcher-kva.example"})

	// Origin tricks against account-123456, which allows https://mydomain.com.
	for _, tr := range []struct{ name, origin string }{
		{"suffix: allowed host as a subdomain of the attacker's", "https://mydomain.com.evil.com"},
		{"prefix: attacker's host ending in the allowed name", "https://evilmydomain.com"},
		{"truncation: the allowed host less its last letter", "https://mydomain.co"},
		{"substring: the allowed host less its first letter", "https://ydomain.com"},
		{"scheme downgrade: http instead of https", "http://mydomain.com"},
		{"port change: https on 8443", "https://mydomain.com:8443"},
		{"port change: localhost:8081 instead of 8080", "http://localhost:8081"},
		{"port change: explicit :80 on an https origin", "https://mydomain.com:80"},
		{"null origin (sandboxed iframe, file:, redirect)", "null"},
		{"wildcard origin", "*"},
		{"trailing dot in the host", "https://mydomain.com."},
		{"trailing slash (a path)", "https://mydomain.com/"},
		{"mixed case of a different host", "https://MYDOMAIN.COM.EVIL.COM"},
		{"mixed case of a different host, one letter short", "https://MyDomain.Co"},
		{"unicode look-alike: Cyrillic a in mydomain", cyrillic},
		{"unicode look-alike, sent as its punycode", "https://" + puny},
		{"userinfo: allowed origin as user name of the attacker's host", "https://mydomain.com@evil.com"},
		{"userinfo: attacker's user name on the allowed host", "https://evil.com@mydomain.com"},
		{"userinfo: user and password on the allowed host", "https://user:pass@mydomain.com"},
		{"two origins in one line, comma-separated", "https://mydomain.com, https://evil.com"},
		{"two origins in one line, space-separated", "https://mydomain.com https://evil.com"},
	} {
		add(both("origin "+tr.name+" "+tr.origin, atom, hOrigin(tr.origin))...)
		// A value already in serialised form (lower case, no default
		// port) that misses the exact lookup is refused without parsing;
		// in upper case the same trick goes through the parser.
		if up := strings.ToUpper(tr.origin); up != tr.origin {
			add(both("origin "+tr.name+", in upper case so it is parsed, "+up, atom, hOrigin(up))...)
		}
	}
	add(both("look-alike of an international origin: bucher for bücher", acctB+"/x", hOrigin("https://bucher.example"))...)
	// A rule host the URL standard reads as IPv4 (0x7f.1 is 127.0.0.1)
	// matches the dotted-decimal origin a browser sends, and any other
	// spelling of the same address.
	for _, o := range []string{"http://127.0.0.1:8080", "http://0x7f.1:8080", "http://2130706433:8080", "http://127.1:8080"} {
		add(secRow{name: "same origin: IPv4 rule written 0x7f.1, Origin " + o, method: "OPTIONS", target: acctB + "/x",
			headers: hdrs(hOrigin(o), hACRM("GET")), status: 204, acao: o})
	}
	add(both("IPv4: another address in hex", acctB+"/x", hOrigin("http://0x7f.2:8080"))...)
	add(both("two Origin headers, both allowed", atom, hOrigin(secAllowed), hOrigin(secAllowed))...)
	add(both("two Origin headers, attacker's first", atom, hOrigin("https://evil.com"), hOrigin(secAllowed))...)
	add(both("two Origin headers, attacker's second", atom, hOrigin(secAllowed), hOrigin("https://evil.com"))...)
	add(getRow("no Origin header, upstream still reflecting", atom))
	add(secRow{name: "OPTIONS with Access-Control-Request-Method but no Origin is not a preflight",
		method: "OPTIONS", target: atom, headers: hdrs(hACRM("GET")), status: 200})

	// Path confusion: https://mydomain.com may read account-123456 and
	// tries to read account-987654, which does not allow it.
	for _, pc := range []struct{ name, target string }{
		{"repeated slash before the account", "/api/rest/v1//account-987654/Atom"},
		{"repeated slashes everywhere", "//api//rest//v1//account-987654//Atom"},
		{"prefix in upper case", "/API/REST/V1/account-987654/Atom"},
		{"partner prefix in mixed case", "/Partner/Api/Rest/V1/account-987654/x"},
		{"prefix with a dotted capital I (lower-cases to i, as Caddy's path matchers read it)", "/ap%C4%B0/rest/v1/account-987654/x"},
		{"account ID in other case is another, unknown account", "/api/rest/v1/ACCOUNT-123456/Atom"},
		{"account ID with a trailing dot segment is still B", acctB + "/."},
		{"B's ID percent-encoded is B", "/api/rest/v1/account-%39%387654/x"},
	} {
		add(both("path "+pc.name+" "+pc.target, pc.target, hOrigin(secAllowed))...)
	}
	// Dot segments that stay inside the account are resolved as Caddy
	// does, and the upstream receives the raw path.
	add(secRow{name: "dot-dot inside A's path is A's path; the upstream receives the raw path",
		method: "GET", target: acctA + "/x/../Atom", headers: hdrs(hOrigin(secAllowed)),
		status: 200, acao: secAllowed, upstreamTarget: acctA + "/x/../Atom"})
	add(secRow{name: "A's ID percent-encoded is A", method: "GET", target: "/api/rest/v1/account-%31%323456/x",
		headers: hdrs(hOrigin(secAllowed)), status: 200, acao: secAllowed})

	// A hostile or careless upstream.
	add(secRow{name: "upstream answers Access-Control-Allow-Origin: * for an account that does not allow the origin",
		method: "GET", target: acctB + "/star/x", headers: hdrs(hOrigin(secAllowed)), status: 200})
	add(secRow{name: "upstream reflects an attacker's origin with credentials",
		method: "GET", target: atom, headers: hdrs(hOrigin("https://evil.com")), status: 200})
	add(secRow{name: "upstream reflects an origin allowed on another account",
		method: "GET", target: acctB + "/x", headers: hdrs(hOrigin(secAllowed)), status: 200})
	add(secRow{name: "upstream's * on an allowed response is replaced, not doubled",
		method: "GET", target: acctA + "/star/x", headers: hdrs(hOrigin(secAllowed)), status: 200, acao: secAllowed})

	// Preflights smuggled in other requests, and method tricks.
	add(secRow{name: "GET with Access-Control-Request-Method: DELETE is a normal GET: no methods granted",
		method: "GET", target: atom, headers: hdrs(hOrigin(secGetOnly), hACRM("DELETE")), status: 200, acao: secGetOnly})
	add(secRow{name: "POST with Access-Control-Request-Method: GET from a GET-only origin is a denied POST",
		method: "POST", target: atom, headers: hdrs(hOrigin(secGetOnly), hACRM("GET")), status: 200})
	add(secRow{name: "GET with Access-Control-Request-Method from an origin not allowed",
		method: "GET", target: atom, headers: hdrs(hOrigin("https://evil.com"), hACRM("GET")), status: 200})
	add(secRow{name: "OPTIONS without Access-Control-Request-Method is a normal OPTIONS, never allowed",
		method: "OPTIONS", target: atom, headers: hdrs(hOrigin(secAllowed)), status: 200})
	add(secRow{name: "OPTIONS with an empty Access-Control-Request-Method is a normal OPTIONS",
		method: "OPTIONS", target: atom, headers: hdrs(hOrigin(secAllowed), hACRM("")), status: 200})
	add(secRow{name: "preflight for a method the origin may not use (DELETE from a GET-only origin)",
		method: "OPTIONS", target: atom, headers: hdrs(hOrigin(secGetOnly), hACRM("DELETE")), status: 401})
	add(secRow{name: "preflight for a method no rule lists (PUT)",
		method: "OPTIONS", target: atom, headers: hdrs(hOrigin(secAllowed), hACRM("PUT")), status: 401})
	add(secRow{name: "preflight with the method in lower case (methods are case-sensitive)",
		method: "OPTIONS", target: atom, headers: hdrs(hOrigin(secAllowed), hACRM("delete")), status: 401})
	add(secRow{name: "preflight with two Access-Control-Request-Method lines",
		method: "OPTIONS", target: atom, headers: hdrs(hOrigin(secAllowed), hACRM("GET"), hACRM("DELETE")), status: 401})
	add(secRow{name: "preflight for an account that is not configured",
		method: "OPTIONS", target: "/api/rest/v1/account-000000/x", headers: hdrs(hOrigin(secAllowed), hACRM("GET")), status: 401})

	// Caching: the same URL answered for an allowed and a denied origin
	// both carry Vary: Origin (checked on every row below), so no shared
	// cache serves one origin's answer to another.
	add(secRow{name: "cache: allowed answer of a URL varies with Origin", method: "GET", target: acctA + "/cached",
		headers: hdrs(hOrigin(secAllowed)), status: 200, acao: secAllowed})
	add(secRow{name: "cache: denied answer of the same URL varies with Origin", method: "GET", target: acctA + "/cached",
		headers: hdrs(hOrigin("https://evil.com")), status: 200})
	add(secRow{name: "cache: answer without Origin of the same URL varies with Origin", method: "GET", target: acctA + "/cached",
		status: 200})

	// Paths a backend could read as another account (docs/behaviour.md
	// §5): each is refused with 400 before
	// any CORS decision, preflight or not. Every target below names
	// account-123456 (which allows the origin) by Caddy's reading and
	// account-987654 by some common backend's, or the other way round.
	for _, pg := range []struct{ name, target string }{
		{"path parameter on a dot-dot segment (Tomcat): A/..;/B", acctA + "/..;/account-987654/Atom"},
		{"path parameter with a value on a dot-dot segment: A/..;x=1/B", acctA + "/..;x=1/account-987654/Atom"},
		{"path parameter out of another prefix into the API: /api/rest/v2/..;/v1/B", "/api/rest/v2/..;/v1/account-987654/Atom"},
		{"two path parameters climbing out of A and back to B: A/..;/..;/v1/B", acctA + "/..;/..;/v1/account-987654/Atom"},
		{"encoded semicolon: A/..%3b/B", acctA + "/..%3b/account-987654/Atom"},
		{"encoded semicolon, upper case: A/..%3B/B", acctA + "/..%3B/account-987654/Atom"},
		{"encoded backslashes: A/..%5cB", acctA + "/..%5caccount-987654/Atom"},
		{"encoded backslashes around a dot-dot: A%5c..%5cB", acctA + "/x%5c..%5c..%5caccount-987654/Atom"},
		{`raw backslash: A\..\B`, acctA + `/x\..\..\account-987654/Atom`},
		{"double encoding of dot-dot: A/%252e%252e/B", acctA + "/%252e%252e/account-987654/Atom"},
		{"double encoding of dot-dot and slash: A/%252e%252e%252fB", acctA + "/%252e%252e%252faccount-987654/Atom"},
		{"double encoding, upper case: A/%252E%252E/B", acctA + "/%252E%252E/account-987654/Atom"},
		{"overlong UTF-8 dots (two bytes): A/%c0%ae%c0%ae/B", acctA + "/%c0%ae%c0%ae/account-987654/Atom"},
		{"overlong UTF-8 dots, upper case (Go keeps no raw path for these): A/%C0%AE%C0%AE/B", acctA + "/%C0%AE%C0%AE/account-987654/Atom"},
		{"overlong UTF-8 dots (three bytes): A/%e0%80%ae%e0%80%ae/B", acctA + "/%e0%80%ae%e0%80%ae/account-987654/Atom"},
		{"overlong UTF-8 slash: A/..%c0%afB", acctA + "/..%c0%afaccount-987654/Atom"},
		{"double-encoded overlong dots: A/%25c0%25ae%25c0%25ae/B", acctA + "/%25c0%25ae%25c0%25ae/account-987654/Atom"},
		{"encoded backslash, double encoded: A/..%255cB", acctA + "/..%255caccount-987654/Atom"},
		{"literal dot segments (a raw-path router does not resolve them): dot-dot segment from A to B", acctA + "/../account-987654/Atom"},
		{"literal dot segments (a raw-path router does not resolve them): dot and dot-dot segments from A to B", acctA + "/./../account-987654/Atom"},
		{"literal dot segments (a raw-path router does not resolve them): two dot-dot segments from deep in A to B", acctA + "/Atom/../../account-987654/Atom"},
		{"literal dot segments (a raw-path router does not resolve them): dot-dot out of the prefix into the partner prefix", acctA + "/../../../../partner/api/rest/v1/account-987654/x"},
		{"literal dot segments (a raw-path router does not resolve them): repeated slash then dot-dot", acctA + "//../account-987654/Atom"},
		{"literal dot segments (a raw-path router does not resolve them): single-dot segment before B", "/api/rest/v1/./account-987654/x"},
		{"literal dot-dot from B to A: A for Caddy, B for a raw-path router", acctB + "/../account-123456/Atom"},
		{"literal dot-dot out of the prefix: no account for Caddy, the account \"..\" for a raw-path router", "/api/rest/v1/../account-123456/x"},
		{"encoded slashes, kept in the segment by raw-path routers: A%2F..%2FB", acctA + "%2F..%2Faccount-987654/Atom"},
		{"encoded dots, not a dot segment for raw-path routers: A/%2E%2E/B", acctA + "/%2E%2E/account-987654/Atom"},
		{"encoded dots and slash, lower case: A/%2e%2e%2fB", acctA + "/%2e%2e%2faccount-987654/Atom"},
		{"encoded slash to the prefix: B/..%2f (no account for Caddy, B for a raw-path router)", acctB + "/..%2f"},
		{"dot-dot and an encoded space, trimmed by Windows: B/..%20/A", acctB + "/..%20/account-123456/Atom"},
		{"three dots: B/.../A", acctB + "/.../account-123456/Atom"},
		{"NUL ends a C string: A%00%2f..%2fB", acctA + "%00%2f..%2faccount-987654/Atom"},
		{"fullwidth full stops (NFKC): B/．．/A", acctB + "/%ef%bc%8e%ef%bc%8e/account-123456/Atom"},
		{"encoded number sign, decoded then parsed again: A%23/..%2fB", acctA + "%23/..%2faccount-987654/Atom"},
		{"long s in the prefix (Unicode case folding)", "/api/re%C5%BFt/v1/account-987654/x"},
	} {
		add(guardRows("path guard: "+pg.name+" "+pg.target, pg.target)...)
	}
	// Controls: targets with '%', ';' or '\' that every reading puts in
	// the same account pass the guard.
	add(secRow{name: "path guard control: a path parameter after the account is the same account", method: "GET",
		target: atom + ";jsessionid=1", headers: hdrs(hOrigin(secAllowed)), status: 200, acao: secAllowed})
	add(secRow{name: "path guard control: an encoded space after the account", method: "GET",
		target: atom + "/my%20file", headers: hdrs(hOrigin(secAllowed)), status: 200, acao: secAllowed})
	add(secRow{name: "path guard control: an encoded backslash deep in the account's path", method: "OPTIONS",
		target: atom + "/a%5cb", headers: hdrs(hOrigin(secAllowed), hACRM("GET")), status: 204, acao: secAllowed})
	add(secRow{name: "path guard control: a '%' outside every account path passes untouched", method: "GET",
		target: "/static/%2e%2e;x/a%5cb", headers: hdrs(hOrigin("https://evil.com")), status: 200, outside: true})

	for _, row := range rows {
		t.Run(row.name, func(t *testing.T) {
			res, body := rawRequest(t, secAddr, row.method, row.target, row.headers)
			checkSecRow(t, row, res, body)
		})
	}
}

// guardRows are the preflight and the GET of a target the path guard
// refuses, both from the origin that account-123456 allows.
func guardRows(name, target string) []secRow {
	return []secRow{
		{name: name + " (preflight)", method: "OPTIONS", target: target,
			headers: hdrs(hOrigin(secAllowed), hACRM("GET")), status: 400},
		{name: name + " (GET)", method: "GET", target: target, headers: hdrs(hOrigin(secAllowed)), status: 400},
	}
}

// checkSecRow checks one response against its row: the status, the exact
// set of Access-Control-* headers, and Vary.
func checkSecRow(t *testing.T, row secRow, res *http.Response, body string) {
	t.Helper()
	if res.StatusCode != row.status {
		t.Errorf("status %d, want %d", res.StatusCode, row.status)
	}
	var ac []string
	for k := range res.Header {
		if strings.HasPrefix(strings.ToLower(k), "access-control-") {
			ac = append(ac, k)
		}
	}
	slices.Sort(ac)
	if row.status == http.StatusBadRequest || row.outside {
		// Refused by the path guard before any CORS decision, or not an
		// account path: no CORS header of the module's; a refused
		// request never reaches the upstream.
		if row.status == http.StatusBadRequest && (len(ac) != 0 || res.Header.Get("X-Upstream-Target") != "") {
			t.Errorf("refused target: Access-Control-* %q, upstream reached: %q", ac, res.Header.Get("X-Upstream-Target"))
		}
		if row.outside && (varyHasToken(res.Header, "Origin") || res.Header.Get("X-Upstream-Target") != row.target) {
			t.Errorf("outside the accounts: Vary %q, upstream received %q", res.Header["Vary"], res.Header.Get("X-Upstream-Target"))
		}
		return
	}
	isPreflight := row.method == "OPTIONS" && row.status != 200
	switch {
	case row.acao == "":
		if len(ac) != 0 {
			t.Errorf("denied, but the response carries %q: %v", ac, corsHeaders(res.Header))
		}
	case isPreflight:
		want := []string{"Access-Control-Allow-Credentials", "Access-Control-Allow-Headers",
			"Access-Control-Allow-Methods", "Access-Control-Allow-Origin", "Access-Control-Max-Age"}
		if !slices.Equal(ac, want) {
			t.Errorf("Access-Control-* headers %q, want %q", ac, want)
		}
	default:
		// A normal response: only the module's two headers (no
		// expose_headers configured), never the upstream's.
		want := []string{"Access-Control-Allow-Credentials", "Access-Control-Allow-Origin"}
		if !slices.Equal(ac, want) {
			t.Errorf("Access-Control-* headers %q, want %q: %v", ac, want, corsHeaders(res.Header))
		}
	}
	if row.acao != "" {
		if got := res.Header["Access-Control-Allow-Origin"]; len(got) != 1 || got[0] != row.acao {
			t.Errorf("Access-Control-Allow-Origin %q, want exactly %q", got, row.acao)
		}
		if got := res.Header["Access-Control-Allow-Credentials"]; len(got) != 1 || got[0] != "true" {
			t.Errorf("Access-Control-Allow-Credentials %q, want true", got)
		}
	}
	// Every answer on an account path varies with Origin, allowed or not;
	// a preflight's also with the request method and headers; the
	// upstream's own Vary is kept.
	wantVary := []string{"Origin"}
	if row.method == "OPTIONS" && row.status != 200 {
		wantVary = append(wantVary, "Access-Control-Request-Method", "Access-Control-Request-Headers")
	} else {
		wantVary = append(wantVary, "Accept-Encoding")
	}
	for _, v := range wantVary {
		if !varyHasToken(res.Header, v) {
			t.Errorf("Vary %q lacks %s", res.Header["Vary"], v)
		}
	}
	// A preflight never reaches the upstream; a normal request always does.
	fromUpstream := res.Header.Get("X-Upstream-Target") != ""
	if isPreflight && (fromUpstream || body != "") {
		t.Errorf("a preflight reached the upstream (body %q)", body)
	}
	if !isPreflight && (!fromUpstream || body != "account data") {
		t.Errorf("a normal request did not reach the upstream (body %q)", body)
	}
	if row.upstreamTarget != "" && res.Header.Get("X-Upstream-Target") != row.upstreamTarget {
		t.Errorf("upstream received %q, want %q", res.Header.Get("X-Upstream-Target"), row.upstreamTarget)
	}
}

// TestSecurityPathGuardOff: with disable_path_guard the module follows
// Caddy's reading of every target, as without the guard.
func TestSecurityPathGuardOff(t *testing.T) {
	upAddr := hostileUpstreamAddr(t)
	startSites(t, fmt.Sprintf(`http://:9406 {
	atomsphere_cors {
		disable_path_guard
		account account-123456 {
			origin https://mydomain.com GET
		}
	}
	reverse_proxy %s
}`, upAddr))
	target := acctA + "/..;/account-987654/Atom"
	res, _ := rawRequest(t, "127.0.0.1:9406", "GET", target, hdrs(hOrigin(secAllowed)))
	if res.StatusCode != 200 || res.Header.Get("Access-Control-Allow-Origin") != secAllowed ||
		res.Header.Get("X-Upstream-Target") != target {
		t.Errorf("guard off: status %d, ACAO %q, upstream got %q", res.StatusCode,
			res.Header.Get("Access-Control-Allow-Origin"), res.Header.Get("X-Upstream-Target"))
	}
}

// TestSecurityDeferredHeaderOpsBeforeTheModule: a header handler before
// the module with deferred Access-Control-* operations would override
// the module's headers when the response is written, so requests on
// account paths are refused with 500 (and no CORS header); deferred
// operations on other headers, and deferred CORS operations after the
// module, change nothing.
func TestSecurityDeferredHeaderOpsBeforeTheModule(t *testing.T) {
	startCaddy(t, "caddyfile", `{
	admin localhost:2994
	default_bind 127.0.0.1
}
http://:9407 {
	header >Access-Control-Allow-Origin "*"
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET
		}
	}
	respond "account data"
}
http://:9408 {
	header >X-Frame-Options "DENY"
	header Access-Control-Max-Age "99"
	header {
		defer
		-Server
	}
	route {
		atomsphere_cors {
			account account-123456 {
				origin https://mydomain.com GET
			}
		}
		header >Access-Control-Allow-Origin "*"
		respond "account data"
	}
}`)
	for _, tc := range []struct {
		name, addr, method, target string
		lines                      [][2]string
		status                     int
		acao                       string
	}{
		{"deferred ACAO before the module: allowed preflight refused", "127.0.0.1:9407", "OPTIONS", acctA + "/x",
			hdrs(hOrigin(secAllowed), hACRM("GET")), 500, ""},
		{"deferred ACAO before the module: denied GET refused", "127.0.0.1:9407", "GET", acctA + "/x",
			hdrs(hOrigin("https://evil.example")), 500, ""},
		{"deferred ACAO before the module: outside the account paths untouched", "127.0.0.1:9407", "GET", "/static/x",
			hdrs(hOrigin("https://evil.example")), 200, "*"},
		{"deferred non-CORS headers before, deferred ACAO after the module: allowed GET", "127.0.0.1:9408", "GET", acctA + "/x",
			hdrs(hOrigin(secAllowed)), 200, secAllowed},
		{"deferred non-CORS headers before, deferred ACAO after the module: denied GET", "127.0.0.1:9408", "GET", acctA + "/x",
			hdrs(hOrigin("https://evil.example")), 200, ""},
		{"deferred non-CORS headers before the module: allowed preflight", "127.0.0.1:9408", "OPTIONS", acctA + "/x",
			hdrs(hOrigin(secAllowed), hACRM("GET")), 204, secAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, _ := rawRequest(t, tc.addr, tc.method, tc.target, tc.lines)
			if res.StatusCode != tc.status {
				t.Errorf("status %d, want %d", res.StatusCode, tc.status)
			}
			if got := res.Header.Get("Access-Control-Allow-Origin"); got != tc.acao {
				t.Errorf("Access-Control-Allow-Origin %q, want %q", got, tc.acao)
			}
			if strings.HasPrefix(tc.target, "/api/") && !varyHasToken(res.Header, "Origin") {
				t.Errorf("Vary %q lacks Origin: every response on an account path varies with it", res.Header["Vary"])
			}
			if tc.addr == "127.0.0.1:9408" {
				if res.Header.Get("X-Frame-Options") != "DENY" {
					t.Errorf("the deferred X-Frame-Options before the module was lost: %v", res.Header)
				}
				if tc.method == "GET" && res.Header.Get("Access-Control-Max-Age") != "" {
					t.Errorf("a CORS header set before the module went out on a normal response")
				}
			}
		})
	}
}

// TestSecurityErrorsBeforeTheModule: an error raised before the module
// runs (a failing matcher, a request_body limit) goes to the site's error
// routes without passing through the module; on an account path those
// routes still cannot add Access-Control-* headers, and the answer varies
// with Origin. The same holds for a server without error routes of its
// own, and for a subroute's error routes (JSON), whose answer to the
// module's refusals is the module's.
func TestSecurityErrorsBeforeTheModule(t *testing.T) {
	upAddr := hostileUpstreamAddr(t)
	cf := secGlobals + fmt.Sprintf(`http://:9409 {
	@big expression `+"`int({query.page}) > 100`"+`
	header @big X-Big-Page yes
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET POST DELETE
		}
	}
	reverse_proxy %[1]s
	handle_errors {
		reverse_proxy %[1]s
	}
}
http://:9410 {
	request_body {
		max_size 10
	}
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET POST DELETE
		}
	}
	reverse_proxy %[1]s
	handle_errors {
		header Access-Control-Allow-Origin "https://evil.example"
		header Access-Control-Allow-Credentials true
		respond "error {http.error.status_code}"
	}
}
http://:9411 {
	header Access-Control-Allow-Origin "*"
	request_body {
		max_size 10
	}
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET POST DELETE
		}
	}
	reverse_proxy %[1]s
}`, upAddr)
	// A fourth server, in JSON: the module inside a subroute whose own
	// error routes set CORS headers.
	cfg, servers := adaptToJSON(t, cf)
	var sub map[string]any
	if err := json.Unmarshal([]byte(`{
		"listen": ["127.0.0.1:9412"],
		"routes": [{"handle": [{"handler": "subroute",
			"routes": [
				{"handle": [{"handler": "atomsphere_cors", "accounts": {"account-123456": [{"origin": "https://mydomain.com"}]}}]},
				{"handle": [{"handler": "error", "status_code": 502}]}
			],
			"errors": {"routes": [{"handle": [
				{"handler": "headers", "response": {"set": {"Access-Control-Allow-Origin": ["https://evil.example"], "Access-Control-Allow-Credentials": ["true"]}}},
				{"handler": "static_response", "status_code": 200, "body": "subroute errors {http.error.status_code}"}
			]}]}
		}]}]
	}`), &sub); err != nil {
		t.Fatal(err)
	}
	servers["subroute"] = sub
	startCaddy(t, "json", string(mustJSON(cfg)))

	evil := "https://evil.example"
	body20 := "01234567890123456789"
	for _, tc := range []struct {
		name, addr, method, target, body string
		lines                            [][2]string
		status                           int
		acao                             string
	}{
		{"a matcher error before the module, error route proxies to a reflecting upstream", "127.0.0.1:9409",
			"GET", acctA + "/x?page=abc", "", hdrs(hOrigin(evil)), 200, ""},
		{"control: the same request without the error is the module's", "127.0.0.1:9409",
			"GET", acctA + "/x?page=2", "", hdrs(hOrigin(evil)), 200, ""},
		{"control: outside the account paths the error routes answer as they like", "127.0.0.1:9409",
			"GET", "/static/x?page=abc", "", hdrs(hOrigin(evil)), 200, evil},
		{"request_body limit before the module, error route sets CORS headers", "127.0.0.1:9410",
			"POST", acctA + "/x", body20, hdrs(hOrigin(evil), [2]string{"Content-Type", "text/plain"}), 413, ""},
		{"request_body limit before the module, allowed origin", "127.0.0.1:9410",
			"POST", acctA + "/x", body20, hdrs(hOrigin(secAllowed), [2]string{"Content-Type", "text/plain"}), 413, ""},
		{"request_body limit before the module, no error routes, site-level header", "127.0.0.1:9411",
			"POST", acctA + "/x", body20, hdrs(hOrigin(evil), [2]string{"Content-Type", "text/plain"}), 413, ""},
		{"subroute error routes: denied preflight", "127.0.0.1:9412",
			"OPTIONS", acctA + "/x", "", hdrs(hOrigin(evil), hACRM("GET")), 401, ""},
		{"subroute error routes: path guard refusal", "127.0.0.1:9412",
			"GET", acctB + "/..;/account-123456/x", "", hdrs(hOrigin(evil)), 400, ""},
		{"subroute error routes: allowed origin, later handler fails", "127.0.0.1:9412",
			"GET", acctA + "/x", "", hdrs(hOrigin(secAllowed)), 502, secAllowed},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, body := rawRequestBody(t, tc.addr, tc.method, tc.target, tc.lines, tc.body)
			if res.StatusCode != tc.status {
				t.Errorf("status %d, want %d (body %q)", res.StatusCode, tc.status, body)
			}
			ac := corsHeaders(res.Header)
			delete(ac, "Vary")
			switch {
			case tc.acao == "" && len(ac) != 0:
				t.Errorf("Access-Control-* headers %v, want none", ac)
			case tc.acao != "" && res.Header.Get("Access-Control-Allow-Origin") != tc.acao:
				t.Errorf("Access-Control-Allow-Origin %q, want %q (all: %v)", res.Header.Get("Access-Control-Allow-Origin"), tc.acao, ac)
			}
			if strings.HasPrefix(tc.target, "/api/") && !varyHasToken(res.Header, "Origin") {
				t.Errorf("Vary %q lacks Origin", res.Header["Vary"])
			}
		})
	}
}

// TestSecurityEncodedSlashSnippet: the route docs/behaviour.md §9 gives
// for backends that route on the raw path, with the path guard off,
// refuses encoded slashes and dots before the module (preflights
// included), and nothing else.
func TestSecurityEncodedSlashSnippet(t *testing.T) {
	upAddr := hostileUpstreamAddr(t)
	startSites(t, fmt.Sprintf(`http://:9413 {
	route {
		@encoded expression `+"`{http.request.uri}.matches('^[^?]*(?i:%%2f|%%2e)')`"+`
		error @encoded 400
		atomsphere_cors {
			disable_path_guard
			account account-123456 {
				origin https://mydomain.com GET
			}
		}
	}
	reverse_proxy %s
}`, upAddr))
	for _, tc := range []struct {
		target string
		status int
	}{
		{acctA + "/x%2f..%2f..%2faccount-987654/y", 400},
		{acctA + "/x%2F..%2F..%2Faccount-987654/y", 400},
		{acctA + "/%2e%2e/account-987654/y", 400},
		{acctA + "/x?next=%2f..%2f", 200},
		{acctA + "/my%20file", 200},
	} {
		res, _ := rawRequest(t, "127.0.0.1:9413", "GET", tc.target, hdrs(hOrigin("https://evil.example")))
		if res.StatusCode != tc.status {
			t.Errorf("GET %s: %d, want %d", tc.target, res.StatusCode, tc.status)
		}
		// The refusal comes before the module: an allowed origin's
		// preflight is refused too, not answered 204.
		pre, _ := rawRequest(t, "127.0.0.1:9413", "OPTIONS", tc.target, hdrs(hOrigin("https://mydomain.com"), hACRM("GET")))
		if want := map[int]int{400: 400, 200: 204}[tc.status]; pre.StatusCode != want {
			t.Errorf("OPTIONS %s: %d, want %d", tc.target, pre.StatusCode, want)
		}
		if tc.status == 400 && pre.Header.Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("OPTIONS %s: refused with Access-Control-Allow-Origin %q", tc.target, pre.Header.Get("Access-Control-Allow-Origin"))
		}
		if ac := corsHeaders(res.Header); len(ac["Access-Control-Allow-Origin"]) != 0 {
			t.Errorf("GET %s: Access-Control-Allow-Origin %q", tc.target, ac["Access-Control-Allow-Origin"])
		}
	}
}
