package atomspherecors

// The module's answer when a site's error routes, an upstream's trailers
// or a WebSocket handshake try to add what the module did not decide:
// the error-route and protocol-switch halves of the attack table of
// security_test.go, against a real Caddy on loopback (admin
// localhost:2994, sites 127.0.0.1:94xx).

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

// secErrorsCaddyfile has handle_errors routes that proxy to the hostile
// upstream, which reflects any Origin with credentials: whatever the
// error routes write goes out, but no Access-Control-* header the module
// did not decide (docs/behaviour.md §4). A second site shapes
// the module's 401 with handle_errors and {http.error.*} placeholders,
// and tries to add CORS headers there too. The third sets CORS headers
// before the module with a site-level header directive.
const secErrorsCaddyfile = `{
	admin localhost:2994
	default_bind 127.0.0.1
	log {
		output file %[3]s
		level DEBUG
	}
}
http://:9402 {
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET POST DELETE
		}
	}
	@fail path */fail/*
	reverse_proxy @fail %[2]s
	reverse_proxy %[1]s
	handle_errors {
		reverse_proxy %[1]s
	}
}
http://:9403 {
	rewrite /alias/* /api/rest/v1/account-123456/x
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET
		}
	}
	@fail path */fail/*
	error @fail "upstream down" 502
	respond "account data"
	handle_errors 401 {
		header Access-Control-Allow-Origin "*"
		header X-Error "{http.error.status_code} {http.error.message}"
		respond "denied: {http.request.uri}" 401
	}
	handle_errors {
		header Access-Control-Allow-Origin "https://evil.example"
		header Access-Control-Allow-Credentials true
		respond "error {http.error.status_code}"
	}
}
http://:9404 {
	header Access-Control-Allow-Origin "*"
	header Access-Control-Max-Age 86400
	header Access-Control-Allow-Methods "PUT, PATCH"
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET
		}
	}
	respond "account data"
}`

