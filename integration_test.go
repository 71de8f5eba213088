package atomspherecors

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"atomspherecors/internal/testkit"
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddytest"
)

// Integration tests run Caddy in this process, on loopback only: the
// admin API on localhost:2999 and sites on 127.0.0.1:9040-9049.
const (
	itAdminURL = "http://localhost:2999"

	// itDemoHash is the bcrypt hash of the password "demo".
	itDemoHash = "$2a$10$EjKxOMqe6BWunYrjzSUfFeh46V5YrY0UFA06zS7aJ1CJCZOgwFzIO"
)

// itGlobalOptions keeps Caddy on loopback and off the disk.
const itGlobalOptions = `{
	admin localhost:2999
	persist_config off
	default_bind 127.0.0.1
	http_port 9049
}
`

// itSend sends one request with the given headers (each value its own
// header line) and returns the response and its body.
func itSend(t testing.TB, method, url string, hdr http.Header) (*http.Response, string) {
	t.Helper()
	return doRequest(t, method, url, hdr)
}

// itWantResponse checks one response: status, exact CORS header set and,
// when wantBody is not "-", the body.
func itWantResponse(t *testing.T, what string, res *http.Response, body string, wantStatus int, wantHdr http.Header, wantBody string) {
	t.Helper()
	if res.StatusCode != wantStatus {
		t.Errorf("%s: status %d, want %d (body %q)", what, res.StatusCode, wantStatus, body)
	}
	assertCORSHeaders(t, res.Header, wantHdr)
	if wantBody != "-" && body != wantBody {
		t.Errorf("%s: body %q, want %q", what, body, wantBody)
	}
}

