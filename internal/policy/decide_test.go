package policy

import (
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
)

// TestDecide: one request, one decision, for every kind and reason
// (docs/behaviour.md §1-§3 and §5), from the request alone.
func TestDecide(t *testing.T) {
	ix := mustIndex(t, `{"accounts": {
		"account-1": [{"origin": "https://app.example", "methods": ["GET", "DELETE"]}],
		"empty": []}}`)
	type hdr = map[string][]string
	for _, tc := range []struct {
		name, method, target string
		header               hdr
		kind                 Kind
		reason               Reason
		account, origin      string
	}{
		{"outside the prefixes", "GET", "/static/app.js", hdr{"Origin": {"https://app.example"}}, Untouched, Allowed, "", ""},
		{"allowed", "GET", "/api/rest/v1/account-1/x", hdr{"Origin": {"https://app.example"}}, Normal, Allowed, "account-1", "https://app.example"},
		{"HEAD where GET is allowed", "HEAD", "/api/rest/v1/account-1/x", hdr{"Origin": {"https://app.example"}}, Normal, Allowed, "account-1", "https://app.example"},
		{"an origin in another spelling", "GET", "/api/rest/v1/account-1/x", hdr{"Origin": {"HTTPS://App.Example:443"}}, Normal, Allowed, "account-1", "HTTPS://App.Example:443"},
		{"no Origin", "GET", "/api/rest/v1/account-1/x", nil, Normal, NoOrigin, "account-1", ""},
		{"two Origin lines", "GET", "/api/rest/v1/account-1/x", hdr{"Origin": {"https://app.example", "https://app.example"}}, Normal, RepeatedOrigin, "account-1", ""},
		{"an account without rules", "GET", "/api/rest/v1/empty/x", hdr{"Origin": {"https://app.example"}}, Normal, NoRules, "empty", ""},
		{"an unknown account", "GET", "/api/rest/v1/nobody/x", hdr{"Origin": {"https://app.example"}}, Normal, NoRules, "nobody", ""},
		{"another origin", "GET", "/api/rest/v1/account-1/x", hdr{"Origin": {"https://evil.example"}}, Normal, OriginNotAllowed, "account-1", ""},
		{"a malformed Origin", "GET", "/api/rest/v1/account-1/x", hdr{"Origin": {"HTTPS://app.example/path"}}, Normal, MalformedOrigin, "account-1", ""},
		{"a WebSocket over HTTP/2 (extended CONNECT) is judged as GET", "CONNECT", "/api/rest/v1/account-1/ws", hdr{"Origin": {"https://app.example"}, ":protocol": {"websocket"}}, Normal, Allowed, "account-1", "https://app.example"},
		{"a plain CONNECT is not", "CONNECT", "/api/rest/v1/account-1/ws", hdr{"Origin": {"https://app.example"}}, Normal, MethodNotAllowed, "account-1", ""},
		{"a method the rule lacks", "POST", "/api/rest/v1/account-1/x", hdr{"Origin": {"https://app.example"}}, Normal, MethodNotAllowed, "account-1", ""},
		{"preflight allowed", "OPTIONS", "/api/rest/v1/account-1/x", hdr{"Origin": {"https://app.example"}, "Access-Control-Request-Method": {"DELETE"}}, Preflight, Allowed, "account-1", "https://app.example"},
		{"preflight for a method the rule lacks", "OPTIONS", "/api/rest/v1/account-1/x", hdr{"Origin": {"https://app.example"}, "Access-Control-Request-Method": {"PUT"}}, Preflight, MethodNotAllowed, "account-1", ""},
		{"preflight with two method lines", "OPTIONS", "/api/rest/v1/account-1/x", hdr{"Origin": {"https://app.example"}, "Access-Control-Request-Method": {"GET", "GET"}}, Preflight, RepeatedRequestMethod, "account-1", ""},
		{"OPTIONS without a requested method is a normal request", "OPTIONS", "/api/rest/v1/account-1/x", hdr{"Origin": {"https://app.example"}, "Access-Control-Request-Method": {""}}, Normal, MethodNotAllowed, "account-1", ""},
		{"OPTIONS without Origin is a normal request", "OPTIONS", "/api/rest/v1/account-1/x", hdr{"Access-Control-Request-Method": {"GET"}}, Normal, NoOrigin, "account-1", ""},
		{"a path Caddy reads as account other, a raw-path router as account-1", "GET", "/api/rest/v1/account-1/..%2fother/x", hdr{"Origin": {"https://app.example"}}, Normal, AmbiguousPath, "other", ""},
		{"a preflight on such a path", "OPTIONS", "/api/rest/v1/account-1/..%2fother/x", hdr{"Origin": {"https://app.example"}, "Access-Control-Request-Method": {"GET"}}, Preflight, AmbiguousPath, "other", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(tc.method, tc.target, nil)
			r.Header = http.Header(tc.header)
			if r.Header == nil {
				r.Header = http.Header{}
			}
			d := ix.Decide(r)
			if d.Kind != tc.kind || d.Reason != tc.reason || d.Account != tc.account || d.Origin != tc.origin {
				t.Fatalf("%+v, want kind %v, reason %q, account %q, origin %q", d, tc.kind, tc.reason, tc.account, tc.origin)
			}
			if (d.Rule != nil) != (d.Allowed()) {
				t.Fatalf("%+v: a rule exactly when allowed", d)
			}
		})
	}
}