// TestSecurityErrorRoutesAddNoCORSHeaders: the site's handle_errors
// routes run for denied preflights and failed requests on account
// paths, and shape the answer, but cannot add Access-Control-* headers;
// header directives before the module cannot either.
func TestSecurityErrorRoutesAddNoCORSHeaders(t *testing.T) {
	upAddr := hostileUpstreamAddr(t)
	dead := deadAddr(t)
	logFile := t.TempDir() + "/caddy.log"
	startCaddy(t, "caddyfile", fmt.Sprintf(secErrorsCaddyfile, upAddr, dead, logFile))

	evil := "https://evil.example"
	for _, tc := range []struct {
		name, addr, method, target string
		headers                    [][2]string
		status                     int
		acao                       string // "" for no Access-Control-* at all
		body                       string // "" for any
		vary                       []string
		header                     [2]string // another header the answer must carry
	}{
		{name: "denied preflight (origin), error route proxies to a reflecting upstream", addr: "127.0.0.1:9402",
			method: "OPTIONS", target: acctA + "/x", headers: hdrs(hOrigin(evil), hACRM("DELETE")),
			status: 200, body: "account data", vary: []string{"Origin", "Access-Control-Request-Method"}},
		{name: "denied preflight (method), error route proxies to a reflecting upstream", addr: "127.0.0.1:9402",
			method: "OPTIONS", target: acctA + "/x", headers: hdrs(hOrigin(secAllowed), hACRM("PUT")),
			status: 200, body: "account data", vary: []string{"Access-Control-Request-Method"}},
		{name: "denied preflight (unknown account), error route proxies to a reflecting upstream", addr: "127.0.0.1:9402",
			method: "OPTIONS", target: "/api/rest/v1/account-000000/x", headers: hdrs(hOrigin(evil), hACRM("GET")),
			status: 200, body: "account data"},
		{name: "allowed GET whose upstream fails: the error route's reflected headers replaced by the module's", addr: "127.0.0.1:9402",
			method: "GET", target: acctA + "/fail/x", headers: hdrs(hOrigin(secAllowed)),
			status: 200, acao: secAllowed, body: "account data", vary: []string{"Origin"}},
		{name: "denied GET whose upstream fails: the error route's reflected headers removed", addr: "127.0.0.1:9402",
			method: "GET", target: acctA + "/fail/x", headers: hdrs(hOrigin(evil)),
			status: 200, body: "account data", vary: []string{"Origin"}},
		{name: "path guard refusal, error route proxies to a reflecting upstream", addr: "127.0.0.1:9402",
			method: "OPTIONS", target: acctA + "/..;/account-000000/x", headers: hdrs(hOrigin(evil), hACRM("GET")),
			status: 200, body: "account data"},
		{name: "control: allowed preflight never reaches the error routes", addr: "127.0.0.1:9402",
			method: "OPTIONS", target: acctA + "/x", headers: hdrs(hOrigin(secAllowed), hACRM("DELETE")),
			status: 204, acao: secAllowed, body: ""},

		{name: "handle_errors 401 shapes the denied preflight; its CORS header is dropped, placeholders work", addr: "127.0.0.1:9403",
			method: "OPTIONS", target: acctA + "/x", headers: hdrs(hOrigin(evil), hACRM("GET")),
			status: 401, body: "denied: " + acctA + "/x", vary: []string{"Origin", "Access-Control-Request-Method"},
			header: [2]string{"X-Error", "401 CORS preflight denied"}},
		{name: "the error routes see the request as the client sent it, before a rewrite", addr: "127.0.0.1:9403",
			method: "OPTIONS", target: "/alias/x", headers: hdrs(hOrigin(evil), hACRM("GET")),
			status: 401, body: "denied: /alias/x"},
		{name: "allowed GET whose handler fails: the catch-all error route's CORS headers replaced", addr: "127.0.0.1:9403",
			method: "GET", target: acctA + "/fail/x", headers: hdrs(hOrigin(secAllowed)),
			status: 502, acao: secAllowed, body: "error 502", vary: []string{"Origin"}},
		{name: "denied GET whose handler fails: the catch-all error route's CORS headers removed", addr: "127.0.0.1:9403",
			method: "GET", target: acctA + "/fail/x", headers: hdrs(hOrigin(evil)),
			status: 502, body: "error 502", vary: []string{"Origin"}},
		{name: "control: outside the account paths the error routes are Caddy's, CORS headers and all", addr: "127.0.0.1:9403",
			method: "GET", target: "/static/fail/x", headers: hdrs(hOrigin(evil)),
			status: 502, acao: "https://evil.example", body: "error 502"},

		{name: "header directive before the module: an allowed preflight carries only the module's", addr: "127.0.0.1:9404",
			method: "OPTIONS", target: acctA + "/x", headers: hdrs(hOrigin(secAllowed), hACRM("GET")),
			status: 204, acao: secAllowed, header: [2]string{"Access-Control-Max-Age", "3600"}},
		{name: "header directive before the module: a denied preflight carries none", addr: "127.0.0.1:9404",
			method: "OPTIONS", target: acctA + "/x", headers: hdrs(hOrigin(secAllowed), hACRM("DELETE")),
			status: 401, body: "", vary: []string{"Origin", "Access-Control-Request-Method"}},
		{name: "header directive before the module: a denied GET carries none", addr: "127.0.0.1:9404",
			method: "GET", target: acctA + "/x", headers: hdrs(hOrigin(evil)), status: 200, body: "account data"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res, body := rawRequest(t, tc.addr, tc.method, tc.target, tc.headers)
			if res.StatusCode != tc.status {
				t.Errorf("status %d, want %d", res.StatusCode, tc.status)
			}
			if tc.body != "" && body != tc.body {
				t.Errorf("body %q, want %q", body, tc.body)
			}
			ac := corsHeaders(res.Header)
			delete(ac, "Vary")
			switch {
			case tc.acao == "":
				if len(ac) != 0 {
					t.Errorf("Access-Control-* headers %v, want none", ac)
				}
			case tc.acao != "" && !strings.HasPrefix(tc.target, "/api/"):
				if got := res.Header["Access-Control-Allow-Origin"]; !slices.Equal(got, []string{tc.acao}) {
					t.Errorf("Access-Control-Allow-Origin %q, want %q", got, tc.acao)
				}
			default:
				if got := ac["Access-Control-Allow-Origin"]; !slices.Equal(got, []string{tc.acao}) {
					t.Errorf("Access-Control-Allow-Origin %q, want exactly %q (all: %v)", got, tc.acao, ac)
				}
				if got := ac["Access-Control-Allow-Credentials"]; !slices.Equal(got, []string{"true"}) {
					t.Errorf("Access-Control-Allow-Credentials %q, want exactly true", got)
				}
				if tc.method == "GET" && len(ac) != 2 {
					t.Errorf("Access-Control-* headers %v, want only the module's two", ac)
				}
			}
			for _, v := range tc.vary {
				if !varyHasToken(res.Header, v) {
					t.Errorf("Vary %q lacks %s", res.Header["Vary"], v)
				}
			}
			if tc.header[0] != "" && res.Header.Get(tc.header[0]) != tc.header[1] {
				t.Errorf("%s %q, want %q", tc.header[0], res.Header.Get(tc.header[0]), tc.header[1])
			}
		})
	}

	// The errors the module handled are logged where Caddy's server logs
	// them: the http.log.error logger, at debug level when an error route
	// answered, with status and trace.
	raw, err := os.ReadFile(logFile)
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for line := range strings.SplitSeq(string(raw), "\n") {
		if strings.Contains(line, `"logger":"http.log.error"`) && strings.Contains(line, `"msg":"CORS preflight denied"`) &&
			strings.Contains(line, `"status":401`) && strings.Contains(line, `"err_trace":"atomsphere_cors"`) &&
			strings.Contains(line, `"level":"debug"`) {
			found = true
			break
		}
	}
	if !found {
		t.Errorf("no http.log.error entry for a denied preflight in the log:\n%s", raw)
	}
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// secTrailersCaddyfile serves HTTP/1.1 and h2c in front of an upstream
// that sends CORS headers as trailers, declared and undeclared.
const secTrailersCaddyfile = `{
	admin localhost:2994
	default_bind 127.0.0.1
	servers {
		protocols h1 h2c
	}
}
http://:9405 {
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET
		}
	}
	reverse_proxy %s
}`