// TestIntegrationCaddyfile runs the docs/behaviour.md §7 Caddyfile through
// caddytest with basic_auth and respond behind the directive (§7, §2, §3).
func TestIntegrationCaddyfile(t *testing.T) {
	// An admin endpoint already listening makes caddytest reuse this
	// process's Caddy instead of starting `caddy run`.
	startCaddy(t, "caddyfile", itGlobalOptions)
	tester := caddytest.NewTester(t)
	tester.InitServer(itGlobalOptions+`
http://127.0.0.1:9040 {
	atomsphere_cors {
		expose_headers x-request-id
		account account-123456 {
			origin https://mydomain.com GET POST DELETE
			origin http://localhost:8080 GET
		}
	}
	basic_auth /api/* {
		demo `+itDemoHash+`
	}
	header /api/* X-Request-Id test-id
	respond /api/* "api {http.request.method} {http.request.uri.path}" 200
	respond "home" 200
}

http://127.0.0.1:9047 {
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET
		}
	}
	basic_auth {
		demo `+itDemoHash+`
	}
	respond "api" 200
	handle_errors {
		respond "handled {err.status_code}" {err.status_code}
	}
}
`, "caddyfile")
	if t.Failed() {
		t.FailNow()
	}
	const base = "http://127.0.0.1:9040"
	do := func(method, path string, hdr http.Header) (*http.Response, string) {
		t.Helper()
		req, err := http.NewRequest(method, base+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header = hdr
		res, err := tester.Client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer res.Body.Close()
		b, _ := io.ReadAll(res.Body)
		return res, string(b)
	}
	withAuth := func(h http.Header, user, pass string) http.Header {
		h = h.Clone()
		if h == nil {
			h = http.Header{}
		}
		r := &http.Request{Header: h}
		r.SetBasicAuth(user, pass)
		return r.Header
	}
	okNormal := http.Header{
		"Access-Control-Allow-Origin":      {mydomain},
		"Access-Control-Allow-Credentials": {"true"},
		"Access-Control-Expose-Headers":    {"x-request-id"},
		"Vary":                             {"Origin"},
	}

	res, body := do("OPTIONS", pathA, preflightHdr(mydomain, "DELETE"))
	itWantResponse(t, "§2 allowed preflight, no credentials (never authenticated)", res, body, 204,
		wantPreflightOK(mydomain, "GET, POST, DELETE"), "")
	if res.Header.Get("Www-Authenticate") != "" {
		t.Errorf("allowed preflight was authenticated: Www-Authenticate %q", res.Header.Get("Www-Authenticate"))
	}

	res, body = do("OPTIONS", pathA, preflightHdr("http://localhost:8080", "DELETE"))
	itWantResponse(t, "§2 denied preflight (method): 401, empty body", res, body, 401, wantPreflightDenied, "")
	if res.Header.Get("Www-Authenticate") != "" {
		t.Errorf("denied preflight reached basic_auth: Www-Authenticate %q", res.Header.Get("Www-Authenticate"))
	}

	res, body = do("OPTIONS", pathA, preflightHdr("https://evil.example", "GET"))
	itWantResponse(t, "§2 denied preflight (origin): 401, empty body", res, body, 401, wantPreflightDenied, "")

	res, body = do("GET", pathA, withAuth(originHdr(mydomain), "demo", "demo"))
	itWantResponse(t, "§3 allowed normal GET, right password: 200 with ACAO, ACAC, Expose-Headers", res, body, 200,
		okNormal, "api GET "+pathA)

	res, body = do("GET", pathA, withAuth(originHdr(mydomain), "demo", "wrong"))
	itWantResponse(t, "§3 allowed origin, wrong password: basic_auth's 401 still carries ACAO and ACAC", res, body, 401,
		okNormal, "-")
	if res.Header.Get("Www-Authenticate") == "" {
		t.Errorf("401 without Www-Authenticate: basic_auth did not answer")
	}

	res, body = do("DELETE", pathA, originHdr(mydomain))
	itWantResponse(t, "§3 allowed origin, no credentials: 401 with ACAO and ACAC", res, body, 401, okNormal, "-")

	res, body = do("GET", pathA, withAuth(originHdr("https://evil.example"), "demo", "demo"))
	itWantResponse(t, "§3 origin not allowed: the API's 200 stands, only Vary: Origin", res, body, 200,
		wantNormalDenied, "api GET "+pathA)

	res, body = do("DELETE", pathA, withAuth(originHdr("http://localhost:8080"), "demo", "demo"))
	itWantResponse(t, "§3 method not allowed for the origin: 200 stands, only Vary: Origin", res, body, 200,
		wantNormalDenied, "api DELETE "+pathA)

	res, body = do("GET", pathA, withAuth(nil, "demo", "demo"))
	itWantResponse(t, "§3 no Origin: 200, only Vary: Origin", res, body, 200, wantNormalDenied, "api GET "+pathA)

	res, body = do("OPTIONS", "/", preflightHdr(mydomain, "GET"))
	itWantResponse(t, "§1 not an account path: untouched", res, body, 200, http.Header{}, "home")

	// §2: a denied preflight is a Caddy error, so handle_errors sees it;
	// §3: an allowed origin's headers survive basic_auth's error route.
	res, body = itSend(t, "OPTIONS", "http://127.0.0.1:9047"+pathA, preflightHdr(mydomain, "DELETE"))
	itWantResponse(t, "§2 denied preflight reaches handle_errors", res, body, 401, wantPreflightDenied, "handled 401")
	res, body = itSend(t, "OPTIONS", "http://127.0.0.1:9047"+pathA, preflightHdr(mydomain, "GET"))
	itWantResponse(t, "§2 allowed preflight with handle_errors and basic_auth in the site", res, body, 204,
		wantPreflightOK(mydomain, "GET"), "")
	res, body = itSend(t, "GET", "http://127.0.0.1:9047"+pathA, originHdr(mydomain))
	itWantResponse(t, "§3 basic_auth's 401 through handle_errors keeps ACAO and ACAC", res, body, 401,
		wantNormalOK(mydomain), "handled 401")
}

// TestIntegrationJSON runs a JSON config and edits one account through
// the admin API, each edit taking effect at once (docs/behaviour.md §7, §8).
func TestIntegrationJSON(t *testing.T) {
	startCaddy(t, "json", `{
	"admin": {"listen": "localhost:2999", "config": {"persist": false}},
	"apps": {"http": {"http_port": 9049, "servers": {"api": {
		"listen": ["127.0.0.1:9041"],
		"automatic_https": {"disable": true},
		"routes": [{"handle": [
			{"@id": "cors", "handler": "atomsphere_cors",
			 "accounts": {"account-123456": [{"origin": "https://mydomain.com", "methods": ["GET"]}]}},
			{"handler": "static_response", "status_code": 200, "body": "api"}
		]}]
	}}}}
}`)
	const base = "http://127.0.0.1:9041"
	preflight := func(path, origin, method string) *http.Response {
		t.Helper()
		res, _ := itSend(t, "OPTIONS", base+path, preflightHdr(origin, method))
		return res
	}
	admin := func(method, path, body string) {
		t.Helper()
		req, err := http.NewRequest(method, itAdminURL+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/json")
		res, err := testClient.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		b, _ := io.ReadAll(res.Body)
		res.Body.Close()
		if res.StatusCode != 200 {
			t.Fatalf("%s %s: %d %s", method, path, res.StatusCode, b)
		}
	}
	const acctA, acctNew = "/api/rest/v1/account-123456/x", "/api/rest/v1/account-new/x"
	check := func(step, path, origin, method string, wantStatus int, wantMethods string) {
		t.Helper()
		res := preflight(path, origin, method)
		want := wantPreflightDenied
		if wantStatus != 401 {
			want = wantPreflightOK(origin, wantMethods)
		}
		itWantResponse(t, step, res, "", wantStatus, want, "-")
	}

	check("JSON config: allowed preflight", acctA, mydomain, "GET", 204, "GET")
	check("JSON config: denied preflight", acctA, mydomain, "POST", 401, "")
	res, body := itSend(t, "GET", base+acctA, originHdr(mydomain))
	itWantResponse(t, "JSON config: allowed normal request", res, body, 200, wantNormalOK(mydomain), "api")
	res, body = itSend(t, "POST", base+acctA, originHdr(mydomain))
	itWantResponse(t, "JSON config: denied normal request", res, body, 200, wantNormalDenied, "api")

	check("before PUT: account-new unknown", acctNew, "https://new.example", "GET", 401, "")
	admin("PUT", "/id/cors/accounts/account-new", `[{"origin": "https://new.example", "methods": ["GET", "PUT"]}]`)
	check("after PUT of account-new: allowed", acctNew, "https://new.example", "PUT", 204, "GET, PUT")
	check("after PUT of account-new: account-123456 unchanged", acctA, mydomain, "GET", 204, "GET")

	admin("PATCH", "/config/apps/http/servers/api/routes/0/handle/0/accounts/account-123456",
		`[{"origin": "https://other.example"}]`)
	check("after PATCH of account-123456: old origin denied", acctA, mydomain, "GET", 401, "")
	check("after PATCH of account-123456: new origin allowed", acctA, "https://other.example", "DELETE", 204, "GET, POST, DELETE")

	admin("POST", "/id/cors/accounts/account-123456", `{"origin": "https://mydomain.com", "methods": ["delete"]}`)
	check("after POST of a rule: appended origin allowed", acctA, mydomain, "DELETE", 204, "DELETE")
	check("after POST of a rule: earlier rule kept", acctA, "https://other.example", "GET", 204, "GET, POST, DELETE")

	admin("DELETE", "/id/cors/accounts/account-123456", "")
	check("after DELETE of account-123456: denied", acctA, "https://other.example", "GET", 401, "")
	check("after DELETE of account-123456: account-new unchanged", acctNew, "https://new.example", "GET", 204, "GET, PUT")

	// A bad POST /load is refused with the error naming account and
	// rule, and the running config keeps serving.
	bad := `{
	"admin": {"listen": "localhost:2999", "config": {"persist": false}},
	"apps": {"http": {"servers": {"api": {
		"listen": ["127.0.0.1:9041"],
		"automatic_https": {"disable": true},
		"routes": [{"handle": [
			{"handler": "atomsphere_cors",
			 "accounts": {"account-123456": [{"origin": "https://mydomain.com"}, {"origin": "https://mydomain.com/", "methods": ["GET"]}]}},
			{"handler": "static_response", "status_code": 200, "body": "bad"}
		]}]
	}}}}
}`
	req, _ := http.NewRequest("POST", itAdminURL+"/load", strings.NewReader(bad))
	req.Header.Set("Content-Type", "application/json")
	res, err := testClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(res.Body)
	res.Body.Close()
	if res.StatusCode != 400 {
		t.Errorf("POST /load of a bad config: status %d, want 400", res.StatusCode)
	}
	for _, want := range []string{
		"provision http.handlers.atomsphere_cors",
		`account \"account-123456\", rule 2 (origin \"https://mydomain.com/\"): origin must not have a path`,
	} {
		if !strings.Contains(string(b), want) {
			t.Errorf("POST /load error %s\ndoes not contain %s", b, want)
		}
	}
	check("after a refused POST /load: the running config still serves", acctNew, "https://new.example", "GET", 204, "GET, PUT")
	res, body = itSend(t, "GET", base+acctNew, originHdr("https://new.example"))
	itWantResponse(t, "after a refused POST /load: old handler answers", res, body, 200, wantNormalOK("https://new.example"), "api")
}

// TestIntegrationValidate: `caddy validate` (caddy.Validate) refuses a
// bad config with the account and rule named, and accepts a good one.
func TestIntegrationValidate(t *testing.T) {
	cfgFor := func(origin string) *caddy.Config {
		t.Helper()
		var cfg caddy.Config
		raw := fmt.Sprintf(`{"apps": {"http": {"servers": {"api": {
			"listen": ["127.0.0.1:9042"],
			"routes": [{"handle": [{"handler": "atomsphere_cors",
				"accounts": {"account-123456": [{"origin": %q}]}}]}]
		}}}}}`, origin)
		if err := json.Unmarshal([]byte(raw), &cfg); err != nil {
			t.Fatal(err)
		}
		return &cfg
	}
	err := caddy.Validate(cfgFor("https://user@mydomain.com"))
	if err == nil {
		t.Fatal("caddy.Validate accepted an origin with user info")
	}
	if want := `account "account-123456", rule 1 (origin "https://user@mydomain.com"): origin must not have user info`; !strings.Contains(err.Error(), want) {
		t.Errorf("validate error %q\ndoes not contain %q", err, want)
	}
	if err := caddy.Validate(cfgFor("https://mydomain.com")); err != nil {
		t.Errorf("caddy.Validate refused a good config: %v", err)
	}
}

// TestIntegrationReverseProxy: an upstream's own CORS headers never
// reach the client on an account path; its Vary is kept and extended
// (docs/behaviour.md §4), also when the upstream fails (§3).
func TestIntegrationReverseProxy(t *testing.T) {
	var hits atomic.Int64
	upstreamHeaders := upstreamCORS("true", "GET, PUT, PATCH", "*")
	upstreamHeaders.Set("X-Request-Id", "upstream-id")
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hits.Add(1)
		setUpstreamHeaders(w, upstreamHeaders)
		_, _ = io.WriteString(w, "upstream "+r.Method)
	}))
	defer upstream.Close()
	upstreamAddr := strings.TrimPrefix(upstream.URL, "http://")
	if !strings.HasPrefix(upstreamAddr, "127.0.0.1:") {
		t.Fatalf("upstream not on loopback: %s", upstream.URL)
	}
	// A loopback port with nothing listening: the failing upstream.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	deadAddr := l.Addr().String()
	l.Close()

	startCaddy(t, "caddyfile", itGlobalOptions+`
http://127.0.0.1:9043 {
	atomsphere_cors {
		expose_headers x-request-id
		account account-123456 {
			origin https://mydomain.com GET POST DELETE
		}
	}
	handle /api/rest/v1/account-123456/down/* {
		reverse_proxy `+deadAddr+`
	}
	reverse_proxy `+upstreamAddr+`
}
`)
	const base = "http://127.0.0.1:9043"
	ours := http.Header{
		"Access-Control-Allow-Origin":      {mydomain},
		"Access-Control-Allow-Credentials": {"true"},
		"Access-Control-Expose-Headers":    {"x-request-id"},
		"Vary":                             {"Accept-Encoding", "Origin"},
	}

	res, body := itSend(t, "GET", base+pathA, originHdr(mydomain))
	itWantResponse(t, "§4 allowed: upstream ACAO * and others removed, ours only, Vary kept and extended", res, body, 200, ours, "upstream GET")
	if got := res.Header.Get("X-Request-Id"); got != "upstream-id" {
		t.Errorf("other upstream headers must pass: X-Request-Id %q", got)
	}

	res, body = itSend(t, "GET", base+pathA, originHdr("https://evil.example"))
	itWantResponse(t, "§4 denied: upstream Access-Control-* removed, Vary kept and extended", res, body, 200,
		http.Header{"Vary": {"Accept-Encoding", "Origin"}}, "upstream GET")

	res, body = itSend(t, "PUT", base+pathA, originHdr(mydomain))
	itWantResponse(t, "§4 method not allowed: upstream's PUT policy does not leak", res, body, 200,
		http.Header{"Vary": {"Accept-Encoding", "Origin"}}, "upstream PUT")

	before := hits.Load()
	res, body = itSend(t, "OPTIONS", base+pathA, preflightHdr(mydomain, "GET"))
	itWantResponse(t, "§2 allowed preflight answered here", res, body, 204, wantPreflightOK(mydomain, "GET, POST, DELETE"), "")
	res, body = itSend(t, "OPTIONS", base+pathA, preflightHdr(mydomain, "PUT"))
	itWantResponse(t, "§2 denied preflight: no upstream headers", res, body, 401, wantPreflightDenied, "")
	if n := hits.Load() - before; n != 0 {
		t.Errorf("preflights reached the upstream %d times", n)
	}

	res, body = itSend(t, "GET", base+"/api/rest/v1/account-123456/down/x", originHdr(mydomain))
	itWantResponse(t, "§3 upstream down: Caddy's 502 still carries ACAO and ACAC", res, body, 502, http.Header{
		"Access-Control-Allow-Origin":      {mydomain},
		"Access-Control-Allow-Credentials": {"true"},
		"Access-Control-Expose-Headers":    {"x-request-id"},
		"Vary":                             {"Origin"},
	}, "-")

	res, body = itSend(t, "GET", base+"/public/x", originHdr(mydomain))
	itWantResponse(t, "§1 not an account path: the upstream's headers pass untouched", res, body, 200, http.Header{
		"Access-Control-Allow-Origin":      {"*"},
		"Access-Control-Allow-Credentials": {"true"},
		"Access-Control-Allow-Methods":     {"GET, PUT, PATCH"},
		"Access-Control-Allow-Headers":     {"*"},
		"Access-Control-Expose-Headers":    {"x-secret"},
		"Access-Control-Max-Age":           {"86400"},
		"Vary":                             {"Accept-Encoding"},
	}, "upstream GET")
}