// TestDecideIsPure: Decide reads the request and writes nothing: not
// the request's headers, not its URL; and deciding twice gives the same
// decision.
func TestDecideIsPure(t *testing.T) {
	ix := mustIndex(t, `{"accounts": {"account-1": [{"origin": "https://app.example", "methods": ["GET"]}]}}`)
	for _, target := range []string{
		"/api/rest/v1/account-1/x", "/api/rest/v1/account-1/..%2faccount-2/x", "/static/x", "/api/rest/v1/account-2/x",
	} {
		for _, method := range []string{"GET", "OPTIONS", "DELETE"} {
			r := parseTarget(t, target)
			r.Method = method
			r.Header.Set("Origin", "https://app.example")
			r.Header.Set("Access-Control-Request-Method", "GET")
			before := r.Header.Clone()
			url := *r.URL
			d1 := ix.Decide(r)
			d2 := ix.Decide(r)
			if d1 != d2 {
				t.Errorf("%s %s: %+v, then %+v", method, target, d1, d2)
			}
			if *r.URL != url || len(r.Header) != len(before) || r.Header.Get("Origin") != before.Get("Origin") {
				t.Errorf("%s %s: Decide changed the request", method, target)
			}
		}
	}
}

// FuzzPlainPath: Decide reads a plain path (plainPath) with
// accountAtStart alone and does not scan it for the path guard, so a
// plain path must be one that needs neither cleaning nor the guard, and
// accountAtStart must read it as AccountOf does. Decide skips the bytes
// of a prefix the path starts with: that must change nothing, whether the
// prefix is plain itself or not (a dot, a ';').
func FuzzPlainPath(f *testing.F) {
	for _, p := range []string{
		"/api/rest/v1/account-123456/Atom/3456", "/static/app.js", "/api/rest/v1/account-A/index.php",
		"/index.php/api/rest/v1/account-A", "/api/rest/v1/account-A/x.", "/.well-known/x.json",
		"/api/rest/v1//a", "/api/rest/v1/a/../b", "/api/rest/v1/a/%2e", "/API/REST/V1/a.b/c",
		"/api/v1.0/a/b", "/api/v1.0/a/b.json", "/semi;colon/a", "/api/rest/v1/", "/api/rest/v1/a.b/c",
	} {
		f.Add(p)
	}
	ix, err := NewIndex(testConfig(Config{PathPrefixes: []string{"/api/rest/v1/", "/api/v1.0/", "/semi;colon/"}}))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, p string) {
		_, _, _, skip := ix.startOf(p)
		plain := plainPath(p, skip)
		if want := plainByDefinition(p); plain != want {
			t.Fatalf("path %q: plainPath(p, %d) = %v, want %v", p, skip, plain, want)
		}
		if !plain {
			return
		}
		if needsCleaning(p) || scanPath(p) {
			t.Fatalf("path %q: plainPath, but needsCleaning %v, scanPath %v", p, needsCleaning(p), scanPath(p))
		}
		id, ok := ix.AccountOf(p)
		if id2, ok2, _ := ix.accountAtStart(p); id2 != id || ok2 != ok {
			t.Fatalf("path %q: plain, accountAtStart = %q, %v; AccountOf = %q, %v", p, id2, ok2, id, ok)
		}
	})
}

// plainByDefinition is plainPath as its comment defines it, one rule at
// a time.
func plainByDefinition(p string) bool {
	for i := range len(p) {
		if guardedByte(p[i]) {
			return false
		}
	}
	if strings.Contains(p, "//") {
		return false
	}
	dot := strings.IndexByte(p, '.')
	return dot < 0 || !strings.Contains(p[dot:], "/") && !strings.HasSuffix(p, ".")
}

// The index is what its Config says, and nothing changes it afterwards:
// it has no exported field, and the path guard is on or off as the
// Config has it, for every call.
func TestIndexFromConfigOnly(t *testing.T) {
	typ := reflect.TypeFor[Index]()
	for i := range typ.NumField() {
		if f := typ.Field(i); f.IsExported() {
			t.Errorf("Index.%s is exported: a caller could change a built index", f.Name)
		}
	}
	const target = "/api/rest/v1/account-1/..;/other/x"
	for _, guard := range []bool{true, false} {
		ix, err := NewIndex(testConfig(Config{PathGuard: guard,
			Accounts: map[string][]Rule{"account-1": {{Origin: "https://app.example"}}}}))
		if err != nil {
			t.Fatal(err)
		}
		r := parseTarget(t, target)
		r.Header.Set("Origin", "https://app.example")
		if got := ix.Decide(r).Reason == AmbiguousPath; got != guard {
			t.Errorf("PathGuard %v: %s refused %v", guard, target, got)
		}
	}
}

// A Decision lives on ServeHTTP's stack and is zeroed for every request:
// the reading a path guard refusal names fits in the padding after Kind
// and Reason, so it is the 48 bytes it was before there was one.
func TestDecisionSize(t *testing.T) {
	if got := reflect.TypeFor[Decision]().Size(); got > 48 {
		t.Errorf("Decision is %d bytes, want at most 48", got)
	}
}