// TestSecurityTrailersAddNoCORSHeaders: an upstream's Access-Control-*
// trailers (announced in Trailer, or undeclared) do not reach the
// client on an account path, over HTTP/1.1 and h2c; its other trailers
// do.
func TestSecurityTrailersAddNoCORSHeaders(t *testing.T) {
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Trailer", "Access-Control-Allow-Origin, X-Checksum, access-control-expose-headers")
		_, _ = io.WriteString(w, "account data")
		http.NewResponseController(w).Flush()
		w.Header().Set("Access-Control-Allow-Origin", "https://evil.example")
		w.Header().Set("Access-Control-Expose-Headers", "X-Secret")
		w.Header().Set("X-Checksum", "abc")
		w.Header().Set(http.TrailerPrefix+"Access-Control-Allow-Credentials", "true")
		w.Header().Set(http.TrailerPrefix+"X-Late", "1")
	}))
	defer up.Close()
	startCaddy(t, "caddyfile", fmt.Sprintf(secTrailersCaddyfile, up.Listener.Addr().String()))

	h2c := new(http.Protocols)
	h2c.SetUnencryptedHTTP2(true)
	for _, tc := range []struct {
		name   string
		client *http.Client
		proto  int
	}{
		{"HTTP/1.1", &http.Client{Transport: &http.Transport{}, Timeout: 10 * time.Second}, 1},
		{"h2c", &http.Client{Transport: &http.Transport{Protocols: h2c}, Timeout: 10 * time.Second}, 2},
	} {
		for _, origin := range []string{secAllowed, "https://evil.example"} {
			t.Run(tc.name+" "+origin, func(t *testing.T) {
				req, _ := http.NewRequest("GET", "http://127.0.0.1:9405"+acctA+"/x", nil)
				req.Header.Set("Origin", origin)
				res, err := tc.client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				body, err := io.ReadAll(res.Body)
				res.Body.Close()
				if err != nil || string(body) != "account data" || res.ProtoMajor != tc.proto {
					t.Fatalf("body %q, %v, protocol %s", body, err, res.Proto)
				}
				// Control: trailers do get through, so their absence below
				// is the module's doing.
				if res.Trailer.Get("X-Checksum") != "abc" {
					t.Errorf("trailer X-Checksum %q, want abc (trailers: %v)", res.Trailer.Get("X-Checksum"), res.Trailer)
				}
				for k, v := range res.Trailer {
					if strings.HasPrefix(strings.ToLower(k), "access-control-") {
						t.Errorf("trailer %s: %q reached the client", k, v)
					}
				}
				for _, v := range res.Header.Values("Trailer") {
					if strings.Contains(strings.ToLower(v), "access-control-") {
						t.Errorf("Trailer header announces %q", v)
					}
				}
				want := []string(nil)
				if origin == secAllowed {
					want = []string{secAllowed}
				}
				if got := res.Header["Access-Control-Allow-Origin"]; !slices.Equal(got, want) {
					t.Errorf("Access-Control-Allow-Origin %q, want %q", got, want)
				}
			})
		}
	}
}