// TestIntegrationDebugLog: with the module's logger at DEBUG, each
// decision is logged with account, origin, method, outcome and reason;
// at INFO nothing is logged per request (docs/behaviour.md §8).
func TestIntegrationDebugLog(t *testing.T) {
	dir := t.TempDir()
	cfg := func(file, level string) string {
		return `{
	admin localhost:2999
	persist_config off
	default_bind 127.0.0.1
	http_port 9049
	log cors {
		output file ` + file + `
		format json
		level ` + level + `
		include http.handlers.atomsphere_cors
	}
}
http://127.0.0.1:9046 {
	atomsphere_cors {
		account account-123456 {
			origin https://mydomain.com GET
		}
	}
	respond "next" 200
}
`
	}
	send := func() {
		itSend(t, "OPTIONS", "http://127.0.0.1:9046"+pathA, preflightHdr("https://evil.example", "GET"))
		itSend(t, "OPTIONS", "http://127.0.0.1:9046"+pathA, preflightHdr(mydomain, "GET"))
		itSend(t, "DELETE", "http://127.0.0.1:9046"+pathA, originHdr(mydomain))
	}

	debugFile := filepath.Join(dir, "debug.log")
	startCaddy(t, "caddyfile", cfg(debugFile, "DEBUG"))
	send()
	want := []map[string]any{
		{"msg": "preflight", "account": "account-123456", "origin": []any{"https://evil.example"},
			"method": "GET", "outcome": "denied", "reason": "origin not allowed"},
		{"msg": "preflight", "account": "account-123456", "origin": []any{mydomain},
			"method": "GET", "outcome": "allowed"},
		{"msg": "request", "account": "account-123456", "origin": []any{mydomain},
			"method": "DELETE", "outcome": "denied", "reason": "method not allowed"},
	}
	var entries []map[string]any
	deadline := time.Now().Add(5 * time.Second)
	for {
		entries = itReadLogEntries(t, debugFile)
		if len(entries) >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(entries) != len(want) {
		t.Fatalf("got %d log entries, want %d: %v", len(entries), len(want), entries)
	}
	for i, e := range entries {
		if e["level"] != "debug" || e["logger"] != "http.handlers.atomsphere_cors" {
			t.Errorf("entry %d: level %v logger %v, want debug http.handlers.atomsphere_cors", i, e["level"], e["logger"])
		}
		for k, v := range want[i] {
			if fmt.Sprint(e[k]) != fmt.Sprint(v) {
				t.Errorf("entry %d: %s = %v, want %v (entry %v)", i, k, e[k], v, e)
			}
		}
		if _, has := e["reason"]; has != (want[i]["reason"] != nil) {
			t.Errorf("entry %d: reason present %v, want %v", i, has, want[i]["reason"] != nil)
		}
	}

	infoFile := filepath.Join(dir, "info.log")
	startCaddy(t, "caddyfile", cfg(infoFile, "INFO"))
	send()
	// The requests above have completed, and zap writes each entry
	// synchronously: anything logged would be in the file by now.
	if entries := itReadLogEntries(t, infoFile); len(entries) != 0 {
		t.Errorf("at INFO level %d entries were logged per request, want none: %v", len(entries), entries)
	}
}

func itReadLogEntries(t *testing.T, file string) []map[string]any {
	t.Helper()
	return testkit.ReadJSONLog(t, file)
}