// TestWebSocketHandshakeFromADeniedOrigin: browsers apply no CORS check to
// WebSockets, so a page of any origin would read a socket opened on an
// account path with the user's cookies. A handshake (Upgrade) whose
// Origin the account does not allow is refused with 403 before the next
// handler; an allowed one, or one without Origin (no browser), goes on
// (docs/behaviour.md §3). Port 127.0.0.1:9836.
func TestWebSocketHandshakeFromADeniedOrigin(t *testing.T) {
	startCaddy(t, "caddyfile", `{
	admin off
}

http://127.0.0.1:9836 {
	bind 127.0.0.1
	atomsphere_cors {
		account acct-1 {
			origin https://app.example GET
		}
		account acct-2 {
			origin https://app.example POST
		}
	}
	respond "upstream reached" 200
}
`)
	handshake := func(origin string) http.Header {
		h := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Sec-Websocket-Version": {"13"},
			"Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
		if origin != "" {
			h["Origin"] = []string{origin}
		}
		return h
	}
	for _, tc := range []struct {
		desc, path, origin string
		status             int
	}{
		{"another origin", "/api/rest/v1/acct-1/stream", "https://evil.example", 403},
		{"an origin without GET", "/api/rest/v1/acct-2/stream", "https://app.example", 403},
		{"an unknown account", "/api/rest/v1/nobody/stream", "https://app.example", 403},
		{"a null origin", "/api/rest/v1/acct-1/stream", "null", 403},
		{"the allowed origin", "/api/rest/v1/acct-1/stream", "https://app.example", 200},
		{"no Origin (not a browser)", "/api/rest/v1/acct-1/stream", "", 200},
		{"outside the prefixes", "/ws", "https://evil.example", 200},
	} {
		res, body := doRequest(t, "GET", "http://127.0.0.1:9836"+tc.path, handshake(tc.origin))
		if res.StatusCode != tc.status {
			t.Errorf("%s: %d %q, want %d", tc.desc, res.StatusCode, body, tc.status)
		}
		if tc.status == 403 && (strings.Contains(body, "upstream reached") || res.Header.Get("Access-Control-Allow-Origin") != "" ||
			!strings.Contains(res.Header.Get("Vary"), "Origin")) {
			t.Errorf("%s: refused, but %q, headers %v", tc.desc, body, res.Header)
		}
	}
	// The same requests without Upgrade are denied normal requests that
	// go on, as ever.
	if res, body := doRequest(t, "GET", "http://127.0.0.1:9836/api/rest/v1/acct-1/x", http.Header{"Origin": {"https://evil.example"}}); res.StatusCode != 200 || body != "upstream reached" {
		t.Errorf("a denied GET without Upgrade: %d %q, want the upstream's answer", res.StatusCode, body)
	}
}

// TestWebSocketRefusedThroughErrorRoutes: a refused handshake goes
// through the site's error routes; one that proxies must not complete
// the upgrade there, nor may one that runs for an error raised before the
// module. The upstream switches protocols whenever asked. Ports
// 127.0.0.1:9837-9838.
func TestWebSocketRefusedThroughErrorRoutes(t *testing.T) {
	up, upgrades := switchingUpstream(t)
	startCaddy(t, "caddyfile", `{
	admin off
}

http://127.0.0.1:9837 {
	bind 127.0.0.1
	atomsphere_cors {
		account acct-1 {
			origin https://app.example GET
		}
	}
	reverse_proxy `+strings.TrimPrefix(up.URL, "http://")+`
	handle_errors {
		reverse_proxy `+strings.TrimPrefix(up.URL, "http://")+`
	}
}

http://127.0.0.1:9838 {
	bind 127.0.0.1
	route {
		error /api/* "failed before the module" 500
		atomsphere_cors {
			account acct-1 {
				origin https://app.example GET
			}
		}
		reverse_proxy `+strings.TrimPrefix(up.URL, "http://")+`
	}
	handle_errors {
		reverse_proxy `+strings.TrimPrefix(up.URL, "http://")+`
	}
}
`)
	for _, target := range []string{"9837/api/rest/v1/acct-1/ws", "9837/api/rest/v1/acct-1/..%2facct-2/ws", "9838/api/rest/v1/acct-1/ws"} {
		path := target
		res, body := doRequest(t, "GET", "http://127.0.0.1:"+target, http.Header{
			"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Origin": {"https://evil.example"},
			"Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}})
		if res.StatusCode == http.StatusSwitchingProtocols || strings.Contains(body, "secret") {
			t.Errorf("%s: a refused handshake was completed by the error route: %d %q", path, res.StatusCode, body)
		}
	}
	if n := upgrades.Load(); n != 0 {
		t.Errorf("the upstream was asked to switch protocols %d times by the error routes", n)
	}
}

// TestErrorRoutesSeeTheRewrittenAccountPath: a route that rewrites into
// an account path and then fails before the module (a matcher error the
// client chooses) runs the error routes on the original target, which is
// no account path; they must still let out no Access-Control-* header
// and switch no protocol. And error routes that put the upgrade headers
// back themselves still cannot complete a refused handshake. The upstream
// reflects every Origin with credentials, and switches protocols
// whenever asked. The same holds when the error routes themselves rewrite
// into an account path. Ports 127.0.0.1:9839-9841.
func TestErrorRoutesSeeTheRewrittenAccountPath(t *testing.T) {
	up, _ := switchingUpstream(t)
	upstream := strings.TrimPrefix(up.URL, "http://")
	startCaddy(t, "caddyfile", `{
	admin off
}

http://127.0.0.1:9839 {
	bind 127.0.0.1
	route {
		rewrite /v1-beta/* /api/rest/v1/{http.request.uri.path.1}/{http.request.uri.path.2}
		@bad expression `+"`int({query.n}) > 5`"+`
		header @bad X-A 1
		atomsphere_cors {
			account account-123456 {
				origin https://good.example GET
			}
		}
	}
	reverse_proxy `+upstream+`
	handle_errors {
		reverse_proxy `+upstream+` {
			header_up Connection {http.request.header.Connection}
			header_up Upgrade {http.request.header.Upgrade}
		}
	}
}

http://127.0.0.1:9841 {
	bind 127.0.0.1
	@bad expression `+"`int({query.n} + \"0\") > 5`"+`
	vars @bad x y
	handle_path /t/* {
		rewrite * /api/rest/v1{path}
		atomsphere_cors {
			account account-123456 {
				origin https://good.example GET
			}
		}
		reverse_proxy `+upstream+`
	}
	handle_errors {
		handle_path /t/* {
			rewrite * /api/rest/v1{path}
			reverse_proxy `+upstream+`
		}
	}
}

http://127.0.0.1:9840 {
	bind 127.0.0.1
	atomsphere_cors {
		account account-123456 {
			origin https://good.example GET
		}
	}
	reverse_proxy `+upstream+`
	handle_errors {
		reverse_proxy `+upstream+` {
			header_up Connection Upgrade
			header_up Upgrade websocket
		}
	}
}
`)
	handshake := http.Header{"Connection": {"Upgrade"}, "Upgrade": {"websocket"}, "Origin": {"https://evil.example"},
		"Sec-Websocket-Version": {"13"}, "Sec-Websocket-Key": {"dGhlIHNhbXBsZSBub25jZQ=="}}
	evil := http.Header{"Origin": {"https://evil.example"}}
	for _, tc := range []struct {
		desc, url string
		hdr       http.Header
	}{
		{"a GET whose route fails after the rewrite", "http://127.0.0.1:9839/v1-beta/account-123456/data?n=abc", evil},
		{"a handshake whose route fails after the rewrite", "http://127.0.0.1:9839/v1-beta/account-123456/ws?n=abc", handshake},
		{"a refused handshake, error routes that add the upgrade headers", "http://127.0.0.1:9840/api/rest/v1/account-123456/ws", handshake},
		{"a GET whose error routes rewrite into an account path", "http://127.0.0.1:9841/t/account-123456/x?n=abc", evil},
		{"a handshake whose error routes rewrite into an account path", "http://127.0.0.1:9841/t/account-123456/ws?n=abc", handshake},
	} {
		res, body := doRequest(t, "GET", tc.url, tc.hdr.Clone())
		if res.StatusCode == http.StatusSwitchingProtocols || strings.Contains(body, "secret") {
			t.Errorf("%s: the protocol was switched: %d %q", tc.desc, res.StatusCode, body)
		}
		if acao := res.Header.Get("Access-Control-Allow-Origin"); acao != "" {
			t.Errorf("%s: %d with Access-Control-Allow-Origin %q from the error route", tc.desc, res.StatusCode, acao)
		}
	}
	// The same route without the failure: the module decides, and denies.
	if res, _ := doRequest(t, "GET", "http://127.0.0.1:9839/v1-beta/account-123456/data?n=1", evil.Clone()); res.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("the rewritten request without a failure: Access-Control-Allow-Origin %q", res.Header.Get("Access-Control-Allow-Origin"))
	}
}

// TestErrorRoutesSwitchNoProtocol: the writer of error routes on an
// account path refuses every protocol switch, whatever the routes do: a
// 101, or a 2xx to a CONNECT (a WebSocket over HTTP/2 or HTTP/3, which
// switches with a 200 and streams the body), is sent as 403 with no
// body, and the connection is not handed over. And a request freed of its
// upgrade headers is freed of HTTP/3's protocol too, which Go gives as
// Proto.
func TestErrorRoutesSwitchNoProtocol(t *testing.T) {
	for _, tc := range []struct {
		method string
		status int
	}{
		{"GET", http.StatusSwitchingProtocols},
		{"CONNECT", http.StatusOK},
	} {
		rec := httptest.NewRecorder()
		cw := &corsWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: rec}, vary: true}
		cw.v.vary[0] = "Origin"
		ew := newErrorWriter(cw, httptest.NewRequest(tc.method, "/api/rest/v1/a/ws", nil))
		ew.Header().Set("Access-Control-Allow-Origin", "https://evil.example")
		ew.WriteHeader(tc.status)
		n, err := ew.Write([]byte("SECRET"))
		if rec.Code != http.StatusForbidden || n != 0 || err == nil || strings.Contains(rec.Body.String(), "SECRET") {
			t.Errorf("%s answered %d in error routes: sent %d, body %q, write %d %v; want 403, no body",
				tc.method, tc.status, rec.Code, rec.Body.String(), n, err)
		}
		if rec.Header().Get("Access-Control-Allow-Origin") != "" {
			t.Errorf("%s: Access-Control-Allow-Origin got out", tc.method)
		}
		if _, _, err := http.NewResponseController(ew).Hijack(); err == nil {
			t.Errorf("%s: the connection was handed over", tc.method)
		}
	}
	// Not on an account path (lazy, decided no): everything passes.
	rec := httptest.NewRecorder()
	cw := &corsWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: rec}}
	ew := newErrorWriter(cw, httptest.NewRequest("CONNECT", "/elsewhere", nil))
	ew.lazy = func() bool { return false }
	ew.Header().Set("Access-Control-Allow-Origin", "*")
	ew.WriteHeader(http.StatusOK)
	_, _ = ew.Write([]byte("tunnel"))
	if rec.Code != 200 || rec.Body.String() != "tunnel" || rec.Header().Get("Access-Control-Allow-Origin") != "*" {
		t.Errorf("off an account path: %d %q %v, want everything passed through", rec.Code, rec.Body.String(), rec.Header())
	}

	// An informational answer first (103 Early Hints), then a rewrite
	// into an account path, then a switch: decided at the final answer,
	// refused, and without the upstream's upgrade headers or length.
	fr := &finalRecorder{h: http.Header{}}
	cw = &corsWriter{ResponseWriterWrapper: caddyhttp.ResponseWriterWrapper{ResponseWriter: fr}, vary: true}
	cw.v.vary[0] = "Origin"
	ew = newErrorWriter(cw, httptest.NewRequest("GET", "/early", nil))
	onPath := false
	ew.lazy = func() bool { return onPath }
	ew.WriteHeader(http.StatusEarlyHints)
	onPath = true // the error routes rewrite into an account path
	for k, v := range map[string]string{"Upgrade": "websocket", "Connection": "Upgrade", "Content-Length": "6",
		"Access-Control-Allow-Origin": "*"} {
		ew.Header().Set(k, v)
	}
	// reverse_proxy spells it as RFC 6455 does, a key Go would not.
	ew.Header()["Sec-WebSocket-Accept"] = []string{"x"}
	ew.WriteHeader(http.StatusSwitchingProtocols)
	if fr.code != http.StatusForbidden {
		t.Errorf("103, a rewrite into an account path, then 101: sent %d, want 403", fr.code)
	}
	if v := fr.final["Sec-WebSocket-Accept"]; v != nil {
		t.Errorf("the refused switch carries Sec-WebSocket-Accept: %q", v)
	}
	for _, k := range []string{"Upgrade", "Connection", "Sec-Websocket-Accept", "Content-Length", "Access-Control-Allow-Origin"} {
		if v := fr.final.Get(k); v != "" {
			t.Errorf("the refused switch carries %s: %q", k, v)
		}
	}
	if _, _, err := http.NewResponseController(ew).Hijack(); err == nil {
		t.Error("after a 103 and a rewrite, the connection was handed over")
	}

	r := httptest.NewRequest("CONNECT", "/api/rest/v1/a/ws", nil)
	r.Proto, r.ProtoMajor = "websocket", 3
	r.Header.Set(":protocol", "websocket")
	noSwitch(r)
	if r.Proto != "HTTP/3.0" || r.Header.Get(":protocol") != "" {
		t.Errorf("after noSwitch: Proto %q, :protocol %q", r.Proto, r.Header.Get(":protocol"))
	}
}

// finalRecorder records the final status of a response and its header
// then, letting informational answers (1xx but 101) go by as a server
// does.
type finalRecorder struct {
	h     http.Header
	code  int
	final http.Header
}

func (f *finalRecorder) Header() http.Header { return f.h }
func (f *finalRecorder) WriteHeader(code int) {
	if f.code == 0 && (code >= 200 || code == http.StatusSwitchingProtocols) {
		f.code, f.final = code, f.h.Clone()
	}
}
func (f *finalRecorder) Write(b []byte) (int, error) {
	f.WriteHeader(http.StatusOK)
	return len(b), nil
}

// switchingUpstream is an upstream that switches protocols whenever asked
// (101, then "secret" on the connection), counting the switches, and
// otherwise answers "account data" with the request's Origin allowed
// with credentials, as a careless API would.
func switchingUpstream(t *testing.T) (*httptest.Server, *atomic.Int32) {
	upgrades := new(atomic.Int32)
	up := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Upgrade") == "" {
			w.Header().Set("Access-Control-Allow-Origin", r.Header.Get("Origin"))
			w.Header().Set("Access-Control-Allow-Credentials", "true")
			_, _ = io.WriteString(w, "account data")
			return
		}
		upgrades.Add(1)
		conn, rw, err := http.NewResponseController(w).Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		_, _ = rw.WriteString("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\nsecret")
		_ = rw.Flush()
	}))
	t.Cleanup(up.Close)
	return up, upgrades
}
